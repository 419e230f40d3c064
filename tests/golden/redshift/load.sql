BEGIN;

LOCK TABLE "analytics"."_weir_loads";

SELECT 1 FROM "analytics"."_weir_loads" WHERE lake_id = '0123456789abcdef0123456789abcdef' AND job = 'ecommerce' AND table_name = 'sales' AND batch = 42;

COPY "analytics"."sales"
FROM 's3://shop-lake/events/_weir/ecommerce/manifests/00000000000000000042-sales.manifest'
IAM_ROLE 'arn:aws:iam::123456789012:role/weir-redshift'
FORMAT AS PARQUET
MANIFEST
REGION 'eu-west-1';

INSERT INTO "analytics"."_weir_loads" (lake_id, job, table_name, batch, row_count, file_count, loaded_at) VALUES ('0123456789abcdef0123456789abcdef', 'ecommerce', 'sales', 42, 1280, 2, TIMESTAMP '2025-06-02 10:00:00.000000');

COMMIT;
