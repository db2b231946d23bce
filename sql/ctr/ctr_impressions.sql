-- Every valid impression of the requested range, one row each, with its label,
-- the item's category and the user's latest clicks strictly before the page
-- view (click_history: point-in-time, oldest to newest, length :l_click).
--
-- Unlike the COURIER samples nothing is down-sampled and no page view is
-- dropped: a CTR model is evaluated on what users were shown. An impression
-- without history keeps an empty history.
--
-- Parameters: :start_dt, :end_dt (DATE or 'YYYY-MM-DD'). Reads the temp views
-- impressions_checked and click_history of the sample SQL, and ctr_items.
SELECT
  c.request_id, c.user_id, c.item_id, i.category, c.query, c.position, c.event_ts,
  c.clicked AS label, h.history_item_ids, c.dt
FROM impressions_checked c
JOIN click_history h USING (request_id)
JOIN ctr_items i USING (item_id)
WHERE c.reject_reason IS NULL AND c.dt BETWEEN CAST(:start_dt AS DATE) AND CAST(:end_dt AS DATE)
