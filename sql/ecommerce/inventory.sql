-- Inventory movements: units sold (net of refunds) per product and day in this batch, joined with
-- the catalogue to flag products whose stock on hand runs low.
SELECT
    s.product_id,
    p.name,
    p.category,
    s.dt,
    CAST(sum(CASE WHEN s.kind = 'refund' THEN -s.quantity ELSE s.quantity END) AS BIGINT) AS units_sold,
    p.stock_on_hand,
    p.stock_on_hand - sum(CASE WHEN s.kind = 'refund' THEN -s.quantity ELSE s.quantity END) AS stock_after,
    p.stock_on_hand - sum(CASE WHEN s.kind = 'refund' THEN -s.quantity ELSE s.quantity END) < 10 AS low_stock
FROM sales s
JOIN products p ON p.product_id = s.product_id
GROUP BY s.product_id, p.name, p.category, s.dt, p.stock_on_hand
