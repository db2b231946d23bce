-- One row per item: its id and category, for ctr_impressions (the candidate) and
-- ctr_samples (each history item). Read from item_images, which holds one row per
-- item: the latest raw_items row, the one whose image the samples use. (raw_items
-- may hold an item twice with different categories; picking any one of them would
-- make the same input give different samples.) Every valid impression's item is
-- there: impressions_checked rejects the others as item_without_image.
--
-- Parameters: :item_images (table).
SELECT item_id, category
FROM IDENTIFIER(:item_images)
