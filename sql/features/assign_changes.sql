-- The rows one `courier assign` run changes in item_image_features (slowly changing
-- dimension, type 2), staged for a single MERGE:
--   merge_key = item_id  closes the item's current row (valid_to := :published_at)
--   merge_key = NULL     inserts its new current row
-- An item is changed when its cluster id, model version or cluster version differs
-- from its current row; unchanged items are not staged, so the MERGE touches only
-- changed rows and a re-run with nothing new commits nothing. A new item's first
-- row is valid from :first_valid_from (there is no earlier value to join); a
-- change is valid from the moment it is published.
--
-- Parameters: :assignments (view: item_id, image_cluster_id, cluster_similarity,
-- model_version, cluster_version), :item_image_features (table),
-- :published_at, :first_valid_from (TIMESTAMP).
WITH current_rows AS (
  SELECT item_id, image_cluster_id, model_version, cluster_version
  FROM IDENTIFIER(:item_image_features)
  WHERE valid_to IS NULL
),
changed AS (
  SELECT
    a.*,
    c.item_id IS NOT NULL AS has_current
  FROM IDENTIFIER(:assignments) a
  LEFT JOIN current_rows c ON c.item_id = a.item_id
  WHERE c.item_id IS NULL
     OR NOT (c.image_cluster_id <=> a.image_cluster_id
             AND c.model_version <=> a.model_version
             AND c.cluster_version <=> a.cluster_version)
)
SELECT
  CAST(NULL AS BIGINT) AS merge_key, item_id, image_cluster_id, cluster_similarity, model_version,
  cluster_version,
  CASE WHEN has_current THEN :published_at ELSE :first_valid_from END AS valid_from,
  has_current
FROM changed
UNION ALL
SELECT
  item_id AS merge_key, item_id, image_cluster_id, cluster_similarity, model_version, cluster_version,
  :published_at AS valid_from, has_current
FROM changed
WHERE has_current
