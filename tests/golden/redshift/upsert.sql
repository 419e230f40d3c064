BEGIN;

LOCK TABLE "analytics"."_weir_loads";

SELECT 1 FROM "analytics"."_weir_loads" WHERE lake_id = '0123456789abcdef0123456789abcdef' AND job = 'ecommerce' AND table_name = 'stock' AND batch = 42;

CREATE TEMP TABLE "_weir_stage_stock" AS SELECT * FROM "analytics"."stock" WHERE 1 = 0;
ALTER TABLE "_weir_stage_stock" ADD COLUMN "_weir_deleted" BOOLEAN;

COPY "_weir_stage_stock"
FROM 's3://shop-lake/events/_weir/ecommerce/manifests/00000000000000000042-stock.manifest'
IAM_ROLE 'arn:aws:iam::123456789012:role/weir-redshift'
FORMAT AS PARQUET
MANIFEST
REGION 'eu-west-1';

DELETE FROM "analytics"."stock" USING "_weir_stage_stock" WHERE "stock"."product_id" = "_weir_stage_stock"."product_id";
INSERT INTO "analytics"."stock" ("product_id", "name", "category", "units_sold", "units_restocked", "stock_at_snapshot", "stock_left", "low_stock", "last_movement", "units_per_hour", "hours_of_cover") SELECT "product_id", "name", "category", "units_sold", "units_restocked", "stock_at_snapshot", "stock_left", "low_stock", "last_movement", "units_per_hour", "hours_of_cover" FROM "_weir_stage_stock" WHERE NOT COALESCE("_weir_deleted", FALSE);
DROP TABLE "_weir_stage_stock";

INSERT INTO "analytics"."_weir_loads" (lake_id, job, table_name, batch, row_count, file_count, loaded_at) VALUES ('0123456789abcdef0123456789abcdef', 'ecommerce', 'stock', 42, 57, 1, TIMESTAMP '2025-06-02 10:00:00.000000');

COMMIT;
