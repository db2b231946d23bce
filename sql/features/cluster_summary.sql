-- One row per current cluster: its size, its category mix, how tight it is (mean
-- cosine of its items to the centroid) and a few example items, the most typical first.
WITH per_category AS (
  SELECT image_cluster_id, cluster_version, category, count(*) AS n
  FROM ${courier.table.item_clusters_current}
  GROUP BY image_cluster_id, cluster_version, category
),
mix AS (
  SELECT
    image_cluster_id,
    cluster_version,
    map_from_entries(collect_list(struct(coalesce(category, 'unknown'), n))) AS category_mix,
    -- the most frequent category; a tie goes to the first name in alphabetical order (max_by(category, n)
    -- picked either, so two engines, or two runs, could name different top categories)
    min_by(category, struct(-n, category)) AS top_category,
    max(n) / sum(n) AS top_category_share,
    count(*) AS n_categories
  FROM per_category
  GROUP BY image_cluster_id, cluster_version
),
items AS (
  SELECT
    image_cluster_id,
    cluster_version,
    count(*) AS items,
    avg(cluster_similarity) AS mean_similarity,
    min(cluster_similarity) AS min_similarity,
    transform(
      slice(sort_array(collect_list(struct(-cluster_similarity AS rank_key, item_id))), 1, 5),
      x -> x.item_id) AS example_item_ids
  FROM ${courier.table.item_clusters_current}
  GROUP BY image_cluster_id, cluster_version
)
SELECT
  i.cluster_version,
  i.image_cluster_id,
  i.items,
  i.items / sum(i.items) OVER (PARTITION BY i.cluster_version) AS share_of_items,
  m.n_categories,
  m.top_category,
  m.top_category_share,
  m.category_mix,
  i.mean_similarity,
  i.min_similarity,
  i.example_item_ids
FROM items i
JOIN mix m USING (image_cluster_id, cluster_version)
