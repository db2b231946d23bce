-- Every item of the catalogue, once, with what `courier embed` does with it for
-- one model version:
--   reject_reason 'item_without_image'  no usable prepared image (the item_images
--                                       stage rejected it, or its JPEG is empty)
--   unchanged                            already embedded by this model version from
--                                       the same image (content_hash); never with :full
--   otherwise                            to embed
-- The catalogue is raw_items (non-null ids; null ids are rejected by the sample
-- build) plus anything still in item_images.
--
-- Parameters: :raw_items, :item_images, :item_embeddings (table names),
-- :model_version (STRING), :full (BOOLEAN).
WITH catalogue AS (
  SELECT CAST(item_id AS BIGINT) AS item_id FROM IDENTIFIER(:raw_items) WHERE item_id IS NOT NULL
  UNION
  SELECT item_id FROM IDENTIFIER(:item_images)
),
embedded AS (
  SELECT item_id, content_hash
  FROM IDENTIFIER(:item_embeddings)
  WHERE model_version = :model_version
)
SELECT
  c.item_id,
  img.jpeg,
  img.content_hash,
  img.image_size,
  CASE WHEN img.jpeg IS NULL OR length(img.jpeg) = 0 THEN 'item_without_image' END AS reject_reason,
  CASE
    WHEN img.item_id IS NULL THEN 'no row in item_images (see the item_images rejects)'
    WHEN img.jpeg IS NULL OR length(img.jpeg) = 0 THEN 'empty jpeg in item_images'
  END AS reject_detail,
  (NOT :full AND e.item_id IS NOT NULL AND e.content_hash <=> img.content_hash) AS unchanged
FROM catalogue c
LEFT JOIN IDENTIFIER(:item_images) img ON img.item_id = c.item_id
LEFT JOIN embedded e ON e.item_id = c.item_id
