-- Point-in-time click history: for each page view, the user's latest
-- :l_click clicks strictly before its event_ts, oldest to newest.
--
-- Two linear passes per user instead of a page-view x click join:
-- 1. For every page view that has clicks, `snapshot` = the latest :l_click
--    clicks up to and including that page view (its clicks come from at most
--    the :l_click preceding clicking page views).
-- 2. Page views and snapshots are merged into one stream ordered by
--    (event_ts, kind, request_id), with page views (kind 0) before snapshots
--    (kind 1) at equal timestamps. The latest snapshot seen before a page view
--    therefore holds only clicks with an earlier timestamp: never one at or
--    after the page view, not even from a page view of the same instant.
-- Within one page view, clicks count as older the higher they were on the page.
--
-- Parameters: :l_click (INT), :start_dt, :end_dt (DATE or 'YYYY-MM-DD'). Window frame bounds
-- must be literals, so the frame uses Spark's variable substitution:
-- ${courier.l_click_preceding} = l_click - 1 (in spark-sql: SET courier.l_click_preceding=4).
WITH clicking AS (
  SELECT user_id, event_ts, request_id, clicked_item_ids
  FROM page_views
  WHERE n_clicked > 0
),
snapshots AS (
  SELECT
    user_id, event_ts, request_id,
    flatten(collect_list(clicked_item_ids) OVER (
      PARTITION BY user_id ORDER BY event_ts, request_id
      ROWS BETWEEN ${courier.l_click_preceding} PRECEDING AND CURRENT ROW)) AS recent_clicks
  FROM clicking
),
stream AS (
  SELECT user_id, event_ts, 0 AS kind, request_id, CAST(NULL AS ARRAY<BIGINT>) AS snapshot
  FROM page_views
  WHERE dt BETWEEN CAST(:start_dt AS DATE) AND CAST(:end_dt AS DATE)
  UNION ALL
  SELECT user_id, event_ts, 1 AS kind, request_id,
    -- the newest :l_click of them (slice with a negative start would return [] for short arrays)
    slice(recent_clicks, greatest(size(recent_clicks) - :l_click + 1, 1), :l_click)
  FROM snapshots
),
as_of AS (
  SELECT
    request_id, kind,
    last(snapshot, true) OVER (
      PARTITION BY user_id ORDER BY event_ts, kind, request_id
      ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS latest_snapshot
  FROM stream
)
SELECT request_id, coalesce(latest_snapshot, CAST(array() AS ARRAY<BIGINT>)) AS history_item_ids
FROM as_of
WHERE kind = 0
