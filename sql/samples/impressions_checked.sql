-- Every raw impression of the window (dt from :history_start, the start of the
-- click history, to :end_dt, the end of the requested range), each with the
-- first reason it cannot be used (reject_reason IS NULL: the impression is valid).
--
-- The reasons, in the order they are tested:
--   row checks, on the impression alone:
--     null_key            request_id, user_id, item_id, event_ts or dt is NULL
--     invalid_label       clicked is NULL or not 0/1
--     invalid_position    position is NULL, negative or beyond INT
--     future_timestamp    event_ts > :max_event_ts
--     dt_mismatch         dt is not the date of event_ts
--     unknown_item        item_id is not in raw_items
--     item_without_image  item_id has no row in item_images (its image was rejected)
--   page checks, over the rows of its page view (request_id) that passed the row checks:
--     split_page_view         the rows lie on more than one dt
--     inconsistent_page_view  the rows disagree on user_id, event_ts or query
--     duplicate_key           the same item_id again on the page (the first copy by
--                             position is kept)
-- A broken row therefore never costs a good copy of itself its place.
--
-- Page views split across dates: the page checks read one more day on each side
-- of the window, so a page view with rows on two adjacent dates is seen whole by
-- every build that reads either date, and all its rows are rejected as
-- split_page_view by each of them: no build keeps half of it, none lets half of
-- it into the click history. Those extra days are not returned. (A request_id
-- reused on dates further apart is rejected only by builds whose window holds
-- both dates.)
--
-- An impression without dt (NULL partition) is dated by its event_ts; one with
-- neither is returned with dt NULL, so that every build rejects it (null_key).
--
-- Parameters: :raw_impressions, :raw_items, :item_images (table names),
--             :history_start, :end_dt (DATE or 'YYYY-MM-DD'), :max_event_ts (TIMESTAMP or
--             'YYYY-MM-DD hh:mm:ss').
WITH raw AS (
  SELECT
    CAST(request_id AS STRING) AS request_id,
    CAST(user_id AS BIGINT)    AS user_id,
    CAST(item_id AS BIGINT)    AS item_id,
    -- kept wide until checked: an ANSI cast of an out-of-range value would fail the job
    CAST(position AS BIGINT)   AS position_raw,
    query,
    CAST(event_ts AS TIMESTAMP) AS event_ts,
    CAST(clicked AS BIGINT)    AS clicked_raw,
    dt                         AS dt_raw,
    coalesce(dt, CAST(CAST(event_ts AS TIMESTAMP) AS DATE)) AS dt
  FROM IDENTIFIER(:raw_impressions)
  -- written so that the dt half prunes partitions (dt IS NULL: the NULL partition)
  WHERE dt BETWEEN date_sub(CAST(:history_start AS DATE), 1) AND date_add(CAST(:end_dt AS DATE), 1)
     OR (dt IS NULL AND (event_ts IS NULL OR CAST(CAST(event_ts AS TIMESTAMP) AS DATE)
           BETWEEN date_sub(CAST(:history_start AS DATE), 1) AND date_add(CAST(:end_dt AS DATE), 1)))
),
known_items AS (
  SELECT DISTINCT CAST(item_id AS BIGINT) AS item_id FROM IDENTIFIER(:raw_items) WHERE item_id IS NOT NULL
),
imaged_items AS (
  -- item -1 marks an empty slot in the samples: never an item, even in an item_images
  -- written before build-samples rejected it (reserved_item_id)
  SELECT item_id FROM IDENTIFIER(:item_images) WHERE item_id <> -1
),
row_checked AS (
  SELECT
    r.*,
    CASE
      WHEN r.request_id IS NULL OR r.user_id IS NULL OR r.item_id IS NULL OR r.event_ts IS NULL OR r.dt_raw IS NULL
        THEN 'null_key'
      WHEN r.clicked_raw IS NULL OR r.clicked_raw NOT IN (0, 1) THEN 'invalid_label'
      WHEN r.position_raw IS NULL OR r.position_raw NOT BETWEEN 0 AND 2147483647 THEN 'invalid_position'
      WHEN r.event_ts > CAST(:max_event_ts AS TIMESTAMP) THEN 'future_timestamp'
      WHEN r.dt_raw <> CAST(r.event_ts AS DATE) THEN 'dt_mismatch'
      WHEN k.item_id IS NULL THEN 'unknown_item'
      WHEN i.item_id IS NULL THEN 'item_without_image'
    END AS row_reason
  FROM raw r
  LEFT JOIN known_items k ON r.item_id = k.item_id
  LEFT JOIN imaged_items i ON r.item_id = i.item_id
),
-- One sorted pass per page view: rows that passed the row checks first, by item,
-- so a duplicate is an equal neighbour among them, and the whole-page frame (same
-- sort) compares only those rows. The sort is total up to identical rows, so which
-- copy of a duplicate is kept never depends on the input's order.
per_page AS (
  SELECT
    c.*,
    row_reason IS NULL AND item_id = LAG(item_id) OVER w_sorted AS is_duplicate,
    MIN(CASE WHEN row_reason IS NULL THEN dt END) OVER w_page AS first_dt,
    MAX(CASE WHEN row_reason IS NULL THEN dt END) OVER w_page AS last_dt,
    MIN(CASE WHEN row_reason IS NULL THEN user_id END) OVER w_page
      <> MAX(CASE WHEN row_reason IS NULL THEN user_id END) OVER w_page AS users_differ,
    MIN(CASE WHEN row_reason IS NULL THEN event_ts END) OVER w_page
      <> MAX(CASE WHEN row_reason IS NULL THEN event_ts END) OVER w_page AS times_differ,
    MIN(CASE WHEN row_reason IS NULL THEN query END) OVER w_page
      <> MAX(CASE WHEN row_reason IS NULL THEN query END) OVER w_page AS queries_differ
  FROM row_checked c
  WINDOW
    w_sorted AS (PARTITION BY request_id
                 ORDER BY row_reason IS NOT NULL, item_id, position_raw, clicked_raw DESC, event_ts, dt, user_id, query),
    w_page AS (PARTITION BY request_id
               ORDER BY row_reason IS NOT NULL, item_id, position_raw, clicked_raw DESC, event_ts, dt, user_id, query
               ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING)
),
reasoned AS (
  SELECT
    *,
    coalesce(row_reason, CASE
      WHEN first_dt <> last_dt THEN 'split_page_view'
      WHEN users_differ OR times_differ OR queries_differ THEN 'inconsistent_page_view'
      WHEN is_duplicate THEN 'duplicate_key'
    END) AS reject_reason
  FROM per_page
)
SELECT
  request_id, user_id, item_id,
  try_cast(position_raw AS INT) AS position,
  query, event_ts,
  try_cast(clicked_raw AS INT) AS clicked,
  dt,
  reject_reason,
  -- what was wrong, without repeating the (possibly huge) strings of the row
  CASE reject_reason
    WHEN 'null_key' THEN concat('NULL: ', concat_ws(', ',
      CASE WHEN request_id IS NULL THEN 'request_id' END, CASE WHEN user_id IS NULL THEN 'user_id' END,
      CASE WHEN item_id IS NULL THEN 'item_id' END, CASE WHEN event_ts IS NULL THEN 'event_ts' END,
      CASE WHEN dt_raw IS NULL THEN 'dt' END))
    WHEN 'invalid_label' THEN concat('clicked=', coalesce(CAST(clicked_raw AS STRING), 'NULL'))
    WHEN 'invalid_position' THEN concat('position=', coalesce(CAST(position_raw AS STRING), 'NULL'))
    WHEN 'future_timestamp' THEN concat('event_ts=', CAST(event_ts AS STRING), ' > ',
      CAST(CAST(:max_event_ts AS TIMESTAMP) AS STRING))
    WHEN 'dt_mismatch' THEN concat('dt=', CAST(dt_raw AS STRING), ' event_ts=', CAST(event_ts AS STRING))
    WHEN 'split_page_view' THEN concat('page view rows on dt ', CAST(first_dt AS STRING), ' .. ', CAST(last_dt AS STRING))
    WHEN 'inconsistent_page_view' THEN concat('page view rows disagree on ', concat_ws(', ',
      CASE WHEN users_differ THEN 'user_id' END, CASE WHEN times_differ THEN 'event_ts' END,
      CASE WHEN queries_differ THEN 'query' END))
  END AS reject_detail
FROM reasoned
WHERE dt BETWEEN CAST(:history_start AS DATE) AND CAST(:end_dt AS DATE) OR dt IS NULL
