-- courier_training_rows: each kept sample with the JPEG of every item it
-- names, so the training reader streams rows without lookups.
-- pv_images[j] is the image of pv_item_ids[j]; click_images[k] of
-- click_item_ids[k]; padding slots (item -1) hold an empty binary.
--
-- The samples are hash-partitioned by request_id once; exploding, the
-- broadcast join with item_images and the regrouping then keep that
-- partitioning, so the image bytes are never shuffled.
--
-- Parameters: :item_images (table name), :l_pv (INT).
WITH samples AS (
  SELECT /*+ REPARTITION(request_id) */ * FROM samples_kept
),
slots AS (
  SELECT s.request_id, slot.pos AS slot, slot.item_id
  FROM samples s
  LATERAL VIEW posexplode(concat(s.pv_item_ids, s.click_item_ids)) slot AS pos, item_id
),
imaged AS (
  SELECT /*+ BROADCAST(i) */ sl.request_id, sl.slot, coalesce(i.jpeg, X'') AS jpeg
  FROM slots sl
  LEFT JOIN IDENTIFIER(:item_images) i ON sl.item_id = i.item_id
),
regrouped AS (
  SELECT request_id, transform(array_sort(collect_list(struct(slot, jpeg))), x -> x.jpeg) AS images
  FROM imaged
  GROUP BY request_id
)
SELECT
  s.request_id, s.user_id, s.event_ts, s.query,
  s.pv_item_ids, s.pv_labels, s.click_item_ids,
  slice(r.images, 1, :l_pv) AS pv_images,
  slice(r.images, :l_pv + 1, size(s.click_item_ids)) AS click_images,
  s.dt
FROM samples s
JOIN regrouped r USING (request_id)
