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
    // A whole chunk runs on tract's plan for that size: the same scores to float rounding.
    for (x, y) in a.values().iter().zip(b.values()) {
        assert!((x - y).abs() <= 1e-6 * x.abs().max(1.0), "{x} against {y}");
    }
    assert!(a.values().iter().all(|p| (0.0..=1.0).contains(p)));
    assert_eq!(a.null_count(), 0);

    let mut with_null = rows.clone();
    with_null[1] = Arc::new(Float32Array::from_iter(
        (0..100).map(|i| (i != 42).then_some(1.0 + (i % 3) as f32)),
    ));
    let c = chunked.score(&with_null).unwrap();
    assert!(c.is_null(42) && c.null_count() == 1);
    assert_eq!(c.value(41), b.value(41));

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

/// A TreeEnsembleRegressor model over two features, built by hand: tree 0 has node ids 5, 6, 7
/// (root 5: feature 0 <= 1, NaN goes true; leaves 10 and 20), tree 1 node ids 0, 1, 2 (root 0:
/// feature 1 > 0.5; leaves 1 and 3).
fn forest_model(
    dir: &std::path::Path,
    aggregate: &str,
    base: Option<f32>,
    modes: [&str; 6],
) -> ModelSpec {
    use tract_onnx::pb::{
        AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorShapeProto,
        TypeProto, ValueInfoProto, tensor_shape_proto, type_proto,
    };
    let ints = |name: &str, v: &[i64]| AttributeProto {
        name: name.into(),
        r#type: 7,
        ints: v.to_vec(),
        ..Default::default()
    };
    let floats = |name: &str, v: &[f32]| AttributeProto {
        name: name.into(),
        r#type: 6,
        floats: v.to_vec(),
        ..Default::default()
    };
    let tensor = |name: &str, dims: Vec<tensor_shape_proto::dimension::Value>| ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor {
                elem_type: 1,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .into_iter()
                        .map(|d| tensor_shape_proto::Dimension {
                            value: Some(d),
                            ..Default::default()
                        })
                        .collect(),
                }),
            })),
            ..Default::default()
        }),
        ..Default::default()
    };
    use tensor_shape_proto::dimension::Value::{DimParam, DimValue};
    let mut attributes = vec![
        ints("nodes_treeids", &[0, 0, 0, 1, 1, 1]),
        ints("nodes_nodeids", &[6, 5, 7, 0, 1, 2]),
        ints("nodes_featureids", &[0, 0, 0, 1, 0, 0]),
        floats("nodes_values", &[0.0, 1.0, 0.0, 0.5, 0.0, 0.0]),
        ints("nodes_truenodeids", &[0, 6, 0, 1, 0, 0]),
        ints("nodes_falsenodeids", &[0, 7, 0, 2, 0, 0]),
        ints("nodes_missing_value_tracks_true", &[0, 1, 0, 0, 0, 0]),
        AttributeProto {
            name: "nodes_modes".into(),
            r#type: 8,
            strings: modes.iter().map(|m| m.as_bytes().to_vec()).collect(),
            ..Default::default()
        },
        ints("target_treeids", &[0, 0, 1, 1]),
        ints("target_nodeids", &[6, 7, 1, 2]),
        ints("target_ids", &[0, 0, 0, 0]),
        floats("target_weights", &[10.0, 20.0, 1.0, 3.0]),
        AttributeProto {
            name: "aggregate_function".into(),
            r#type: 3,
            s: aggregate.as_bytes().to_vec(),
            ..Default::default()
        },
    ];
    if let Some(b) = base {
        attributes.push(floats("base_values", &[b]));
    }
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![
            OperatorSetIdProto {
                domain: String::new(),
                version: 15,
            },
            OperatorSetIdProto {
                domain: "ai.onnx.ml".into(),
                version: 3,
            },
        ],
        graph: Some(GraphProto {
            name: "forest".into(),
            node: vec![NodeProto {
                input: vec!["x".into()],
                output: vec!["y".into()],
                op_type: "TreeEnsembleRegressor".into(),
                domain: "ai.onnx.ml".into(),
                attribute: attributes,
                ..Default::default()
            }],
            input: vec![tensor("x", vec![DimParam("N".into()), DimValue(2)])],
            output: vec![tensor("y", vec![DimParam("N".into()), DimValue(1)])],
            ..Default::default()
        }),
        ..Default::default()
    };
    let path = dir.join(format!("forest-{aggregate}-{}.onnx", modes[3]));
    std::fs::write(&path, model.encode_to_vec()).unwrap();
    ModelSpec {
        name: "forest".into(),
        path,
        output: None,
        index: 0,
    }
}

#[test]
fn hand_built_forests_follow_the_spec() {
    let dir = tempfile::tempdir().unwrap();
    let leaf = "LEAF";
    let modes = [leaf, "BRANCH_LEQ", leaf, "BRANCH_GT", leaf, leaf];
    let rows: Vec<ArrayRef> = vec![
        Arc::new(Float32Array::from(vec![0.5, 2.0, f32::NAN, 1.0])),
        Arc::new(Float32Array::from(vec![1.0, 0.0, 0.0, 0.5])),
    ];
    let scores = |aggregate: &str, base: Option<f32>, modes: [&str; 6]| -> Vec<f64> {
        Model::load(
            "job.toml",
            &forest_model(dir.path(), aggregate, base, modes),
        )
        .unwrap()
        .score(&rows)
        .unwrap()
        .values()
        .to_vec()
    };
    // Row 1: 0.5 <= 1 -> 10, 1.0 > 0.5 -> 1. Row 2: 20 and 3. Row 3: NaN goes true -> 10, and 3.
    // Row 4: 1.0 <= 1 -> 10; 0.5 > 0.5 is false -> 3.
    assert_eq!(scores("SUM", None, modes), [11.0, 23.0, 13.0, 13.0]);
    assert_eq!(
        scores("SUM", Some(100.0), modes),
        [111.0, 123.0, 113.0, 113.0]
    );
    assert_eq!(scores("AVERAGE", None, modes), [5.5, 11.5, 6.5, 6.5]);
    assert_eq!(scores("MIN", None, modes), [1.0, 3.0, 3.0, 3.0]);
    assert_eq!(scores("MAX", None, modes), [10.0, 20.0, 10.0, 10.0]);
    let gte = [leaf, "BRANCH_LEQ", leaf, "BRANCH_GTE", leaf, leaf];
    assert_eq!(scores("SUM", None, gte), [11.0, 23.0, 13.0, 11.0]);

    // A leaf of tree 1 turned into a branch back to its root: refused when the model loads.
    let mut cyclic = forest_model(dir.path(), "SUM", None, modes);
    let mut proto =
        tract_onnx::pb::ModelProto::decode(std::fs::read(&cyclic.path).unwrap().as_slice())
            .unwrap();
    for a in &mut proto.graph.as_mut().unwrap().node[0].attribute {
        match a.name.as_str() {
            "nodes_modes" => a.strings[4] = b"BRANCH_LEQ".to_vec(),
            "nodes_truenodeids" => a.ints[4] = 0,
            "nodes_falsenodeids" => a.ints[4] = 2,
            _ => {}
        }
    }
    cyclic.path = dir.path().join("cyclic.onnx");
    std::fs::write(&cyclic.path, proto.encode_to_vec()).unwrap();
    let e = refusal(&cyclic);
    assert!(
        e.contains("tract cannot read the model") && e.contains("tree 1"),
        "{e}"
    );
}

#[test]
fn a_model_named_like_a_builtin_is_refused() {
    let mut spec = sample("cart_propensity");
    spec.name = "abs".into();
    let model = Arc::new(Model::load("job.toml", &spec).unwrap());
    let e = register(&SessionContext::new(), "job.toml", &[model])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("job.toml: models.abs") && e.contains("\"abs\" is already a SQL function"),
        "{e}"
    );
}
