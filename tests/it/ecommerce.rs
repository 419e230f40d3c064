//! The sample job end to end: every output read back by DuckDB and compared with DuckDB's own
//! computation over the raw events; re-runs add nothing; `weir query` and `weir test` work.

use crate::common::*;

/// Micro-batches of 4,000 records, two to a commit: several commits, so compaction has work.
const BATCH: &str = "max_records = 4000\nmax_bytes = \"64MiB\"\nmax_age = \"5s\"\ncommit_every = 2";

/// Rows of `a` not in `b`, and of `b` not in `a` (DuckDB), as a list of differing rows.
fn symmetric_difference(a: &str, b: &str) -> Vec<String> {
    duckdb(&format!(
        "(({a}) EXCEPT ALL ({b})) UNION ALL (({b}) EXCEPT ALL ({a}))"
    ))
}

#[test]
fn ecommerce_outputs_match_an_independent_computation() {
    let p = Project::ecommerce(30_000, 3, BATCH);
    gzip(&p.root().join("data/events/part-00001.jsonl"));
    let out = run(&mut p.run_cmd(), true);
    let text = stdout(&out);
    assert!(text.contains("30,000 read, 0 dead letters"), "{text}");
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("batches "))
        .expect("batches in the summary");
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .collect();
    // "batches  5 committed (last 5), of 9 micro-batches"
    let (batches, micro) = (numbers[0], numbers[2]);
    assert!(
        (8..=12).contains(&micro) && batches == micro.div_ceil(2),
        "30,000 events in micro-batches of at most 4,000, two to a batch: {text}"
    );

    let lake = p.lake();
    let raw = raw_events(p.root());

    // Layout: Delta tables in Hive folders; the batches' small files compacted into one per
    // partition at the end (the snapshot lists only it; the merged inputs wait for vacuum).
    let files: Vec<String> = delta_files(&lake, "sales")
        .into_iter()
        .filter(|f| f.starts_with("dt=2025-06-01/"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(
        files[0].starts_with("dt=2025-06-01/ecommerce-c00000000")
            && files[0].ends_with("-000.parquet"),
        "{files:?}"
    );
    assert!(lake.join("sales/_delta_log").is_dir());
    assert!(text.contains("small files merged"), "{text}");
    let dts = duckdb(&format!(
        "SELECT DISTINCT CAST(dt AS VARCHAR) FROM {} ORDER BY 1",
        lake_table(&lake, "sales")
    ));
    assert!(dts.iter().any(|d| d == "2025-06-01"), "{dts:?}");

    // sales: exactly the purchase and refund lines, with signed revenue.
    let sales = symmetric_difference(
        &format!(
            "SELECT event_id, order_id, product_id, kind, quantity, price, revenue, event_time, dt FROM {}",
            lake_table(&lake, "sales")
        ),
        &format!(
            "SELECT event_id, order_id, product_id, event_type, quantity, price,
                    CAST(CASE WHEN event_type = 'refund' THEN -1 ELSE 1 END * quantity * price AS DECIMAL(12,2)),
                    event_time, CAST(event_time AS DATE)
             FROM {raw} WHERE event_type IN ('purchase', 'refund')"
        ),
    );
    assert!(sales.is_empty(), "sales differ: {sales:?}");
    let n = duckdb(&format!(
        "SELECT count(*) FROM {}",
        lake_table(&lake, "sales")
    ));
    assert!(
        n[0].parse::<u64>().unwrap() > 500,
        "too few sales rows: {n:?}"
    );

    // funnel, a window output: one row per product and minute, equal to the whole-input counts.
    let funnel = symmetric_difference(
        &format!(
            "SELECT product_id, minute, sum(views), sum(carts), sum(purchases), sum(revenue)
             FROM {} GROUP BY ALL",
            lake_table(&lake, "funnel")
        ),
        &format!(
            "SELECT product_id, date_trunc('minute', event_time),
                    count(*) FILTER (WHERE event_type = 'view'),
                    count(*) FILTER (WHERE event_type = 'add_to_cart'),
                    count(*) FILTER (WHERE event_type = 'purchase'),
                    CAST(coalesce(sum(quantity * price) FILTER (WHERE event_type = 'purchase'), 0) AS DECIMAL(12,2))
             FROM {raw} WHERE event_type IN ('view', 'add_to_cart', 'purchase') GROUP BY ALL"
        ),
    );
    assert!(funnel.is_empty(), "funnel differs: {funnel:?}");
    let twice = duckdb(&format!(
        "SELECT count(*) FROM (SELECT product_id, minute FROM {} GROUP BY ALL HAVING count(*) > 1)",
        lake_table(&lake, "funnel")
    ));
    assert_eq!(twice, ["0"], "a product and minute written twice");

    // revenue, a window output: one row per minute, equal to the whole-input sums.
    let revenue = symmetric_difference(
        &format!(
            "SELECT minute, orders, refunds, units, revenue FROM {}",
            lake_table(&lake, "revenue")
        ),
        &format!(
            "SELECT date_trunc('minute', event_time),
                    count(*) FILTER (WHERE event_type = 'purchase'),
                    count(*) FILTER (WHERE event_type = 'refund'),
                    sum(CASE WHEN event_type = 'refund' THEN -quantity ELSE quantity END),
                    CAST(sum(CASE WHEN event_type = 'refund' THEN -quantity * price ELSE quantity * price END) AS DECIMAL(14,2))
             FROM {raw} WHERE event_type IN ('purchase', 'refund') GROUP BY ALL"
        ),
    );
    assert!(revenue.is_empty(), "revenue differs: {revenue:?}");

    // stock, an update output: one row per product over every event, never negative.
    let products = format!("read_csv('{}/data/products.csv')", p.root().display());
    let stock = symmetric_difference(
        &format!(
            "SELECT product_id, name, units_sold, units_restocked, stock_left, low_stock, last_movement FROM {}",
            lake_table(&lake, "stock")
        ),
        &format!(
            "SELECT product_id, p.name, sold, restocked, p.stock_on_hand + restocked - sold,
                    p.stock_on_hand + restocked - sold < 10, last
             FROM (SELECT product_id,
                          coalesce(sum(CASE event_type WHEN 'purchase' THEN quantity WHEN 'refund' THEN -quantity END), 0) AS sold,
                          coalesce(sum(quantity) FILTER (WHERE event_type = 'restock'), 0) AS restocked,
                          max(event_time) AS last
                   FROM {raw} WHERE event_type IN ('purchase', 'refund', 'restock') GROUP BY ALL)
             JOIN {products} p USING (product_id)"
        ),
    );
    assert!(stock.is_empty(), "stock differs: {stock:?}");
    let negative = duckdb(&format!(
        "SELECT count(*) FROM {} WHERE stock_left < 0",
        lake_table(&lake, "stock")
    ));
    assert_eq!(negative, ["0"], "negative stock");

    // A second run finds nothing new and writes nothing.
    let again = stdout(&run(&mut p.run_cmd(), true));
    assert!(again.contains("nothing new to read"), "{again}");
    let n2 = duckdb(&format!(
        "SELECT count(*) FROM {}",
        lake_table(&lake, "sales")
    ));
    assert_eq!(n, n2);

    // weir query over the same lake.
    let q = run(
        weir().args(["query", "--lake"]).arg(&lake).args([
            "--format",
            "csv",
            "SELECT count(*) AS n FROM sales",
        ]),
        true,
    );
    assert_eq!(stdout(&q), format!("n\n{}\n", n[0]));
}

#[test]
fn golden_tests_pass_and_a_changed_transform_shows_a_diff() {
    let ok = run(
        weir()
            .current_dir(repo())
            .args(["test", "jobs/ecommerce.toml"]),
        true,
    );
    let text = stdout(&ok);
    assert!(text.contains("ok   sales"), "{text}");
    assert!(text.contains("0 failed"), "{text}");

    // The same job with a changed transform fails with a diff.
    let p = Project::ecommerce(10, 1, BATCH);
    copy_golden(p.root());
    std::fs::write(
        p.root().join("data/products.csv"),
        std::fs::read(repo().join("data/products.csv")).unwrap(),
    )
    .unwrap();
    let sql = std::fs::read_to_string(p.root().join("sql/ecommerce/sales.sql")).unwrap();
    p.write(
        "sql/ecommerce/sales.sql",
        &sql.replace("-1 ELSE 1", "-2 ELSE 1"),
    );
    let bad = run(weir().arg("test").arg(p.job()), false);
    let text = stdout(&bad);
    assert!(text.contains("FAIL sales"), "{text}");
    assert!(text.contains("@@"), "no diff shown: {text}");
}

/// Replaces `path` by `path.gz`.
fn gzip(path: &std::path::Path) {
    use std::io::Write;
    let data = std::fs::read(path).unwrap();
    let out = std::fs::File::create(format!("{}.gz", path.display())).unwrap();
    let mut gz = flate2::write::GzEncoder::new(out, flate2::Compression::default());
    gz.write_all(&data).unwrap();
    gz.finish().unwrap();
    std::fs::remove_file(path).unwrap();
}

fn copy_golden(root: &std::path::Path) {
    let to = root.join("tests/golden/ecommerce");
    std::fs::create_dir_all(&to).unwrap();
    for e in std::fs::read_dir(repo().join("tests/golden/ecommerce")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
