"""A Weir job done by DuckDB, for the side-by-side benchmark: read the same JSON lines with the
same schema, run the same transforms (every .sql file of the folder), write Parquet (zstd),
partitioned as the job's output is (`partition_by`; by dt when it has that column and says nothing). A transform another one reads is materialised first (when one reads another);
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
def model_function(path, output, index):
    """A vectorised DuckDB function scoring with onnxruntime; like Weir, nulls scored as 0, their
    scores NULL."""
    import numpy as np, onnxruntime as ort, pyarrow as pa
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = output or sess.get_outputs()[0].name

    def score(*cols):
        null = np.zeros(len(cols[0]), bool)
        for c in cols:
            null |= c.is_null().to_numpy(zero_copy_only=False)
        x = np.stack([c.cast(pa.float32()).fill_null(0).to_numpy(zero_copy_only=False)
                      for c in cols], axis=1)
        y = np.asarray(sess.run([name], {sess.get_inputs()[0].name: x.astype(np.float32)})[0], np.float64)
        return pa.array(y[:, index] if y.ndim == 2 else y, mask=null)

    k = sess.get_inputs()[0].shape[1]
    args = ", ".join(f"x{i}" for i in range(k))  # DuckDB counts a Python function's parameters
    return eval(f"lambda {args}: score({args})", {"score": score}), k


for name, spec in job.get("models", {}).items():
    score, k = model_function(f"{root}/{spec['path']}", spec.get("output"), spec.get("index", 0))
    # Any argument types (DuckDB does not cast a boolean to FLOAT): the function casts, as Weir.
    con.create_function(name, score, None, "DOUBLE", type="arrow")
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
    parts = job.get("outputs", {}).get(name, {}).get("partition_by", ["dt"] if "dt" in columns else [])
    if parts:
        con.execute(f"COPY {src} TO '{out}/{name}' (FORMAT parquet, COMPRESSION zstd, PARTITION_BY ({', '.join(parts)}), OVERWRITE_OR_IGNORE)")
    else:
        con.execute(f"COPY {src} TO '{out}/{name}.parquet' (FORMAT parquet, COMPRESSION zstd)")
print(f"events={n} inside={time.time() - start:.2f}s")
