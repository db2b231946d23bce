-- The clusters of each category: how a category's items split over the current
-- Cluster-IDs (filter with WHERE category = '...'), largest first by cluster_rank.
SELECT
  category,
  image_cluster_id,
  count(*) AS items,
  count(*) / sum(count(*)) OVER (PARTITION BY category) AS share_of_category,
  avg(cluster_similarity) AS mean_similarity,
  row_number() OVER (PARTITION BY category ORDER BY count(*) DESC, image_cluster_id) AS cluster_rank
FROM ${courier.table.item_clusters_current}
GROUP BY category, image_cluster_id
