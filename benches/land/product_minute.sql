-- Per product and minute: events, units and revenue of purchases (the aggregate next to the landing).
SELECT
    product_id,
    date_trunc('minute', event_time) AS minute,
    count(*) AS events,
    CAST(coalesce(sum(quantity) FILTER (WHERE event_type = 'purchase'), 0) AS BIGINT) AS units,
    CAST(coalesce(sum(quantity * price) FILTER (WHERE event_type = 'purchase'), 0) AS DECIMAL(12, 2)) AS revenue,
    CAST(date_trunc('minute', event_time) AS DATE) AS dt
FROM events
GROUP BY product_id, date_trunc('minute', event_time)
