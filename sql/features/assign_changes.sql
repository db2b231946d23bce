-- The rows one `courier assign` run changes in item_image_features (slowly changing
-- dimension, type 2), staged for a single MERGE:
--   role 'close'   closes the item's current row (valid_to := :published_at)
--   role 'insert'  inserts its new current row
-- An item is changed when its cluster id, model version or cluster version differs
-- from its current row; unchanged items are not staged, so the MERGE touches only
-- changed rows and a re-run with nothing new commits nothing. A new item's first
-- row is valid from :first_valid_from (there is no earlier value to join); a
-- change is valid from the moment it is published.
--
-- expected_from is the valid_from of the current row this staging saw (NULL: none).
-- The MERGE acts on an item only while its current row is still that one, so a
-- concurrent run that published first is never overwritten or duplicated: the item
-- is left alone, counted, and the stage starts over (courier.features.assign).
--
-- Parameters: :assignments (view: item_id, image_cluster_id, cluster_similarity,
-- model_version, cluster_version), :item_image_features (table),
-- :published_at, :first_valid_from (TIMESTAMP).
WITH current_rows AS (
  SELECT item_id, image_cluster_id, model_version, cluster_version, valid_from
  FROM IDENTIFIER(:item_image_features)
  WHERE valid_to IS NULL
),
changed AS (
  SELECT
    a.*,
    c.valid_from AS expected_from,
    c.item_id IS NOT NULL AS has_current
  FROM IDENTIFIER(:assignments) a
  LEFT JOIN current_rows c ON c.item_id = a.item_id
  WHERE c.item_id IS NULL
     OR NOT (c.image_cluster_id <=> a.image_cluster_id
             AND c.model_version <=> a.model_version
             AND c.cluster_version <=> a.cluster_version)
)
SELECT
  'insert' AS role, item_id, image_cluster_id, cluster_similarity, model_version, cluster_version,
  CASE WHEN has_current THEN :published_at ELSE :first_valid_from END AS valid_from,
  expected_from, has_current
FROM changed
UNION ALL
SELECT
  'close' AS role, item_id, image_cluster_id, cluster_similarity, model_version, cluster_version,
  :published_at AS valid_from, expected_from, has_current
FROM changed
WHERE has_current
