-- Revenue per minute: orders, refunds, units and revenue net of refunds. A window output (emit =
-- "window" in the job): one row per minute, written once the watermark is 2 minutes past its end.
SELECT
    date_trunc('minute', event_time) AS minute,
    count(*) FILTER (WHERE event_type = 'purchase') AS orders,
    count(*) FILTER (WHERE event_type = 'refund') AS refunds,
    CAST(coalesce(sum(CASE WHEN event_type = 'refund' THEN -quantity ELSE quantity END), 0) AS BIGINT) AS units,
    CAST(coalesce(sum(CASE WHEN event_type = 'refund' THEN -quantity * price ELSE quantity * price END), 0) AS DECIMAL(14, 2)) AS revenue
FROM events
WHERE event_type IN ('purchase', 'refund')
GROUP BY date_trunc('minute', event_time)
