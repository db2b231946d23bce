-- One row per item: its current image Cluster-ID (the open row of the history in
-- item_image_features), with its category from item_images.
SELECT
  f.item_id,
  i.category,
  f.image_cluster_id,
  f.cluster_similarity,
  f.model_version,
  f.cluster_version,
  f.valid_from,
  f.updated_at
FROM ${courier.table.item_image_features} f
LEFT JOIN ${courier.table.item_images} i ON i.item_id = f.item_id
WHERE f.valid_to IS NULL
