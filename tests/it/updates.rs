//! Update outputs (`emit = "update"`) against DuckDB: with keys updated by many small batches, a
//! HAVING that drops keys again (their rows deleted), NULL keys, and SIGKILLs at random moments,
//! the lake's table equals DuckDB's aggregate over the whole raw input, one row per key.

use crate::common::*;

const EVENTS: u64 = 20_000;
/// Micro-batches of 400 records, two to a commit (a batch's changes are merged once).
const SMALL_BATCHES: &str =
    "max_records = 400\nmax_bytes = \"64MiB\"\nmax_age = \"5s\"\ncommit_every = 2";

/// Per user and event type, kept only while the pair has fewer than 4 events: keys appear, are
/// updated, and are deleted again as batches come. Restocks have no user: their NULL key stays.
const PER_USER: &str = "SELECT user_id, event_type AS kind,
    count(*) AS events,
    count(DISTINCT product_id) AS products,
    sum(quantity) AS units,
    avg(price) AS avg_price,
    min(event_time) AS first_at,
    max(event_time) AS last_at
FROM events
GROUP BY user_id, event_type
HAVING count(*) < 4 OR user_id IS NULL";

/// The sample job plus `per_user`, an update output.
fn project() -> Project {
    let p = Project::ecommerce(EVENTS, 3, SMALL_BATCHES);
    p.write("sql/ecommerce/per_user.sql", PER_USER);
    let job = std::fs::read_to_string(p.job()).unwrap();
    let job = job.replace(
        "[outputs.sales]",
        "[outputs.per_user]\nemit = \"update\"\n\n[outputs.sales]",
    );
    std::fs::write(p.job(), job).unwrap();
    p
}

/// The update table equals DuckDB's aggregate of the raw events, row for row, one per key.
fn assert_equals_duckdb(p: &Project) {
    let lake = p.lake();
    let sql = format!(
        "WITH got AS (SELECT user_id, kind, events, products, units, round(CAST(avg_price AS DOUBLE), 4) AS avg_price, first_at, last_at FROM {table}),
         want AS (SELECT user_id, event_type AS kind, count(*) AS events, count(DISTINCT product_id) AS products,
                  sum(quantity) AS units, round(CAST(avg(price) AS DOUBLE), 4) AS avg_price,
                  min(event_time) AS first_at, max(event_time) AS last_at
                  FROM {raw} GROUP BY ALL HAVING count(*) < 4 OR user_id IS NULL)
         SELECT (SELECT count(*) FROM (SELECT * FROM got EXCEPT ALL SELECT * FROM want)),
                (SELECT count(*) FROM (SELECT * FROM want EXCEPT ALL SELECT * FROM got)),
                (SELECT count(*) FROM got),
                (SELECT count(*) FROM got WHERE user_id IS NULL),
                (SELECT count(*) FROM (SELECT user_id, kind FROM got GROUP BY ALL HAVING count(*) > 1)),
                (SELECT count(*) FROM (SELECT user_id, event_type FROM {raw} GROUP BY ALL HAVING count(*) >= 4))",
        table = lake_table(&lake, "per_user"),
        raw = raw_events(p.root()),
    );
    let row = duckdb(&sql);
    let v: Vec<u64> = row[0].split(',').map(|x| x.parse().unwrap()).collect();
    assert_eq!(v[0], 0, "rows in the lake DuckDB does not compute: {row:?}");
    assert_eq!(v[1], 0, "rows DuckDB computes that the lake lacks: {row:?}");
    assert!(v[2] > 500, "too few keys: {row:?}");
    assert_eq!(v[3], 1, "the NULL user's restocks are one key: {row:?}");
    assert_eq!(v[4], 0, "a key written twice: {row:?}");
    assert!(
        v[5] > 50,
        "too few keys dropped by HAVING to test deletes: {row:?}"
    );
}

#[test]
fn update_rows_equal_duckdb_whatever_the_batches() {
    let p = project();
    let out = stdout(&run(&mut p.run_cmd(), true));
    assert!(out.contains("keys held: per_user"), "{out}");
    assert_equals_duckdb(&p);
    // Each batch's changes are kept for the warehouses, and the table is one MERGE per batch.
    let changes = std::fs::read_dir(p.state().join("changes"))
        .unwrap()
        .count();
    assert!(changes > 10, "{changes} change files");
    let status = stdout(&run(weir().arg("status").arg(p.job()), true));
    assert!(
        status.contains("per_user") && status.contains("keys held"),
        "{status}"
    );
    // A second run reads nothing and changes nothing.
    let again = stdout(&run(&mut p.run_cmd(), true));
    assert!(again.contains("up to date"), "{again}");
    assert_equals_duckdb(&p);
}

#[test]
fn sigkill_at_random_moments_changes_no_update_row() {
    let p = project();
    let kills = kill_at_random(&p, 8, 100, 900, "update crash test");
    assert!(kills >= 3, "only {kills} kills hit a running process");
    run(&mut p.run_cmd(), true);
    assert_equals_duckdb(&p);
}

#[test]
fn validate_refuses_an_update_output_it_cannot_keep() {
    let p = project();
    p.write(
        "sql/ecommerce/per_user.sql",
        "SELECT count(*) AS events FROM events GROUP BY user_id",
    );
    let out = run(weir().arg("validate").arg(p.job()), false);
    let err = stderr(&out);
    assert!(
        err.contains("per_user.sql")
            && err.contains("emit = \"update\"")
            && err.contains("GROUP BY key")
            && err.contains("user_id"),
        "{err}"
    );
    assert!(!p.lake().exists(), "nothing is written");
}
