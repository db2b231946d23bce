-- One row per valid page view in the history window: its clicked items and
-- the unclicked items that survive negative down-sampling, each ordered by
-- position on the page.
--
-- Down-sampling keeps an unclicked impression when a hash of
-- (request_id, item_id, :sampling_seed) falls under :negative_keep_rate, so the
-- same input always yields the same sample. Clicked items are never dropped.
--
-- Parameters: :negative_keep_rate (DOUBLE), :sampling_seed (INT).
WITH valid AS (
  SELECT
    *,
    clicked = 0
      AND pmod(xxhash64(request_id, item_id, :sampling_seed), 1000000) < :negative_keep_rate * 1000000
      AS negative_kept
  FROM impressions_checked
  WHERE reject_reason IS NULL
)
SELECT
  request_id,
  any_value(user_id)  AS user_id,
  any_value(event_ts) AS event_ts,
  -- the rows agree on the query or leave it NULL (impressions_checked): max() takes the
  -- non-NULL one whatever the row order
  max(query)          AS query,
  any_value(dt)       AS dt,
  -- collect_list skips NULLs, so each CASE keeps only its own kind of impression.
  transform(array_sort(collect_list(CASE WHEN clicked = 1 THEN struct(position, item_id) END)), x -> x.item_id)
    AS clicked_item_ids,
  transform(array_sort(collect_list(CASE WHEN negative_kept THEN struct(position, item_id) END)), x -> x.item_id)
    AS kept_negative_item_ids,
  CAST(count(*) AS INT)                AS n_impressions,
  CAST(count_if(clicked = 1) AS INT)   AS n_clicked,
  CAST(count_if(clicked = 0) AS INT)   AS n_negatives
FROM valid
GROUP BY request_id
