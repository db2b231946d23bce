-- raw_items rows whose image must be (re)prepared: items never prepared, items
-- updated since, or prepared at another resolution. Rows already prepared are
-- counted as unchanged. An item_id that appears several times keeps its latest
-- row (ties broken by the image, then the category, so the same input always
-- keeps the same row); the others are duplicates.
--
-- Reject reasons: null_key (item_id NULL), reserved_item_id (item_id -1 marks an
-- empty slot in courier_samples and in the CTR history), duplicate_key.
--
-- Parameters: :raw_items, :item_images (table names), :image_column (column
-- name: image or image_uri), :image_size (INT).
WITH ranked AS (
  SELECT
    CAST(item_id AS BIGINT) AS item_id,
    category,
    CAST(updated_at AS TIMESTAMP) AS updated_at,
    IDENTIFIER(:image_column) AS image_source,
    ROW_NUMBER() OVER (
      PARTITION BY item_id
      ORDER BY updated_at DESC NULLS LAST, xxhash64(IDENTIFIER(:image_column)), category
    ) AS copy_rank
  FROM IDENTIFIER(:raw_items)
)
SELECT
  r.item_id, r.category, r.updated_at, r.image_source,
  CASE
    WHEN r.item_id IS NULL THEN 'null_key'
    WHEN r.item_id = -1 THEN 'reserved_item_id'
    WHEN r.copy_rank > 1 THEN 'duplicate_key'
  END AS reject_reason,
  p.item_id IS NOT NULL AS unchanged
FROM ranked r
LEFT JOIN IDENTIFIER(:item_images) p
  ON r.item_id = p.item_id
  AND r.updated_at <=> p.source_updated_at
  AND p.image_size = :image_size
