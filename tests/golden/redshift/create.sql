CREATE SCHEMA IF NOT EXISTS "analytics";

CREATE TABLE IF NOT EXISTS "analytics"."_weir_loads" (
    lake_id VARCHAR(64) NOT NULL,
    job VARCHAR(256) NOT NULL,
    table_name VARCHAR(256) NOT NULL,
    batch BIGINT NOT NULL,
    row_count BIGINT NOT NULL,
    file_count INTEGER NOT NULL,
    loaded_at TIMESTAMP NOT NULL,
    PRIMARY KEY (lake_id, job, table_name, batch)
);

CREATE TABLE IF NOT EXISTS "analytics"."funnel" (
    "product_id" integer,
    "minute" timestamp with time zone,
    "views" bigint,
    "carts" bigint,
    "purchases" bigint,
    "revenue" numeric(12,2),
    "conversion" double precision,
    "dt" date
);

CREATE TABLE IF NOT EXISTS "analytics"."sales" (
    "event_id" varchar(65535),
    "order_id" varchar(65535),
    "user_id" bigint,
    "product_id" integer,
    "kind" varchar(65535),
    "quantity" integer,
    "price" numeric(10,2),
    "revenue" numeric(12,2),
    "event_time" timestamp with time zone,
    "dt" date
);

CREATE TABLE IF NOT EXISTS "analytics"."inventory" (
    "product_id" integer,
    "name" varchar(65535),
    "category" varchar(65535),
    "dt" date,
    "units_sold" bigint,
    "stock_on_hand" bigint,
    "stock_after" bigint,
    "low_stock" boolean
);
