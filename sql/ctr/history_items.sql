-- One row per (page view, history slot): the events whose image features the
-- as-of join looks up for the history, at the page view's own event_ts.
--
-- Parameters: none. Reads the temp view ctr_impressions.
SELECT request_id, event_ts, slot, item_id
FROM (SELECT DISTINCT request_id, event_ts, history_item_ids FROM ctr_impressions)
LATERAL VIEW posexplode(history_item_ids) h AS slot, item_id
