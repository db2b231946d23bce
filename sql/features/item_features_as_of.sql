-- The image feature of each event's item as it was valid at the event's time
-- (an as-of join on the history of item_image_features): what a CTR model
-- trained on an older date must see, never a value published after the event.
-- Events whose item had no feature yet keep NULL features.
--
-- Parameters: :events (table or view with item_id and event_ts; every column is
-- kept), :item_image_features (table).
SELECT
  e.*,
  f.image_cluster_id,
  f.cluster_similarity,
  f.model_version AS feature_model_version,
  f.cluster_version AS feature_cluster_version
FROM IDENTIFIER(:events) e
LEFT JOIN IDENTIFIER(:item_image_features) f
  ON f.item_id = e.item_id
  AND e.event_ts >= f.valid_from
  AND (f.valid_to IS NULL OR e.event_ts < f.valid_to)
