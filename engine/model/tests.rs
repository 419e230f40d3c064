//! Scoring mechanics on the sample job's committed models (their values against onnxruntime are
//! checked by the integration tests).

use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BooleanArray, Float32Array, Int32Array, RecordBatch, StringArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;
use prost::Message;

use super::*;

fn sample(name: &str) -> ModelSpec {
    ModelSpec {
        name: name.to_string(),
        path: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("models/{name}.onnx")),
        output: None,
        index: 0,
    }
}

fn features(rows: usize) -> Vec<ArrayRef> {
    let col = |f: &dyn Fn(usize) -> f32| -> ArrayRef {
        Arc::new(Float32Array::from_iter_values((0..rows).map(f)))
    };
    vec![
        col(&|i| 5.0 + (i % 37) as f32 * 7.5),
        col(&|i| 1.0 + (i % 3) as f32),
        col(&|i| (i % 24) as f32),
        col(&|i| (i % 2) as f32),
    ]
}

#[test]
fn chunks_nulls_and_empty_batches() {
    let whole = Model::load("job.toml", &sample("cart_propensity")).unwrap();
    let chunked = Model::load_with_chunk("job.toml", &sample("cart_propensity"), 7).unwrap();
    assert_eq!(whole.features, 4);
    let rows = features(100);
    let a = whole.score(&rows).unwrap();
    let b = chunked.score(&rows).unwrap();
    assert_eq!(a, b, "scores do not depend on the chunk size");
    assert!(a.values().iter().all(|p| (0.0..=1.0).contains(p)));
    assert_eq!(a.null_count(), 0);

    let mut with_null = rows.clone();
    with_null[1] = Arc::new(Float32Array::from_iter(
        (0..100).map(|i| (i != 42).then_some(1.0 + (i % 3) as f32)),
    ));
    let c = chunked.score(&with_null).unwrap();
    assert!(c.is_null(42) && c.null_count() == 1);
    assert_eq!(c.value(41), a.value(41));

    let empty = whole.score(&features(0)).unwrap();
    assert_eq!(empty.len(), 0);
}

fn refusal(spec: &ModelSpec) -> String {
    Model::load("jobs/shop.toml", spec).unwrap_err().to_string()
}

#[test]
fn refusals_name_the_model_and_the_fix() {
    let mut spec = sample("demand_forecast");
    spec.output = Some("probabilities".into());
    let e = refusal(&spec);
    assert!(
        e.contains("jobs/shop.toml: models.demand_forecast")
            && e.contains("output = \"probabilities\" is not an output")
            && e.contains("variable"),
        "{e}"
    );

    let mut spec = sample("demand_forecast");
    spec.index = 3;
    let e = refusal(&spec);
    assert!(
        e.contains("index = 3 but output variable has 1 column"),
        "{e}"
    );

    // An operator tract lacks and Weir does not add.
    let dir = tempfile::tempdir().unwrap();
    let mut proto = tract_onnx::pb::ModelProto::decode(
        std::fs::read(&sample("demand_forecast").path)
            .unwrap()
            .as_slice(),
    )
    .unwrap();
    for node in &mut proto.graph.as_mut().unwrap().node {
        if node.op_type == "TreeEnsembleRegressor" {
            node.op_type = "LabelEncoder".into();
        }
    }
    let bad = dir.path().join("bad.onnx");
    std::fs::write(&bad, proto.encode_to_vec()).unwrap();
    let e = refusal(&ModelSpec {
        path: bad,
        ..sample("demand_forecast")
    });
    assert!(
        e.contains("operator LabelEncoder (ai.onnx.ml) not supported")
            && e.contains("README lists what is supported"),
        "{e}"
    );

    let garbage = dir.path().join("garbage.onnx");
    std::fs::write(&garbage, b"not a model at all").unwrap();
    let e = refusal(&ModelSpec {
        path: garbage,
        ..sample("demand_forecast")
    });
    assert!(e.contains("not an ONNX model"), "{e}");
}

#[tokio::test]
async fn sql_calls_cast_their_arguments_and_are_checked_when_planned() {
    let model = Arc::new(Model::load("job.toml", &sample("cart_propensity")).unwrap());
    let ctx = SessionContext::new();
    register(&ctx, "job.toml", std::slice::from_ref(&model)).unwrap();
    let schema = Arc::new(Schema::new(vec![
        Field::new("price", DataType::Decimal128(10, 2), true),
        Field::new("quantity", DataType::Int32, true),
        Field::new("device", DataType::Utf8, true),
        Field::new("mobile", DataType::Boolean, true),
    ]));
    let batch = RecordBatch::try_new(
        schema.clone(),
        vec![
            Arc::new(
                datafusion::arrow::array::Decimal128Array::from(vec![
                    Some(1999),
                    Some(25000),
                    None,
                ])
                .with_precision_and_scale(10, 2)
                .unwrap(),
            ),
            Arc::new(Int32Array::from(vec![1, 2, 1])),
            Arc::new(StringArray::from(vec!["mobile", "desktop", "mobile"])),
            Arc::new(BooleanArray::from(vec![true, false, true])),
        ],
    )
    .unwrap();
    ctx.register_table(
        "t",
        Arc::new(MemTable::try_new(schema, vec![vec![batch]]).unwrap()),
    )
    .unwrap();
    let out = ctx
        .sql("SELECT cart_propensity(price, quantity, 20, mobile) AS p FROM t")
        .await
        .unwrap()
        .collect()
        .await
        .unwrap();
    let p = out[0]
        .column(0)
        .as_any()
        .downcast_ref::<Float64Array>()
        .unwrap();
    let direct = model
        .score(&[
            Arc::new(Float32Array::from(vec![19.99f32, 250.0, 0.0])),
            Arc::new(Float32Array::from(vec![1f32, 2.0, 1.0])),
            Arc::new(Float32Array::from(vec![20f32, 20.0, 20.0])),
            Arc::new(Float32Array::from(vec![1f32, 0.0, 1.0])),
        ])
        .unwrap();
    assert_eq!((p.value(0), p.value(1)), (direct.value(0), direct.value(1)));
    assert!(p.is_null(2), "a null price gives a null score");

    let err = |sql: &'static str| {
        let ctx = ctx.clone();
        async move { ctx.sql(sql).await.unwrap_err().to_string() }
    };
    let e = err("SELECT cart_propensity(price, quantity, 20) FROM t").await;
    assert!(
        e.contains("cart_propensity takes 4 arguments")
            && e.contains("cart_propensity.onnx")
            && e.contains("this call passes 3"),
        "{e}"
    );
    let e = err("SELECT cart_propensity(price, quantity, 20, device) FROM t").await;
    assert!(e.contains("argument 4 of cart_propensity is Utf8"), "{e}");
}
