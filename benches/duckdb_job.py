"""The standard job done by DuckDB, for the side-by-side benchmark: read the same JSON lines with
the same schema, run the same transforms (every .sql file of the job), write Parquet (zstd)
partitioned by dt."""
import os, sys, time, resource
import duckdb

root = sys.argv[1]
events = f"{root}/data/events/*.jsonl*"
out = f"{root}/duck"
os.makedirs(out, exist_ok=True)
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
start = time.time()
cpu0 = resource.getrusage(resource.RUSAGE_SELF)
con.execute(f"""
CREATE TEMP TABLE events AS SELECT * FROM read_json('{events}', format = 'newline_delimited',
  columns = {{event_id: 'VARCHAR', event_time: 'TIMESTAMPTZ', event_type: 'VARCHAR', session_id: 'VARCHAR',
             user_id: 'BIGINT', product_id: 'INTEGER', quantity: 'INTEGER', price: 'DECIMAL(10,2)', order_id: 'VARCHAR'}})
""")
con.execute(f"CREATE TEMP TABLE products AS SELECT * FROM read_csv('{root}/data/products.csv')")
n = con.execute("SELECT count(*) FROM events").fetchone()[0]
def sql(name):
    text = open(f"{root}/sql/ecommerce/{name}.sql").read()
    return "\n".join(l for l in text.splitlines() if not l.strip().startswith("--"))
con.execute(f"CREATE TEMP TABLE sales AS {sql('sales')}")
# Every transform of the job folder (the sample job's three, plus all_events when benchmarked).
names = sorted(f[:-4] for f in os.listdir(f"{root}/sql/ecommerce") if f.endswith(".sql"))
for name in names:
    src = "sales" if name == "sales" else f"({sql(name)})"
    con.execute(f"COPY {src} TO '{out}/{name}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (dt), OVERWRITE_OR_IGNORE)")
wall = time.time() - start
cpu1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
print(f"wall={wall:.2f}s cpu={cpu:.2f}s peak_rss={cpu1.ru_maxrss // 1024}MiB events/s={int(n / wall)}")
