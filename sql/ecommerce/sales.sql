-- Sales facts: one row per purchase or refund line; refunds carry negative revenue.
SELECT
    event_id,
    order_id,
    user_id,
    product_id,
    event_type AS kind,
    quantity,
    price,
    CAST(CASE WHEN event_type = 'refund' THEN -1 ELSE 1 END * quantity * price AS DECIMAL(12, 2)) AS revenue,
    event_time,
    CAST(event_time AS DATE) AS dt
FROM events
WHERE event_type IN ('purchase', 'refund')
