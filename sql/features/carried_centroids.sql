-- A cluster version's clusters seen through a NEW model: for each cluster id, the mean of
-- the new model's embeddings of the items that hold that id now. A re-fit after a model
-- change starts from these and matches its clusters to them, so an id keeps standing for
-- (mostly) the same items although the embedding space changed.
--
-- Parameters: :item_image_features, :item_embeddings (tables), :cluster_version (INT),
-- :model_version (STRING, the new model). One row per (cluster_id, pos) of the mean vector.
WITH members AS (
  SELECT item_id, image_cluster_id AS cluster_id
  FROM IDENTIFIER(:item_image_features)
  WHERE valid_to IS NULL AND cluster_version = :cluster_version
),
new_space AS (
  SELECT item_id, embedding
  FROM IDENTIFIER(:item_embeddings)
  WHERE model_version = :model_version
)
SELECT m.cluster_id, p.pos, avg(p.value) AS value, count(*) AS items
FROM members m
JOIN new_space e ON e.item_id = m.item_id
LATERAL VIEW posexplode(e.embedding) p AS pos, value
GROUP BY m.cluster_id, p.pos
