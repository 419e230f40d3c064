-- Add-to-carts, each with the probability that it is bought: the cart_propensity model (TensorFlow,
-- trained by models/train.py) scores the price, quantity, hour of day and device. A cart without a
-- device gets no score (NULL).
SELECT
    event_id,
    event_time,
    session_id,
    user_id,
    product_id,
    quantity,
    price,
    device,
    round(cart_propensity(price, quantity, extract(hour FROM event_time), device = 'mobile'), 4) AS propensity,
    CAST(event_time AS DATE) AS dt
FROM events
WHERE event_type = 'add_to_cart'
