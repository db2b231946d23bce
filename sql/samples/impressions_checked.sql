-- Every raw impression from the start of the click-history window to the end
-- of the requested range, each with the first reason it cannot be used
-- (reject_reason IS NULL: the impression is valid).
--
-- Parameters: :raw_impressions, :raw_items, :item_images (table names),
--             :history_start, :end_dt (DATE), :max_event_ts (TIMESTAMP).
WITH raw AS (
  SELECT
    CAST(request_id AS STRING) AS request_id,
    CAST(user_id AS BIGINT)    AS user_id,
    CAST(item_id AS BIGINT)    AS item_id,
    CAST(position AS INT)      AS position,
    query,
    CAST(event_ts AS TIMESTAMP) AS event_ts,
    CAST(clicked AS BIGINT)    AS clicked_raw,
    dt
  FROM IDENTIFIER(:raw_impressions)
  WHERE dt BETWEEN :history_start AND :end_dt
),
known_items AS (
  SELECT DISTINCT CAST(item_id AS BIGINT) AS item_id FROM IDENTIFIER(:raw_items) WHERE item_id IS NOT NULL
),
imaged_items AS (
  SELECT item_id FROM IDENTIFIER(:item_images)
),
-- One sorted pass per page view finds both duplicates (same item twice on a
-- page: equal neighbours once sorted by item) and page views whose rows
-- disagree on who saw them or when (the whole-page frame shares the sort).
per_page AS (
  SELECT
    raw.*,
    item_id = LAG(item_id) OVER (PARTITION BY request_id ORDER BY item_id, position, event_ts) AS is_duplicate,
    MIN(user_id) OVER w_page <> MAX(user_id) OVER w_page
      OR MIN(event_ts) OVER w_page <> MAX(event_ts) OVER w_page AS is_inconsistent
  FROM raw
  WINDOW w_page AS (
    PARTITION BY request_id ORDER BY item_id, position, event_ts
    ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
)
SELECT
  p.request_id, p.user_id, p.item_id, p.position, p.query, p.event_ts,
  CAST(p.clicked_raw AS INT) AS clicked,
  p.dt,
  CASE
    WHEN p.request_id IS NULL OR p.user_id IS NULL OR p.item_id IS NULL OR p.event_ts IS NULL OR p.dt IS NULL
      THEN 'null_key'
    WHEN p.clicked_raw IS NULL OR p.clicked_raw NOT IN (0, 1) THEN 'invalid_label'
    WHEN p.event_ts > :max_event_ts THEN 'future_timestamp'
    WHEN p.dt <> CAST(p.event_ts AS DATE) THEN 'dt_mismatch'
    WHEN k.item_id IS NULL THEN 'unknown_item'
    WHEN i.item_id IS NULL THEN 'item_without_image'
    WHEN p.is_inconsistent THEN 'inconsistent_page_view'
    WHEN p.is_duplicate THEN 'duplicate_key'
  END AS reject_reason,
  CASE
    WHEN p.clicked_raw IS NULL OR p.clicked_raw NOT IN (0, 1) THEN concat('clicked=', coalesce(CAST(p.clicked_raw AS STRING), 'NULL'))
    WHEN p.event_ts > :max_event_ts THEN concat('event_ts=', CAST(p.event_ts AS STRING), ' > ', CAST(:max_event_ts AS STRING))
    WHEN p.dt <> CAST(p.event_ts AS DATE) THEN concat('dt=', CAST(p.dt AS STRING), ' event_ts=', CAST(p.event_ts AS STRING))
  END AS reject_detail
FROM per_page p
LEFT JOIN known_items k ON p.item_id = k.item_id
LEFT JOIN imaged_items i ON p.item_id = i.item_id
