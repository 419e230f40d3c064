//! Window outputs (`emit = "window"`) against DuckDB: with windows spanning many small batches,
//! events slightly out of order (sessions interleaved), a last file of events hours late and
//! SIGKILLs at random moments, the lake's window table equals DuckDB's aggregate over the raw input without the
//! rows in `_late`, each window once; window rows plus late rows account for every event.

use crate::common::*;

const EVENTS: u64 = 20_000;
/// Events of the first minutes again, at the end of the input.
const LATE: usize = 50;
/// Micro-batches of 300 records, three to a commit (windows close within a batch too).
const SMALL_BATCHES: &str =
    "max_records = 300\nmax_bytes = \"64MiB\"\nmax_age = \"5s\"\ncommit_every = 3";

const PER_MINUTE: &str = "SELECT date_trunc('minute', event_time) AS minute, product_id,
    count(*) AS events,
    count(DISTINCT event_id) AS ids,
    count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
    sum(quantity * price) FILTER (WHERE event_type = 'purchase') AS revenue,
    max(event_time) AS last_at
FROM events
GROUP BY 1, 2";

/// The sample job plus `per_minute`, a window output (1 minute, 30 s lateness).
fn project() -> Project {
    let p = Project::ecommerce(EVENTS, 3, SMALL_BATCHES);
    p.write("sql/ecommerce/per_minute.sql", PER_MINUTE);
    // A last file (files are read in name order) of events from the first hour, long after:
    // late for the windows written meanwhile.
    let first = std::fs::read_to_string(p.root().join("data/events/part-00000.jsonl")).unwrap();
    let late: String = first
        .lines()
        .take(LATE)
        .map(|l| l.replacen("\"event_id\":\"", "\"event_id\":\"late-", 1) + "\n")
        .collect();
    p.write("data/events/part-00099.jsonl", &late);
    let job = std::fs::read_to_string(p.job()).unwrap();
    let job = job.replace(
        "[outputs.sales]",
        "[outputs.per_minute]\nemit = \"window\"\nwindow = { column = \"minute\", size = \"1m\", lateness = \"30s\" }\n\n[outputs.sales]",
    );
    std::fs::write(p.job(), job).unwrap();
    p
}

/// The window table equals DuckDB's aggregate of the raw events that are not in `_late`, row
/// for row; returns the number of late rows.
fn assert_equals_duckdb(p: &Project) -> u64 {
    let lake = p.lake();
    let sql = format!(
        "WITH late AS (SELECT json_extract_string(event, '$.event_id') AS event_id FROM {late} WHERE output = 'per_minute'),
         got AS (SELECT minute, product_id, events, ids, purchases, CAST(revenue AS DECIMAL(18, 2)) AS revenue, last_at FROM {table}),
         raw AS (SELECT * FROM {raw} WHERE event_id NOT IN (SELECT event_id FROM late)),
         want AS (SELECT date_trunc('minute', event_time) AS minute, product_id, count(*) AS events,
                  count(DISTINCT event_id) AS ids,
                  count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
                  CAST(sum(quantity * price) FILTER (WHERE event_type = 'purchase') AS DECIMAL(18, 2)) AS revenue,
                  max(event_time) AS last_at
                  FROM raw GROUP BY 1, 2)
         SELECT (SELECT count(*) FROM (SELECT * FROM got EXCEPT ALL SELECT * FROM want)),
                (SELECT count(*) FROM (SELECT * FROM want EXCEPT ALL SELECT * FROM got)),
                (SELECT count(*) FROM got),
                (SELECT count(*) FROM late),
                (SELECT sum(events) FROM got) + (SELECT count(*) FROM late),
                (SELECT count(*) FROM (SELECT minute, product_id FROM got GROUP BY 1, 2 HAVING count(*) > 1))",
        late = lake_table(&lake, "_late"),
        table = lake_table(&lake, "per_minute"),
        raw = raw_events(p.root()),
    );
    let row = duckdb(&sql);
    let v: Vec<u64> = row[0].split(',').map(|x| x.parse().unwrap()).collect();
    assert_eq!(
        v[0], 0,
        "rows in the lake that DuckDB does not compute: {row:?}"
    );
    assert_eq!(v[1], 0, "rows DuckDB computes that the lake lacks: {row:?}");
    assert!(v[2] > 100, "too few windows: {row:?}");
    assert_eq!(
        v[4],
        EVENTS + LATE as u64,
        "window rows + late rows != events: {row:?}"
    );
    assert_eq!(v[5], 0, "a window written twice: {row:?}");
    v[3]
}

#[test]
fn window_rows_equal_duckdb_and_late_rows_are_kept() {
    let p = project();
    let out = stdout(&run(&mut p.run_cmd(), true));
    assert!(out.contains("late rows"), "{out}");
    let late = assert_equals_duckdb(&p);
    // The generated events come in time order, within a few seconds: only the last file is late.
    assert_eq!(late, LATE as u64, "late rows");
    // Every late row names its window, which was written before it came.
    let check = duckdb(&format!(
        "SELECT count(*) FROM {} WHERE window_start IS NULL OR watermark IS NULL OR window_start + INTERVAL 1 MINUTE + INTERVAL 30 SECOND > watermark",
        lake_table(&p.lake(), "_late")
    ));
    assert_eq!(check, ["0"]);
    // Nothing is open after a file run: a second run reads nothing and writes nothing.
    let again = stdout(&run(&mut p.run_cmd(), true));
    assert!(again.contains("up to date"), "{again}");
}

#[test]
fn sigkill_at_random_moments_changes_no_window() {
    let p = project();
    let kills = kill_at_random(&p, 8, 100, 900, "window crash test");
    assert!(kills >= 4, "only {kills} kills hit a running process");
    run(&mut p.run_cmd(), true);
    assert_equals_duckdb(&p);
}

#[test]
fn validate_refuses_a_window_output_it_cannot_keep() {
    let p = project();
    p.write(
        "sql/ecommerce/per_minute.sql",
        "SELECT date_trunc('minute', event_time) AS minute, count(*) AS n FROM events GROUP BY 1 ORDER BY n DESC LIMIT 10",
    );
    let out = run(weir().arg("validate").arg(p.job()), false);
    let err = stderr(&out);
    assert!(
        err.contains("per_minute.sql")
            && err.contains("LIMIT")
            && err.contains("emit = \"window\""),
        "{err}"
    );
    assert!(!p.lake().exists(), "nothing is written");
}
