-- ctr_samples: one row per impression. The candidate's and each history item's
-- category and image features are the values valid at the impression's
-- event_ts (candidate_features / history_features: the as-of join of
-- sql/features/item_features_as_of.sql). A feature not yet published at that
-- time stays NULL (the model's "unknown" cluster), never a later value.
--
-- history_* arrays are aligned with history_item_ids (oldest to newest).
--
-- Reads the temp views candidate_features, history_features and ctr_items.
WITH history AS (
  SELECT
    request_id,
    array_sort(collect_list(struct(h.slot, i.category, h.image_cluster_id, h.cluster_similarity))) AS slots
  FROM history_features h
  LEFT JOIN ctr_items i USING (item_id)
  GROUP BY request_id
)
SELECT
  c.request_id, c.user_id, c.item_id, c.category, c.query, c.position, c.event_ts, c.label,
  c.image_cluster_id, c.cluster_similarity, c.feature_model_version, c.feature_cluster_version,
  c.history_item_ids,
  coalesce(transform(h.slots, s -> s.category), CAST(array() AS ARRAY<STRING>)) AS history_categories,
  coalesce(transform(h.slots, s -> s.image_cluster_id), CAST(array() AS ARRAY<INT>)) AS history_cluster_ids,
  c.dt
FROM candidate_features c
LEFT JOIN history h USING (request_id)
