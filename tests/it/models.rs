//! Models in SQL: Weir's scores equal onnxruntime's for scikit-learn pipelines the test trains and
//! exports itself and for the sample job's committed TensorFlow and scikit-learn models, and
//! every refusal of `weir validate` names the key or SQL line, the model file and the fix.

use std::collections::BTreeMap;

use crate::common::*;

const JOB: &str = r#"
name = "scores"
transforms = "sql"

[input]
format = "json"

[input.schema]
id = "bigint not null"
a = "decimal(10,2)"
b = "int"
c = "double"
d = "boolean"

[batch]
max_records = 20000

[models.logreg]
path = "models/logreg.onnx"
output = "output_probability"
index = 1

[models.mlp]
path = "models/mlp.onnx"
output = "output_probability"
index = 1

[models.gbr]
path = "models/gbr.onnx"

[models.gbc]
path = "models/gbc.onnx"
output = "output_probability"
index = 1

[models.forest]
path = "models/forest.onnx"
output = "output_probability"
index = 2

[models.forest2]
path = "models/forest2.onnx"
output = "output_probability"
index = 1

[models.rfr]
path = "models/rfr.onnx"

[models.minmax]
path = "models/minmax.onnx"

[models.cart_propensity]
path = "REPO/models/cart_propensity.onnx"

[models.demand_forecast]
path = "REPO/models/demand_forecast.onnx"

[targets.local]
source = { kind = "files", path = "data/rows.jsonl" }
lake = "lake"
"#;

const SQL: &str = "SELECT id,
    logreg(a, b, c, d) AS logreg,
    mlp(a, b, c, d) AS mlp,
    gbr(a, b, c, d) AS gbr,
    gbc(a, b, c, d) AS gbc,
    forest(a, b, c, d) AS forest,
    forest2(a, b, c, d) AS forest2,
    rfr(a, b, c, d) AS rfr,
    minmax(a, b, c, d) AS minmax,
    cart_propensity(a, b, floor(c), d) AS propensity,
    demand_forecast(b, floor(c), a) AS demand
FROM events
";

/// A project with the oracle's models, rows and expected scores.
fn project() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let oracle = repo().join("tests/it/models_oracle.py");
    let out = std::process::Command::new(python_path())
        .arg(&oracle)
        .arg(root)
        .arg(repo())
        .output()
        .unwrap();
    assert!(out.status.success(), "oracle: {}", stderr(&out));
    std::fs::create_dir_all(root.join("jobs")).unwrap();
    std::fs::create_dir_all(root.join("sql")).unwrap();
    let job = JOB.replace("REPO", &repo().display().to_string());
    std::fs::write(root.join("jobs/scores.toml"), job).unwrap();
    std::fs::write(root.join("sql/scores.sql"), SQL).unwrap();
    dir
}

fn parse(v: &str) -> Option<f64> {
    (!v.is_empty()).then(|| v.parse().unwrap())
}

#[test]
fn scores_equal_onnxruntime() {
    let dir = project();
    let root = dir.path();
    run(
        weir()
            .arg("run")
            .arg(root.join("jobs/scores.toml"))
            .arg("--quiet"),
        true,
    );
    let lake = root.join("lake");
    let expected = std::fs::read_to_string(root.join("expected.csv")).unwrap();
    let mut lines = expected.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').skip(1).collect();
    let expected: BTreeMap<u64, Vec<Option<f64>>> = lines
        .map(|l| {
            let mut f = l.split(',');
            let id = f.next().unwrap().parse().unwrap();
            (id, f.map(parse).collect())
        })
        .collect();
    let got = duckdb(&format!(
        "SELECT id, {} FROM {} ORDER BY id",
        header.join(", "),
        lake_table(&lake, "scores")
    ));
    assert_eq!(got.len(), 20_000);
    let names = &header;
    let mut worst = vec![0f64; names.len()];
    let mut nulls = vec![0usize; names.len()];
    for line in &got {
        let mut f = line.split(',');
        let id: u64 = f.next().unwrap().parse().unwrap();
        let want = &expected[&id];
        for (i, v) in f.enumerate() {
            match (parse(v), want[i]) {
                (None, None) => nulls[i] += 1,
                (Some(w), Some(o)) => {
                    let err = (w - o).abs() / o.abs().max(1.0);
                    worst[i] = worst[i].max(err);
                    assert!(
                        err <= 1e-5,
                        "{} of row {id}: weir {w}, onnxruntime {o}",
                        names[i]
                    );
                }
                (w, o) => panic!("{} of row {id}: weir {w:?}, onnxruntime {o:?}", names[i]),
            }
        }
    }
    eprintln!("largest relative differences {names:?}: {worst:?}; nulls {nulls:?}");
    assert!(nulls.iter().all(|&n| n > 100), "nulls: {nulls:?}");
    // The probabilities are probabilities, and they vary.
    let spread = duckdb(&format!(
        "SELECT min(logreg) < 0.2 AND max(logreg) > 0.8 AND min(mlp) < 0.2 AND max(mlp) > 0.8 FROM {}",
        lake_table(&lake, "scores")
    ));
    assert_eq!(spread, ["True"]);
}

/// `weir validate` output for a variant of the job (its error, the run must fail).
fn refused(root: &std::path::Path, job: &str, sql: &str) -> String {
    let job_file = root.join("jobs/bad.toml");
    std::fs::write(
        &job_file,
        job.replace("REPO", &repo().display().to_string()),
    )
    .unwrap();
    std::fs::write(root.join("sql/scores.sql"), sql).unwrap();
    let out = run(weir().arg("validate").arg(&job_file), false);
    let run_out = run(weir().arg("run").arg(&job_file).arg("--quiet"), false);
    assert!(!root.join("lake/scores").exists(), "no data moves");
    let first = stderr(&out).lines().next().unwrap_or_default().to_string();
    assert!(stderr(&run_out).contains(&first), "{}", stderr(&run_out));
    stderr(&out)
}

#[test]
fn validate_refuses_bad_models_and_calls() {
    let dir = project();
    let root = dir.path();
    let with = |key: &str, body: &str| replace_section(JOB, key, body);

    let e = refused(
        root,
        &with("[models.gbr]", "path = \"models/missing.onnx\""),
        SQL,
    );
    assert!(
        e.contains("models.gbr.path") && e.contains("missing.onnx does not exist"),
        "{e}"
    );

    let e = refused(
        root,
        &with("[models.gbr]", "path = \"models/label_encoder.onnx\""),
        SQL,
    );
    assert!(
        e.contains("models.gbr")
            && e.contains("label_encoder.onnx")
            && e.contains("operator LabelEncoder (ai.onnx.ml) not supported"),
        "{e}"
    );

    let e = refused(
        root,
        &with("[models.gbr]", "path = \"models/two_inputs.onnx\""),
        SQL,
    );
    assert!(
        e.contains("two_inputs.onnx") && e.contains("the model has 2 inputs (a, b)"),
        "{e}"
    );

    let e = refused(
        root,
        &with(
            "[models.logreg]",
            "path = \"models/logreg.onnx\"\noutput = \"probabilities\"",
        ),
        SQL,
    );
    assert!(
        e.contains("models.logreg")
            && e.contains("output = \"probabilities\" is not an output of the model")
            && e.contains("output_label, output_probability"),
        "{e}"
    );

    let e = refused(
        root,
        &with(
            "[models.logreg]",
            "path = \"models/logreg.onnx\"\noutput = \"output_probability\"\nindex = 2",
        ),
        SQL,
    );
    assert!(
        e.contains("index = 2 but output output_probability has 2 columns"),
        "{e}"
    );

    let e = refused(root, JOB, "SELECT id,\n  gbr(a, b, c) AS gbr\nFROM events");
    assert!(
        e.contains("scores.sql:2:3")
            && e.contains("gbr takes 4 arguments")
            && e.contains("gbr.onnx")
            && e.contains("this call passes 3"),
        "{e}"
    );

    let e = refused(
        root,
        JOB,
        "SELECT id, gbr(a, b, c, CAST(id AS VARCHAR)) AS gbr FROM events",
    );
    assert!(
        e.contains("scores.sql:1:12") && e.contains("argument 4 of gbr is Utf8"),
        "{e}"
    );

    let e = refused(
        root,
        &with("[models.gbr]", "path = \"models/gbr.onnx\"\nfile = \"x\""),
        SQL,
    );
    assert!(e.contains("unknown field `file`"), "{e}");
}
