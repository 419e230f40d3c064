-- Stock per product, always current: an update output (emit = "update" in the job) holds one row
-- per product with every event so far, replaced each batch that touches the product. Units sold
-- are net of refunds (a refund puts units back on the shelf); restocks are supplier deliveries.
-- The catalogue's stock_on_hand is the snapshot the events start from. units_per_hour is the
-- demand_forecast model's (scikit-learn, models/train.py) forecast for the product at the hour of
-- its last movement, and hours_of_cover how long the stock left lasts at that rate.
SELECT
    s.product_id,
    p.name,
    p.category,
    s.units_sold,
    s.units_restocked,
    p.stock_on_hand AS stock_at_snapshot,
    p.stock_on_hand + s.units_restocked - s.units_sold AS stock_left,
    p.stock_on_hand + s.units_restocked - s.units_sold < 10 AS low_stock,
    s.last_movement,
    round(demand_forecast(s.product_id, extract(hour FROM s.last_movement), p.price), 4) AS units_per_hour,
    round(
        (p.stock_on_hand + s.units_restocked - s.units_sold)
        / greatest(demand_forecast(s.product_id, extract(hour FROM s.last_movement), p.price), 0.001),
        1
    ) AS hours_of_cover
FROM (
    SELECT
        product_id,
        CAST(coalesce(sum(CASE event_type WHEN 'purchase' THEN quantity WHEN 'refund' THEN -quantity END), 0) AS BIGINT) AS units_sold,
        CAST(coalesce(sum(quantity) FILTER (WHERE event_type = 'restock'), 0) AS BIGINT) AS units_restocked,
        max(event_time) AS last_movement
    FROM events
    WHERE product_id IS NOT NULL AND event_type IN ('purchase', 'refund', 'restock')
    GROUP BY product_id
) s
JOIN products p ON p.product_id = s.product_id
