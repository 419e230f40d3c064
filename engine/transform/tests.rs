use super::*;

/// A project with the given transforms; returns (tempdir, job).
pub(crate) fn project(files: &[(&str, &str)], outputs: &str) -> (tempfile::TempDir, Job) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("jobs")).unwrap();
    std::fs::create_dir_all(dir.path().join("sql")).unwrap();
    for (name, sql) in files {
        std::fs::write(dir.path().join("sql").join(name), sql).unwrap();
    }
    std::fs::write(
        dir.path().join("products.csv"),
        "product_id,name\n1,mug\n2,tee\n",
    )
    .unwrap();
    let text = format!(
        r#"
name = "t"
transforms = "sql"
[input]
format = "json"
[input.schema]
id = "string not null"
product_id = "int"
amount = "decimal(10,2)"
[tables.products]
path = "products.csv"
{outputs}
[targets.local]
source = {{ kind = "files", path = "in/*.jsonl" }}
lake = "lake"
"#
    );
    let job = Job::parse(&dir.path().join("jobs/t.toml"), &text).unwrap();
    (dir, job)
}

#[tokio::test]
async fn orders_by_reference_and_runs() {
    let (_d, job) = project(
        &[
            (
                "a_totals.sql",
                "SELECT name, sum(amount) AS total FROM b_joined GROUP BY name",
            ),
            (
                "b_joined.sql",
                "SELECT e.id, p.name, e.amount FROM events e JOIN products p ON p.product_id = e.product_id",
            ),
        ],
        "",
    );
    let t = Transforms::load(&job).await.unwrap();
    let names: Vec<_> = t.transforms.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["b_joined", "a_totals"]);
}

#[tokio::test]
async fn refuses_ddl_and_dml() {
    for sql in [
        "CREATE TABLE x AS SELECT 1",
        "COPY (SELECT 1) TO '/tmp/x.csv'",
        "INSERT INTO products VALUES (3, 'x')",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let (_d, job) = project(&[("x.sql", sql)], "");
        let err = Transforms::load(&job).await.err().expect(sql).to_string();
        assert!(err.contains("x.sql"), "{err}");
        assert!(
            err.contains("not allowed") || err.contains("not supported"),
            "{sql}: {err}"
        );
    }
}

#[tokio::test]
async fn typo_names_file_line_and_column() {
    let (_d, job) = project(&[("sales.sql", "SELECT id,\n  amout\nFROM events")], "");
    let err = Transforms::load(&job).await.err().unwrap().to_string();
    assert!(err.contains("sales.sql:2:3"), "{err}");
    assert!(err.contains("amout"), "{err}");
}

#[tokio::test]
async fn cycles_and_bad_partition_columns_are_errors() {
    let (_d, job) = project(
        &[("a.sql", "SELECT * FROM b"), ("b.sql", "SELECT * FROM a")],
        "",
    );
    let err = Transforms::load(&job).await.err().unwrap().to_string();
    assert!(err.contains("cycle"), "{err}");

    let (_d, job) = project(
        &[("sales.sql", "SELECT id FROM events")],
        "[outputs.sales]\npartition_by = [\"dt\"]",
    );
    let err = Transforms::load(&job).await.err().unwrap().to_string();
    assert!(
        err.contains("outputs.sales: partition column \"dt\""),
        "{err}"
    );
}

#[test]
fn function_errors_point_at_the_call() {
    let msg = "Function 'gbr' user-defined coercion failed with: ...";
    let sql =
        "-- gbr(a) in a comment\nSELECT 'café', gbr_x(a), \"gbr\"(b),\n  GBR (a, b) AS s FROM t";
    assert_eq!(super::function_call(msg, sql), Some((3, 3)));
    let sql = "SELECT 'café', gbr(a) FROM t";
    assert_eq!(super::function_call(msg, sql), Some((1, 16)));
    assert_eq!(super::function_call("Function '' failed", sql), None);
    assert_eq!(super::function_call("no function here", sql), None);
}
