-- Every valid page view of the requested range as a COURIER sample, with the
-- reason it is dropped (drop_reason IS NULL: kept) and the counts that
-- reconcile impressions in with impressions kept.
--
-- pv_item_ids / pv_labels: clicked items first, then kept unclicked items, each
-- by position, trimmed to :l_pv and padded with item -1 / label -1.
-- click_item_ids: the history, oldest to newest, left-padded with -1 to :l_click.
--
-- Parameters: :l_pv, :l_click (INT), :start_dt, :end_dt (DATE or 'YYYY-MM-DD').
WITH joined AS (
  SELECT
    pv.*,
    h.history_item_ids,
    concat(pv.clicked_item_ids, pv.kept_negative_item_ids) AS candidates
  FROM page_views pv
  JOIN click_history h USING (request_id)
  WHERE pv.dt BETWEEN CAST(:start_dt AS DATE) AND CAST(:end_dt AS DATE)
),
shaped AS (
  SELECT
    *,
    slice(candidates, 1, :l_pv) AS shown,
    size(candidates) AS n_candidates
  FROM joined
)
SELECT
  request_id, user_id, event_ts, query, dt,
  concat(shown, array_repeat(CAST(-1 AS BIGINT), :l_pv - size(shown))) AS pv_item_ids,
  concat(
    array_repeat(1, least(n_clicked, :l_pv)),
    array_repeat(0, size(shown) - least(n_clicked, :l_pv)),
    array_repeat(-1, :l_pv - size(shown))) AS pv_labels,
  concat(array_repeat(CAST(-1 AS BIGINT), :l_click - size(history_item_ids)), history_item_ids) AS click_item_ids,
  CAST(size(history_item_ids) AS INT) AS n_history,
  CASE
    WHEN n_clicked = 0 THEN 'no_click'
    WHEN size(history_item_ids) = 0 THEN 'no_history'
  END AS drop_reason,
  n_impressions,
  CAST(size(shown) AS INT)                  AS n_shown,
  n_negatives - size(kept_negative_item_ids) AS n_downsampled,
  CAST(n_candidates - size(shown) AS INT)   AS n_truncated
FROM shaped
