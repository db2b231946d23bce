-- courier_training_rows: each kept sample with the JPEG of every item it
-- names, so the training reader streams rows without lookups.
-- pv_images[j] is the image of pv_item_ids[j]; click_images[k] of
-- click_item_ids[k]; padding slots (item -1) hold an empty binary.
--
-- The samples are hash-partitioned by request_id once; exploding, the
-- broadcast join with item_images and the regrouping then keep that
-- partitioning, so the image bytes are never shuffled. The sample columns ride
-- along through the explode (any_value) instead of being joined back.
--
-- Parameters: :item_images (table name), :l_pv (INT).
WITH samples AS (
  SELECT /*+ REPARTITION(request_id) */ * FROM samples_kept
),
slots AS (
  SELECT s.*, slot.pos AS slot, slot.item_id AS slot_item_id
  FROM samples s
  LATERAL VIEW posexplode(concat(s.pv_item_ids, s.click_item_ids)) slot AS pos, item_id
),
imaged AS (
  SELECT /*+ BROADCAST(i) */ sl.*, coalesce(i.jpeg, X'') AS jpeg
  FROM slots sl
  LEFT JOIN IDENTIFIER(:item_images) i ON sl.slot_item_id = i.item_id
),
regrouped AS (
  SELECT
    request_id,
    any_value(user_id) AS user_id, any_value(event_ts) AS event_ts, any_value(query) AS query,
    any_value(pv_item_ids) AS pv_item_ids, any_value(pv_labels) AS pv_labels,
    any_value(click_item_ids) AS click_item_ids, any_value(dt) AS dt,
    transform(array_sort(collect_list(struct(slot, jpeg))), x -> x.jpeg) AS images
  FROM imaged
  GROUP BY request_id
)
SELECT
  request_id, user_id, event_ts, query,
  pv_item_ids, pv_labels, click_item_ids,
  slice(images, 1, :l_pv) AS pv_images,
  slice(images, :l_pv + 1, size(click_item_ids)) AS click_images,
  dt
FROM regrouped
