-- Land every event: all fields, signed revenue and the day (the job people run first).
SELECT
    event_id,
    event_time,
    event_type,
    session_id,
    user_id,
    product_id,
    quantity,
    price,
    order_id,
    CAST(CASE WHEN event_type = 'refund' THEN -1 ELSE 1 END * quantity * price AS DECIMAL(12, 2)) AS revenue,
    CAST(event_time AS DATE) AS dt
FROM events
