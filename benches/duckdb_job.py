"""A Weir job done by DuckDB, for the side-by-side benchmark: read the same JSON lines with the
same schema, run the same transforms (every .sql file of the folder), write Parquet (zstd),
partitioned by dt when the output has it. A transform another one reads is materialised first (when one reads another);
the others stream straight into COPY. The job's [models] are DuckDB functions that score whole
Arrow vectors with onnxruntime (float32 inputs, like Weir's).
    duckdb_job.py ROOT SQL_FOLDER      (events in ROOT/data/events, output in ROOT/duck)"""
import os, re, sys, time, tomllib
import duckdb

root, folder = sys.argv[1], sys.argv[2]
events = f"{root}/data/events/*.jsonl*"
out = f"{root}/duck"
os.makedirs(out, exist_ok=True)
con = duckdb.connect()
con.execute("SET TimeZone = 'UTC'")
start = time.time()
con.execute(f"""
CREATE TEMP TABLE events AS SELECT * FROM read_json('{events}', format = 'newline_delimited',
  columns = {{event_id: 'VARCHAR', event_time: 'TIMESTAMPTZ', event_type: 'VARCHAR', session_id: 'VARCHAR',
             user_id: 'BIGINT', product_id: 'INTEGER', quantity: 'INTEGER', price: 'DECIMAL(10,2)', order_id: 'VARCHAR',
             device: 'VARCHAR'}})
""")
job = tomllib.load(open(f"{root}/jobs/job.toml", "rb"))
for name, spec in job.get("models", {}).items():
    import numpy as np, onnxruntime as ort, pyarrow as pa
    sess = ort.InferenceSession(f"{root}/{spec['path']}", providers=["CPUExecutionProvider"])
    k = sess.get_inputs()[0].shape[1]
    outs = [o.name for o in sess.get_outputs()]
    out_name, index = spec.get("output", outs[0]), spec.get("index", 0)

    def score(*cols, sess=sess, out_name=out_name, index=index):
        # Like Weir: nulls scored as 0, their scores NULL.
        null = np.zeros(len(cols[0]), bool)
        for c in cols:
            null |= c.is_null().to_numpy(zero_copy_only=False)
        x = np.stack([c.fill_null(0).to_numpy(zero_copy_only=False) for c in cols], axis=1)
        y = sess.run([out_name], {sess.get_inputs()[0].name: x.astype(np.float32)})[0]
        y = np.asarray(y, np.float64)
        return pa.array(y[:, index] if y.ndim == 2 else y, mask=null)

    con.create_function(name, score, ["FLOAT"] * k, "DOUBLE", type="arrow")
if os.path.exists(f"{root}/data/products.csv"):
    con.execute(f"CREATE TEMP TABLE products AS SELECT * FROM read_csv('{root}/data/products.csv')")
n = con.execute("SELECT count(*) FROM events").fetchone()[0]

def sql(name):
    text = open(f"{folder}/{name}.sql").read()
    return "\n".join(l for l in text.splitlines() if not l.strip().startswith("--"))

names = sorted(f[:-4] for f in os.listdir(folder) if f.endswith(".sql"))
texts = {name: sql(name) for name in names}
read = {name for name in names if any(re.search(rf"\b{name}\b", t) for o, t in texts.items() if o != name)}
for name in sorted(read):
    con.execute(f"CREATE TEMP TABLE {name} AS {texts[name]}")
for name in names:
    src = name if name in read else f"({texts[name]})"
    columns = [r[0] for r in con.execute(f"DESCRIBE SELECT * FROM {src} AS t").fetchall()]
    if "dt" in columns:
        con.execute(f"COPY {src} TO '{out}/{name}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY (dt), OVERWRITE_OR_IGNORE)")
    else:
        con.execute(f"COPY {src} TO '{out}/{name}.parquet' (FORMAT parquet, COMPRESSION zstd)")
print(f"events={n} inside={time.time() - start:.2f}s")
