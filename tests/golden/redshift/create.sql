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

CREATE TABLE IF NOT EXISTS "analytics"."carts" (
    "event_id" varchar(65535),
    "event_time" timestamp with time zone,
    "session_id" varchar(65535),
    "user_id" bigint,
    "product_id" integer,
    "quantity" integer,
    "price" numeric(10,2),
    "device" varchar(65535),
    "propensity" double precision,
    "dt" date
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

CREATE TABLE IF NOT EXISTS "analytics"."revenue" (
    "minute" timestamp with time zone,
    "orders" bigint,
    "refunds" bigint,
    "units" bigint,
    "revenue" numeric(14,2)
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

CREATE TABLE IF NOT EXISTS "analytics"."stock" (
    "product_id" integer,
    "name" varchar(65535),
    "category" varchar(65535),
    "units_sold" bigint,
    "units_restocked" bigint,
    "stock_at_snapshot" bigint,
    "stock_left" bigint,
    "low_stock" boolean,
    "last_movement" timestamp with time zone,
    "units_per_hour" double precision,
    "hours_of_cover" double precision
);
