-- Prepare every candidate image (decode, resize + center-crop, JPEG, hash) with
-- the courier_prepare_image UDF; a failure becomes a reject reason.
--
-- Parameters: :image_size (INT).
WITH prepared AS (
  SELECT
    item_id, category, updated_at,
    courier_prepare_image(image_source) AS img
  FROM item_images_candidates
  WHERE reject_reason IS NULL AND NOT unchanged
)
SELECT
  item_id,
  category,
  img.jpeg          AS jpeg,
  img.content_hash  AS content_hash,
  :image_size       AS image_size,
  img.source_width  AS source_width,
  img.source_height AS source_height,
  updated_at        AS source_updated_at,
  current_timestamp() AS prepared_at,
  img.error         AS reject_reason,
  img.error_detail  AS reject_detail
FROM prepared
