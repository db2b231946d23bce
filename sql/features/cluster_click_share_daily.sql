-- Each cluster's share of each day's clicks, with the cluster each clicked item had
-- at the moment of the click (as-of join on the history of item_image_features).
-- Clicks on items without a feature at that moment count under a NULL cluster.
WITH clicks AS (
  SELECT r.dt, r.item_id, r.event_ts
  FROM ${courier.table.raw_impressions} r
  WHERE r.clicked = 1
),
clusters AS (
  SELECT c.dt, f.image_cluster_id
  FROM clicks c
  LEFT JOIN ${courier.table.item_image_features} f
    ON f.item_id = c.item_id
    AND c.event_ts >= f.valid_from
    AND (f.valid_to IS NULL OR c.event_ts < f.valid_to)
)
SELECT
  dt,
  image_cluster_id,
  count(*) AS clicks,
  count(*) / sum(count(*)) OVER (PARTITION BY dt) AS share_of_clicks
FROM clusters
GROUP BY dt, image_cluster_id
