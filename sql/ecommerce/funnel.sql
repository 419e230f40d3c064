-- Per product and minute: views, add-to-carts, purchases, revenue and view-to-purchase conversion.
-- A window output (emit = "window" in the job): one row per product and minute, written once the
-- watermark is 2 minutes past the minute's end; rows that come later go to the _late table.
-- Refunds are not part of the funnel: a product and minute with only refunds has no row.
SELECT
    product_id,
    date_trunc('minute', event_time) AS minute,
    count(*) FILTER (WHERE event_type = 'view') AS views,
    count(*) FILTER (WHERE event_type = 'add_to_cart') AS carts,
    count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
    CAST(coalesce(sum(quantity * price) FILTER (WHERE event_type = 'purchase'), 0) AS DECIMAL(12, 2)) AS revenue,
    CASE
        WHEN count(*) FILTER (WHERE event_type = 'view') = 0 THEN NULL
        ELSE CAST(count(*) FILTER (WHERE event_type = 'purchase') AS DOUBLE)
             / count(*) FILTER (WHERE event_type = 'view')
    END AS conversion,
    CAST(date_trunc('minute', event_time) AS DATE) AS dt
FROM events
WHERE product_id IS NOT NULL AND event_type IN ('view', 'add_to_cart', 'purchase')
GROUP BY product_id, date_trunc('minute', event_time)
