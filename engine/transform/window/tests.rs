use std::sync::Arc;

use arrow::array::{Int32Array, RecordBatch, StringArray, TimestampMicrosecondArray};
use arrow::util::pretty::pretty_format_batches;

use crate::job::Job;
use crate::transform::{TransformError, Transforms};

const MINUTE: i64 = 60_000_000;

/// A job with one window output `w` (window column `minute`, size 1m) running `sql`.
fn job(dir: &std::path::Path, sql: &str, lateness: &str) -> Job {
    job_emitting(
        dir,
        sql,
        &format!(
            "emit = \"window\"\nwindow = {{ column = \"minute\", size = \"1m\", lateness = \"{lateness}\" }}"
        ),
    )
}

/// A job with one output `w` running `sql`, with `emit` (its `[outputs.w]` keys).
fn job_emitting(dir: &std::path::Path, sql: &str, emit: &str) -> Job {
    std::fs::create_dir_all(dir.join("jobs")).unwrap();
    std::fs::create_dir_all(dir.join("sql")).unwrap();
    std::fs::write(dir.join("sql/w.sql"), sql).unwrap();
    std::fs::write(
        dir.join("products.csv"),
        "product_id,name\n1,mug\n2,tee\n3,cap\n",
    )
    .unwrap();
    let text = format!(
        r#"
name = "t"
transforms = "sql"
[input]
format = "json"
time_column = "event_time"
[input.schema]
event_time = "timestamp not null"
product_id = "int"
user_id = "string"
[tables.products]
path = "products.csv"
[outputs.w]
{emit}
[targets.local]
source = {{ kind = "files", path = "in/*.jsonl" }}
lake = "lake"
"#
    );
    Job::parse(&dir.join("jobs/t.toml"), &text).unwrap()
}

/// Events at the given (µs, product, user).
fn events(job: &Job, rows: &[(i64, i32, &str)]) -> Vec<RecordBatch> {
    let schema = job.input.schema.table_schema();
    let times: Vec<i64> = rows.iter().map(|r| r.0).collect();
    let tz = match schema.field(0).data_type() {
        arrow::datatypes::DataType::Timestamp(_, tz) => tz.clone(),
        other => panic!("event_time is {other}"),
    };
    let time = TimestampMicrosecondArray::from(times).with_timezone_opt(tz);
    let time = arrow::compute::cast(&time, schema.field(0).data_type()).unwrap();
    vec![
        RecordBatch::try_new(
            schema,
            vec![
                time,
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )
        .unwrap(),
    ]
}

/// The rows of the output, sorted, as text.
fn text(batches: &[RecordBatch]) -> Vec<String> {
    let table = pretty_format_batches(batches).unwrap().to_string();
    let mut lines: Vec<String> = table
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(str::to_string)
        .collect();
    lines.sort();
    lines
}

const SQL: &str = "SELECT date_trunc('minute', e.event_time) AS minute, p.name, count(*) AS n, \
    count(DISTINCT e.user_id) AS users, approx_distinct(e.user_id) AS approx_users, \
    avg(e.product_id) AS mean, stddev(e.product_id) AS sd, min(e.user_id) AS first_user, \
    CAST(sum(e.product_id) AS DOUBLE) / count(*) AS ratio \
    FROM events e JOIN products p ON p.product_id = e.product_id \
    GROUP BY 1, 2 HAVING count(*) > 0";

/// Random-ish events over five minutes, in order.
fn sample() -> Vec<(i64, i32, &'static str)> {
    let users = ["a", "b", "c", "d", "e", "f", "g"];
    (0..500i64)
        .map(|i| {
            (
                i * 5 * MINUTE / 500 + (i * 7919) % 1000,
                (i * 31 % 3 + 1) as i32,
                users[(i * 13 % 7) as usize],
            )
        })
        .collect()
}

#[tokio::test]
async fn windows_kept_across_batches_equal_one_aggregate_over_all() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), SQL, "0s");
    let all = sample();
    let expected = {
        let t = Transforms::load(&job).await.unwrap();
        text(&t.run(events(&job, &all)).await.unwrap()[0].batches)
    };
    assert!(expected.len() >= 10, "{expected:?}");

    let t = Transforms::load(&job).await.unwrap();
    let mut got = Vec::new();
    // Batches of 37 events: windows span many batches.
    let chunks: Vec<_> = all.chunks(37).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let step = t
            .step(events(&job, chunk), i + 1 == chunks.len())
            .await
            .unwrap();
        assert!(step.late.is_empty());
        got.extend(step.outputs[0].batches.iter().cloned());
        if i + 1 < chunks.len() {
            assert!(step.windows["w"].groups() > 0, "a window stays open");
        } else {
            assert_eq!(
                step.windows["w"].groups(),
                0,
                "the end finishes every window"
            );
        }
    }
    assert_eq!(text(&got), expected);
}

#[tokio::test]
async fn a_row_for_a_written_window_is_late_and_not_folded_in() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(
        dir.path(),
        "SELECT date_trunc('minute', event_time) AS minute, count(*) AS n FROM events GROUP BY 1",
        "30s",
    );
    let t = Transforms::load(&job).await.unwrap();
    // Minute 0; then the watermark reaches 1m40s: minute 0 (end 1m + 30s lateness) is written.
    let s1 = t
        .step(events(&job, &[(10, 1, "a"), (20, 1, "b")]), false)
        .await
        .unwrap();
    assert_eq!(s1.outputs[0].rows(), 0);
    let s2 = t
        .step(events(&job, &[(MINUTE + 40 * 1_000_000, 1, "c")]), false)
        .await
        .unwrap();
    assert_eq!(text(&s2.outputs[0].batches).len(), 1, "minute 0 written");
    // Within the lateness for minute 1, too late for minute 0.
    let s3 = t
        .step(
            events(&job, &[(30, 1, "late"), (MINUTE + 5, 1, "ok")]),
            true,
        )
        .await
        .unwrap();
    assert_eq!(s3.late.len(), 1);
    assert_eq!(s3.late[0].rows.num_rows(), 1);
    assert_eq!(s3.late[0].starts, [Some(0)]);
    let rows = text(&s3.outputs[0].batches);
    assert_eq!(rows.len(), 1, "{rows:?}");
    assert!(
        rows[0].contains("| 2 "),
        "minute 1 holds both its rows: {rows:?}"
    );
}

#[tokio::test]
async fn open_windows_show_as_they_stand_and_go_on() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(
        dir.path(),
        "SELECT date_trunc('minute', event_time) AS minute, count(*) AS n FROM events GROUP BY 1",
        "30s",
    );
    let t = Transforms::load(&job).await.unwrap();
    t.keep_open_rows();
    let s1 = t
        .step(events(&job, &[(10, 1, "a"), (20, 1, "b")]), false)
        .await
        .unwrap();
    assert_eq!(s1.outputs[0].rows(), 0, "nothing written yet");
    let open = text(&s1.open["w"]);
    assert_eq!(open.len(), 1, "{open:?}");
    assert!(open[0].contains("| 2 "), "{open:?}");
    // Showing them consumed nothing: the next row joins the same window, which ends with 3.
    let s2 = t.step(events(&job, &[(30, 1, "c")]), true).await.unwrap();
    let rows = text(&s2.outputs[0].batches);
    assert!(rows.len() == 1 && rows[0].contains("| 3 "), "{rows:?}");
    assert!(s2.open["w"].is_empty(), "the end closed it");
}

#[tokio::test]
async fn queries_that_cannot_be_kept_are_refused_with_the_fix() {
    for (sql, says) in [
        ("SELECT event_time AS minute FROM events", "no aggregate"),
        (
            "SELECT date_trunc('minute', event_time) AS minute, count(*) OVER () AS n FROM events",
            "window functions",
        ),
        (
            "SELECT date_trunc('minute', event_time) AS minute, count(*) AS n FROM events GROUP BY 1 LIMIT 5",
            "LIMIT",
        ),
        (
            "SELECT minute, count(*) AS n FROM (SELECT date_trunc('minute', event_time) AS minute, product_id FROM events GROUP BY 1, 2) GROUP BY 1",
            "two aggregates",
        ),
        (
            "SELECT max(event_time) AS minute, count(*) AS n FROM events GROUP BY product_id",
            "is an aggregate",
        ),
        (
            "SELECT product_id AS minute, count(*) AS n FROM events GROUP BY 1",
            "must be a timestamp",
        ),
        (
            "SELECT date_trunc('minute', event_time) AS m, count(*) AS n FROM events GROUP BY 1",
            "not a column",
        ),
        (
            "SELECT a.minute, a.n FROM (SELECT date_trunc('minute', event_time) AS minute, count(*) AS n FROM events GROUP BY 1) a JOIN events e ON e.event_time = a.minute",
            "after its aggregate",
        ),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let job = job(dir.path(), sql, "0s");
        let err = match Transforms::load(&job).await {
            Err(e @ TransformError::Sql { .. }) => e.to_string(),
            Err(e) => panic!("{sql}: unexpected error {e}"),
            Ok(_) => panic!("{sql}: accepted"),
        };
        assert!(err.contains(says), "{sql}: {err}");
        assert!(
            err.contains("w.sql") && err.contains("emit = \"window\""),
            "{err}"
        );
    }
}

#[tokio::test]
async fn state_survives_an_ipc_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let job = job(dir.path(), SQL, "0s");
    let all = sample();
    let (first, second) = all.split_at(250);
    let expected = {
        let t = Transforms::load(&job).await.unwrap();
        let mut rows = t.step(events(&job, first), false).await.unwrap().outputs[0]
            .batches
            .clone();
        rows.extend(
            t.step(events(&job, second), true).await.unwrap().outputs[0]
                .batches
                .clone(),
        );
        text(&rows)
    };
    // A restart between the two batches: the state read back from its IPC bytes.
    let t = Transforms::load(&job).await.unwrap();
    let step = t.step(events(&job, first), false).await.unwrap();
    let mut rows = step.outputs[0].batches.clone();
    let mut state = step.windows["w"].clone();
    state.open = state
        .open
        .map(|b| super::decode_state(&super::encode_state(&b).unwrap()).unwrap());
    let t = Transforms::load(&job).await.unwrap();
    t.restore("w", state);
    rows.extend(
        t.step(events(&job, second), true).await.unwrap().outputs[0]
            .batches
            .clone(),
    );
    assert_eq!(text(&rows), expected);
}

#[tokio::test]
async fn a_join_after_the_aggregate_runs_on_finished_windows() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "SELECT a.minute, p.name, a.n FROM (SELECT date_trunc('minute', event_time) AS minute, \
        product_id, count(*) AS n FROM events GROUP BY 1, 2) a \
        JOIN products p ON p.product_id = a.product_id WHERE a.n > 1";
    let job = job(dir.path(), sql, "0s");
    let all = sample();
    let expected = {
        let t = Transforms::load(&job).await.unwrap();
        text(&t.run(events(&job, &all)).await.unwrap()[0].batches)
    };
    let t = Transforms::load(&job).await.unwrap();
    let mut got = Vec::new();
    let chunks: Vec<_> = all.chunks(61).collect();
    for (i, chunk) in chunks.iter().enumerate() {
        let step = t
            .step(events(&job, chunk), i + 1 == chunks.len())
            .await
            .unwrap();
        got.extend(step.outputs[0].batches.iter().cloned());
    }
    assert!(expected.len() >= 10);
    assert_eq!(text(&got), expected);
}

/// Every aggregate kind, kept per key, with a HAVING that drops keys and a join after the
/// aggregate.
const UPDATE_SQL: &str = "SELECT a.product_id, p.name, a.n, a.users, a.approx_users, a.mean, a.sd, \
    a.first_user, a.median, a.ratio FROM ( \
    SELECT e.product_id, count(*) AS n, count(DISTINCT e.user_id) AS users, \
    approx_distinct(e.user_id) AS approx_users, avg(e.product_id) AS mean, \
    stddev(CAST(e.event_time AS BIGINT) % 1000) AS sd, min(e.user_id) AS first_user, \
    approx_percentile_cont(0.5) WITHIN GROUP (ORDER BY CAST(e.event_time AS BIGINT) % 1000) AS median, \
    CAST(sum(e.product_id) AS DOUBLE) / count(*) AS ratio \
    FROM events e GROUP BY e.product_id HAVING count(*) < 120 OR e.product_id = 2) a \
    JOIN products p ON p.product_id = a.product_id";

/// The table an update output's steps leave: each step's rows replace their keys' rows, its
/// deleted keys' rows go (a key with no row may be deleted again: it stays without one). Returns
/// the rows deleted.
fn apply(
    table: &mut std::collections::BTreeMap<String, String>,
    step: &crate::transform::Step,
) -> usize {
    let out = &step.outputs[0];
    let update = out.update.as_ref().expect("an update output");
    assert_eq!(update.keys, ["product_id"]);
    let mut deleted = 0;
    if let Some(gone) = &update.deleted {
        for k in text(std::slice::from_ref(gone)) {
            let key = k.trim_matches('|').trim().to_string();
            deleted += usize::from(table.remove(&key).is_some());
        }
    }
    for row in text(&out.batches) {
        let key = row
            .trim_matches('|')
            .split('|')
            .next()
            .unwrap()
            .trim()
            .to_string();
        table.insert(key, row);
    }
    deleted
}

#[tokio::test]
async fn update_outputs_kept_across_batches_equal_one_aggregate_over_all() {
    let dir = tempfile::tempdir().unwrap();
    let job = job_emitting(dir.path(), UPDATE_SQL, "emit = \"update\"");
    let all = sample();
    let expected = {
        let t = Transforms::load(&job).await.unwrap();
        text(&t.run(events(&job, &all)).await.unwrap()[0].batches)
    };
    // Products 1 and 3 pass 120 events and are dropped; 2 stays.
    assert_eq!(expected.len(), 1, "{expected:?}");
    let t = Transforms::load(&job).await.unwrap();
    let mut table = std::collections::BTreeMap::new();
    let mut deleted = 0;
    for chunk in all.chunks(37) {
        let step = t.step(events(&job, chunk), false).await.unwrap();
        deleted += apply(&mut table, &step);
        assert_eq!(step.windows["w"].groups(), 3, "every key's state is kept");
    }
    assert_eq!(deleted, 2, "products 1 and 3 were deleted once each");
    let got: Vec<String> = table.into_values().collect();
    assert_same_rows(&got, &expected);

    // A restart between batches: the state read back from its IPC bytes goes on the same.
    let (first, second) = all.split_at(250);
    let t = Transforms::load(&job).await.unwrap();
    let mut table = std::collections::BTreeMap::new();
    let step = t.step(events(&job, first), false).await.unwrap();
    apply(&mut table, &step);
    let mut state = step.windows["w"].clone();
    state.open = state
        .open
        .map(|b| super::decode_state(&super::encode_state(&b).unwrap()).unwrap());
    let t = Transforms::load(&job).await.unwrap();
    t.restore("w", state);
    apply(
        &mut table,
        &t.step(events(&job, second), false).await.unwrap(),
    );
    assert_same_rows(&table.into_values().collect::<Vec<_>>(), &expected);
}

/// Rows of [`UPDATE_SQL`] equal, but for the median: a t-digest merged from per-batch digests
/// is within a few percent of one built over all rows, not equal to it.
fn assert_same_rows(got: &[String], want: &[String]) {
    const MEDIAN: usize = 9;
    let split = |rows: &[String]| -> Vec<(String, f64)> {
        rows.iter()
            .map(|r| {
                let mut cells: Vec<&str> = r.split('|').map(str::trim).collect();
                let median = cells.remove(MEDIAN).parse().unwrap();
                (cells.join("|"), median)
            })
            .collect()
    };
    let (got, want) = (split(got), split(want));
    assert_eq!(got.len(), want.len(), "{got:?} vs {want:?}");
    for ((g, gm), (w, wm)) in got.iter().zip(&want) {
        assert_eq!(g, w);
        assert!((gm - wm).abs() <= 0.03 * wm.abs(), "median {gm} vs {wm}");
    }
}

#[tokio::test]
async fn update_queries_that_cannot_be_kept_are_refused_with_the_fix() {
    for (sql, says) in [
        ("SELECT product_id FROM events", "no aggregate"),
        (
            "SELECT count(*) AS n FROM events GROUP BY product_id",
            "the GROUP BY key events.product_id is not one of its columns",
        ),
        (
            "SELECT product_id, count(*) AS n FROM events GROUP BY 1 ORDER BY n DESC LIMIT 3",
            "LIMIT",
        ),
        (
            "SELECT product_id, rank() OVER (ORDER BY count(*)) AS r FROM events GROUP BY 1",
            "window functions",
        ),
        ("SELECT DISTINCT product_id FROM events", "SELECT DISTINCT"),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let job = job_emitting(dir.path(), sql, "emit = \"update\"");
        let err = match Transforms::load(&job).await {
            Err(e @ TransformError::Sql { .. }) => e.to_string(),
            Err(e) => panic!("{sql}: unexpected error {e}"),
            Ok(_) => panic!("{sql}: accepted"),
        };
        assert!(err.contains(says), "{sql}: {err}");
        assert!(
            err.contains("w.sql") && err.contains("emit = \"update\""),
            "{err}"
        );
    }
}

#[tokio::test]
async fn an_update_output_that_repeats_a_key_fails_the_batch_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let sql = "SELECT a.product_id, p.name, a.n FROM (SELECT product_id, count(*) AS n FROM events \
        GROUP BY product_id) a JOIN products p ON p.product_id >= a.product_id";
    let job = job_emitting(dir.path(), sql, "emit = \"update\"");
    let t = Transforms::load(&job).await.unwrap();
    let err = match t.step(events(&job, &sample()[..20]), false).await {
        Err(e) => e.to_string(),
        Ok(_) => panic!("two rows for one key were accepted"),
    };
    assert!(
        err.contains("w.sql") && err.contains("gave two for") && err.contains("product_id"),
        "{err}"
    );
}
