//! Bad job files and bad SQL fail before any data moves, naming the file, the key or line, and
//! the fix.

use crate::common::*;

fn fails(p: &Project, cmd: &str) -> String {
    let out = run(weir().arg(cmd).arg(p.job()), false);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        !p.lake().join(STATE).exists(),
        "data moved despite the error"
    );
    stderr(&out)
}

#[test]
fn job_file_errors_name_file_key_and_fix() {
    let p = Project::ecommerce(10, 1, "max_records = 10");
    let job = std::fs::read_to_string(p.job()).unwrap();

    std::fs::write(
        p.job(),
        job.replace(
            "partition_by = [\"dt\"]\ntarget",
            "partiton_by = [\"dt\"]\ntarget",
        ),
    )
    .unwrap();
    let err = fails(&p, "run");
    assert!(err.contains("ecommerce.toml"), "{err}");
    assert!(err.contains("line "), "{err}");
    assert!(err.contains("did you mean \"partition_by\""), "{err}");

    std::fs::write(p.job(), job.replace("\"decimal(10,2)\"", "\"money\"")).unwrap();
    let err = fails(&p, "validate");
    assert!(
        err.contains("input.schema.price: unknown type \"money\""),
        "{err}"
    );

    std::fs::write(p.job(), job.replace("data/products.csv", "data/nope.csv")).unwrap();
    let err = fails(&p, "run");
    assert!(err.contains("tables.products.path"), "{err}");
    assert!(err.contains("does not exist"), "{err}");

    std::fs::write(
        p.job(),
        job.replace("max_records = 10", "max_records = 10\nmax_age = \"soon\""),
    )
    .unwrap();
    let err = fails(&p, "run");
    assert!(err.contains("batch.max_age"), "{err}");

    std::fs::write(p.job(), &job).unwrap();
    let out = run(
        weir().arg("run").arg(p.job()).args(["--target", "prod"]),
        false,
    );
    assert!(
        stderr(&out).contains("defined targets: local"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn sql_errors_name_file_line_and_refuse_writes() {
    let p = Project::ecommerce(10, 1, "max_records = 10");
    let sales = std::fs::read_to_string(p.root().join("sql/ecommerce/sales.sql")).unwrap();

    p.write(
        "sql/ecommerce/sales.sql",
        &sales.replace("    quantity,\n", "    quantiy,\n"),
    );
    let err = fails(&p, "run");
    assert!(err.contains("sales.sql:8:5"), "{err}");
    assert!(err.contains("quantiy"), "{err}");

    p.write(
        "sql/ecommerce/sales.sql",
        "SELECT event_id FROM events WHERE",
    );
    let err = fails(&p, "validate");
    assert!(err.contains("sales.sql"), "{err}");

    p.write("sql/ecommerce/sales.sql", "DROP TABLE products");
    let err = fails(&p, "run");
    assert!(
        err.contains("sales.sql: a transform must be a single SELECT"),
        "{err}"
    );

    p.write("sql/ecommerce/sales.sql", "SELECT * FROM orders");
    let err = fails(&p, "run");
    assert!(err.contains("orders"), "{err}");
    assert!(err.contains("hint: transforms can read `events`"), "{err}");

    p.write("sql/ecommerce/sales.sql", &sales);
    let ok = run(weir().arg("validate").arg(p.job()), true);
    let text = stdout(&ok);
    assert!(text.contains(": ok"), "{text}");
    assert!(
        text.contains("sales") && text.contains("partitioned by dt"),
        "{text}"
    );
}

#[test]
fn warehouse_config_and_type_errors_name_the_key_or_column_and_the_fix() {
    let p = Project::ecommerce(10, 1, "max_records = 10");
    let job = std::fs::read_to_string(p.job()).unwrap();
    let with = |extra: &str| {
        std::fs::write(p.job(), format!("{job}{extra}\n")).unwrap();
    };

    with("postgres = { url = \"postgres://loader:secret@127.0.0.1:5432/shop\" }");
    let err = fails(&p, "validate");
    assert!(err.contains("targets.local.postgres.url"), "{err}");
    assert!(err.contains("PGPASSWORD"), "{err}");

    with(
        "redshift = { url = \"postgres://loader@rs:5439/shop\", iam_role = \"arn:aws:iam::1:role/r\" }",
    );
    let err = fails(&p, "run");
    assert!(err.contains("targets.local.redshift"), "{err}");
    assert!(err.contains("s3://"), "{err}");

    with("bigquery = { project = \"p\", dataset = \"d\", auth = \"magic\" }");
    let err = fails(&p, "validate");
    assert!(err.contains("targets.local.bigquery.auth"), "{err}");

    with("glue = { datbase = \"shop\" }");
    let err = fails(&p, "validate");
    assert!(err.contains("did you mean \"database\""), "{err}");

    // An output type no warehouse holds faithfully: refused at validate and before a run moves data.
    with("postgres = { url = \"postgres://loader@127.0.0.1:5432/shop\" }");
    p.write(
        "sql/ecommerce/odd.sql",
        "-- unsigned counts\nSELECT CAST(count(*) AS INT UNSIGNED) AS n FROM events",
    );
    for cmd in ["validate", "run"] {
        let err = fails(&p, cmd);
        assert!(err.contains("odd.sql"), "{err}");
        assert!(err.contains("column n"), "{err}");
        assert!(err.contains("PostgreSQL"), "{err}");
        assert!(err.contains("CAST it to BIGINT"), "{err}");
    }
}

#[test]
fn record_limits_load_retries_and_an_open_metrics_address_are_checked() {
    let p = Project::ecommerce(10, 1, "max_records = 10");
    let job = std::fs::read_to_string(p.job()).unwrap();

    std::fs::write(
        p.job(),
        job.replace(
            "max_record_bytes = \"256KiB\"",
            "max_record_bytes = \"5GiB\"",
        ),
    )
    .unwrap();
    let err = fails(&p, "run");
    assert!(err.contains("input.max_record_bytes"), "{err}");
    assert!(err.contains("64MiB"), "{err}");

    std::fs::write(
        p.job(),
        job.replace(
            "lake = \"lake\"",
            "lake = \"lake\"\nloads = { attempts = 0 }",
        ),
    )
    .unwrap();
    let err = fails(&p, "run");
    assert!(err.contains("targets.local.loads.attempts"), "{err}");

    std::fs::write(
        p.job(),
        job.replace(
            "lake = \"lake\"",
            "lake = \"lake\"\nloads = { backoff = \"soon\" }",
        ),
    )
    .unwrap();
    let err = fails(&p, "run");
    assert!(err.contains("targets.local.loads.backoff"), "{err}");

    // /metrics on every interface: the run goes on, with a warning.
    std::fs::write(p.job(), &job).unwrap();
    let out = run(
        weir()
            .arg("run")
            .arg(p.job())
            .args(["--quiet", "--metrics", "0.0.0.0:0"]),
        true,
    );
    assert!(
        stderr(&out).contains("open to the network without authentication"),
        "{}",
        stderr(&out)
    );
}
