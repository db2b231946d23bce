-- One row per item of raw_items: its id and category, for ctr_impressions (the
-- candidate) and ctr_samples (each history item); any_value, as raw_items may
-- hold an item more than once.
--
-- Parameters: :raw_items (table).
SELECT CAST(item_id AS BIGINT) AS item_id, any_value(category) AS category
FROM IDENTIFIER(:raw_items)
WHERE item_id IS NOT NULL
GROUP BY 1
