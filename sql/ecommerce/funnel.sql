-- Per product and minute: views, add-to-carts, purchases, revenue and view-to-purchase conversion.
-- Rows are per micro-batch: a minute that spans two batches has two rows; sum them when reading.
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
WHERE product_id IS NOT NULL
GROUP BY product_id, date_trunc('minute', event_time)
