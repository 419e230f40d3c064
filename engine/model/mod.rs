//! Models in SQL: each `[models.<name>]` of a job is an ONNX model file (exported by tf2onnx,
//! skl2onnx or torch.onnx) that transforms call as a scalar function `<name>(a, b, ...)`
//! returning DOUBLE. The arguments are cast to the model's input type and stacked into one
//! `[rows, arguments]` tensor per chunk of at most [`CHUNK_ROWS`] rows, scored once by tract (pure
//! Rust: nothing to download, fits a Lambda), and split back into a column; a row with a null
//! argument gets a null score. Everything a call needs is checked when the job loads, before
//! any data moves: the file, its operators, its single `[N, k]` input, the chosen output and
//! column, and (when the SQL is planned) the number and types of each call's arguments.

mod ml;

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, ArrowPrimitiveType, Float64Array, PrimitiveArray};
use datafusion::arrow::buffer::NullBuffer;
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Float32Type, Float64Type, Int32Type, Int64Type};
use datafusion::common::{DataFusionError, Result as DfResult, exec_err, plan_err};
use datafusion::execution::FunctionRegistry;
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use tract_onnx::prelude::*;
use tract_onnx::tract_hir::internal::{Datum, DimLike};

/// Rows scored by one run of a model (a batch is split into chunks of this size).
pub const CHUNK_ROWS: usize = 8192;

/// `[models.<name>]` as checked by the job loader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    /// The SQL function name.
    pub name: String,
    pub path: PathBuf,
    /// Which model output (default: the first).
    pub output: Option<String>,
    /// The column of an `[N, k]` output (default 0).
    pub index: usize,
}

/// A model that cannot be used, with what to do about it.
#[derive(Debug, thiserror::Error)]
#[error("{job}: models.{name} ({file}): {message}")]
pub struct ModelError {
    pub job: String,
    pub name: String,
    pub file: String,
    pub message: String,
}

impl ModelError {
    fn new(job: &str, name: &str, file: &std::path::Path, message: String) -> Self {
        Self {
            job: job.to_string(),
            name: name.to_string(),
            file: file.display().to_string(),
            message,
        }
    }
}

/// The ONNX element types a model input may have, with their Arrow types.
fn input_type(elem: i32) -> Option<(DatumType, DataType)> {
    match elem {
        1 => Some((f32::datum_type(), DataType::Float32)),
        11 => Some((f64::datum_type(), DataType::Float64)),
        7 => Some((i64::datum_type(), DataType::Int64)),
        6 => Some((i32::datum_type(), DataType::Int32)),
        _ => None,
    }
}

/// A loaded, optimised model, ready to score.
pub struct Model {
    pub name: String,
    pub file: PathBuf,
    plan: Arc<TypedRunnableModel>,
    /// The plan for exactly `chunk` rows, when tract could make one.
    whole: Option<Arc<TypedRunnableModel>>,
    /// The model input's name, element type (as Arrow) and width `k`.
    input: String,
    arrow_type: DataType,
    pub features: usize,
    output: String,
    /// Columns of the chosen output (1 for `[N]`).
    width: usize,
    index: usize,
    chunk: usize,
}

impl std::fmt::Debug for Model {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Model")
            .field("name", &self.name)
            .field("file", &self.file)
            .field("input", &self.input)
            .field("features", &self.features)
            .field("output", &self.output)
            .field("index", &self.index)
            .finish()
    }
}

/// The operators tract reads from ONNX, with Weir's `ai.onnx.ml` additions.
fn parser() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    ml::register(&mut onnx.op_register);
    // A ZipMap output is declared as a sequence of maps; Weir reads the tensor under it.
    onnx.with_ignore_output_types(true)
        .with_ignore_output_shapes(true)
}

impl Model {
    /// Loads and checks `spec` (`job` names the job file in errors).
    pub fn load(job: &str, spec: &ModelSpec) -> Result<Self, ModelError> {
        Self::load_with_chunk(job, spec, CHUNK_ROWS)
    }

    fn load_with_chunk(job: &str, spec: &ModelSpec, chunk: usize) -> Result<Self, ModelError> {
        let fail = |message: String| ModelError::new(job, &spec.name, &spec.path, message);
        let onnx = parser();
        let bytes = std::fs::read(&spec.path).map_err(|e| {
            fail(format!(
                "cannot read the model file: {e}; fix `path` (relative to the project root)"
            ))
        })?;
        let mut proto = onnx
            .proto_model_for_read(&mut bytes.as_slice())
            .map_err(|e| {
                fail(format!(
                    "not an ONNX model ({e}); export it with tf2onnx, skl2onnx or torch.onnx"
                ))
            })?;
        let graph = proto
            .graph
            .as_mut()
            .ok_or_else(|| fail("the ONNX file holds no graph".into()))?;

        // The chosen output, and only the nodes it needs (a classifier's label output may use
        // operators its probabilities do not).
        let outputs: Vec<String> = graph.output.iter().map(|o| o.name.clone()).collect();
        let output = match &spec.output {
            None => outputs
                .first()
                .cloned()
                .ok_or_else(|| fail("the model has no outputs".into()))?,
            Some(name) if outputs.contains(name) => name.clone(),
            Some(name) => {
                return Err(fail(format!(
                    "output = \"{name}\" is not an output of the model; its outputs are: {}",
                    outputs.join(", ")
                )));
            }
        };
        graph.output.retain(|o| o.name == output);
        prune(graph, &output);

        // Every operator must be known before tract tries the graph: name what is missing.
        let mut missing: Vec<String> = graph
            .node
            .iter()
            .filter(|n| !onnx.op_register.0.contains_key(&n.op_type))
            .map(|n| {
                if n.domain.is_empty() {
                    n.op_type.clone()
                } else {
                    format!("{} ({})", n.op_type, n.domain)
                }
            })
            .collect();
        missing.sort();
        missing.dedup();
        if !missing.is_empty() {
            return Err(fail(format!(
                "operator{} {} not supported by Weir's model runtime (tract 0.23 with Weir's {}); \
                 export the model without {} (the README lists what is supported)",
                if missing.len() > 1 { "s" } else { "" },
                missing.join(", "),
                ml::ADDED.join(", "),
                if missing.len() > 1 { "them" } else { "it" },
            )));
        }

        // One input, [N, k], of a numeric type.
        let initializers: std::collections::HashSet<&str> =
            graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<_> = graph
            .input
            .iter()
            .filter(|i| !initializers.contains(i.name.as_str()))
            .collect();
        let [input] = inputs.as_slice() else {
            return Err(fail(format!(
                "the model has {} inputs ({}); Weir passes a call's arguments as one [rows, arguments] tensor: export the model with a single 2-D input",
                inputs.len(),
                inputs
                    .iter()
                    .map(|i| i.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let input = (*input).clone();
        use tract_onnx::pb::type_proto::Value;
        let tensor = match input.r#type.as_ref().and_then(|t| t.value.as_ref()) {
            Some(Value::TensorType(t)) => t,
            _ => return Err(fail(format!("input {} is not a tensor", input.name))),
        };
        let Some((datum, arrow_type)) = input_type(tensor.elem_type) else {
            return Err(fail(format!(
                "input {} has ONNX element type {}; Weir feeds float, double, int64 or int32 inputs",
                input.name, tensor.elem_type
            )));
        };
        let dims: Vec<Option<i64>> =
            tensor
                .shape
                .as_ref()
                .map(|s| {
                    s.dim
                        .iter()
                        .map(|d| match d.value {
                            Some(
                                tract_onnx::pb::tensor_shape_proto::dimension::Value::DimValue(v),
                            ) if v > 0 => Some(v),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default();
        let features = match dims.as_slice() {
            [_, Some(k)] => *k as usize,
            _ => {
                return Err(fail(format!(
                    "input {} has shape {}; Weir needs [N, k] with k fixed (rows by features)",
                    input.name,
                    shape_text(&dims)
                )));
            }
        };

        let path = spec.path.parent().and_then(|p| p.to_str());
        let mut model = onnx
            .parse(&proto, path)
            .map_err(|e| fail(format!("tract cannot read the model: {e:#}")))?
            .model;
        let n = model.symbols.sym("N");
        model
            .set_input_fact(
                0,
                InferenceFact::dt_shape(datum, [n.to_dim(), features.to_dim()]),
            )
            .map_err(|e| fail(format!("cannot set the model's input: {e:#}")))?;
        let typed = model
            .into_typed()
            .and_then(|m| m.into_decluttered())
            .map_err(|e| {
                fail(format!(
                    "tract cannot type the model: {e:#}; export it with a variable first (batch) dimension, e.g. skl2onnx FloatTensorType([None, {features}]) or a tf2onnx input_signature of shape [None, {features}]"
                ))
            })?;
        let fact = typed
            .output_fact(0)
            .map_err(|e| fail(format!("{e:#}")))?
            .clone();
        // [N] or [N, k] with k fixed: one score per row.
        let width = match fact.rank() {
            1 => Some(1),
            2 => fact.shape[1].to_usize().ok(),
            _ => None,
        };
        let width = match width {
            Some(w) if w > 0 && fact.shape[0] == n.to_dim() => w,
            _ => {
                return Err(fail(format!(
                    "output {output} has shape {:?}; Weir reads [N] or [N, k] outputs (one row per input row, k fixed): choose another with `output`",
                    fact.shape
                )));
            }
        };
        if !fact.datum_type.is_number() && fact.datum_type != bool::datum_type() {
            return Err(fail(format!(
                "output {output} is {:?}, not numbers; choose a numeric output with `output` (outputs: {})",
                fact.datum_type,
                outputs.join(", ")
            )));
        }
        if spec.index >= width {
            return Err(fail(format!(
                "index = {} but output {output} has {width} column{}; use an index from 0 to {}",
                spec.index,
                if width == 1 { "" } else { "s" },
                width - 1
            )));
        }
        // A plan for whole chunks (a DataFusion batch is 8,192 rows) with N fixed lets tract
        // pick its kernels for that size; other sizes use the general plan.
        let chunk = chunk.max(1);
        let whole = typed
            .set_symbols(&std::collections::HashMap::from([(
                n.clone(),
                (chunk as i64).to_dim(),
            )]))
            .and_then(|m| m.into_optimized())
            .and_then(|m| m.into_runnable())
            .ok();
        let plan = typed
            .into_optimized()
            .and_then(|m| m.into_runnable())
            .map_err(|e| {
                fail(format!(
                    "tract cannot plan the model: {e:#}; if it runs in onnxruntime, report the operator named here"
                ))
            })?;
        Ok(Self {
            name: spec.name.clone(),
            file: spec.path.clone(),
            plan,
            whole,
            input: input.name.clone(),
            arrow_type,
            features,
            output,
            width,
            index: spec.index,
            chunk,
        })
    }

    /// One line for `weir validate`: the call, the file, what it reads and returns.
    pub fn describe(&self) -> String {
        format!(
            "{}({} arguments) {}: input {} [N, {}] {}, returns output {} column {} of {}",
            self.name,
            self.features,
            self.file.display(),
            self.input,
            self.features,
            self.arrow_type,
            self.output,
            self.index,
            self.width
        )
    }

    /// The SQL function calling this model.
    pub fn udf(self: &Arc<Self>) -> ScalarUDF {
        ScalarUDF::new_from_impl(ModelFunction {
            model: self.clone(),
            signature: Signature::user_defined(Volatility::Immutable),
        })
    }

    /// Scores rows: one argument array per model feature, all of the input's Arrow type.
    pub fn score(&self, args: &[ArrayRef]) -> Result<Float64Array, TractError> {
        match self.arrow_type {
            DataType::Float32 => self.score_as::<Float32Type>(args),
            DataType::Float64 => self.score_as::<Float64Type>(args),
            DataType::Int64 => self.score_as::<Int64Type>(args),
            _ => self.score_as::<Int32Type>(args),
        }
    }

    fn score_as<A>(&self, args: &[ArrayRef]) -> Result<Float64Array, TractError>
    where
        A: ArrowPrimitiveType,
        A::Native: Datum + Copy,
    {
        let columns: Vec<&PrimitiveArray<A>> = args
            .iter()
            .map(|a| {
                a.as_any()
                    .downcast_ref::<PrimitiveArray<A>>()
                    .ok_or_else(|| {
                        anyhow::anyhow!("argument of type {} reached the model", a.data_type())
                    })
            })
            .collect::<Result<_, _>>()?;
        let rows = columns.first().map_or(0, |c| c.len());
        let k = self.features;
        let mut scores: Vec<f64> = Vec::with_capacity(rows);
        let mut stacked: Vec<A::Native> = Vec::with_capacity(self.chunk.min(rows) * k);
        let mut start = 0;
        while start < rows {
            let n = self.chunk.min(rows - start);
            stacked.clear();
            for row in start..start + n {
                // A null's slot gets 0 (the model runs on every row); its score is masked below.
                stacked.extend(columns.iter().map(|c| {
                    if c.is_null(row) {
                        A::Native::default()
                    } else {
                        c.values()[row]
                    }
                }));
            }
            let input = Tensor::from_shape(&[n, k], &stacked)?;
            let plan = match &self.whole {
                Some(whole) if n == self.chunk => whole,
                _ => &self.plan,
            };
            let out = plan.run(tvec!(input.into_tvalue()))?;
            let out = out[0].cast_to::<f64>()?;
            let view = out.to_plain_array_view::<f64>()?;
            anyhow::ensure!(
                view.shape().first() == Some(&n),
                "the model returned {:?} for {n} rows",
                view.shape()
            );
            if view.ndim() == 1 {
                scores.extend(view.iter().copied());
            } else {
                let view = view.into_dimensionality::<tract_ndarray::Ix2>()?;
                scores.extend(view.column(self.index).iter().copied());
            }
            start += n;
        }
        let nulls = columns.iter().fold(None::<NullBuffer>, |acc, c| {
            NullBuffer::union(acc.as_ref(), c.nulls())
        });
        Ok(Float64Array::new(scores.into(), nulls))
    }
}

/// Keeps only the nodes `output` depends on (an ONNX graph lists nodes in topological order).
fn prune(graph: &mut tract_onnx::pb::GraphProto, output: &str) {
    let mut needed: std::collections::HashSet<String> = [output.to_string()].into();
    let mut keep = vec![false; graph.node.len()];
    for (i, node) in graph.node.iter().enumerate().rev() {
        if node.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(node.input.iter().filter(|i| !i.is_empty()).cloned());
        }
    }
    let mut flags = keep.into_iter();
    graph.node.retain(|_| flags.next().unwrap_or(false));
}

fn shape_text(dims: &[Option<i64>]) -> String {
    let d: Vec<String> = dims
        .iter()
        .map(|d| d.map_or("?".to_string(), |v| v.to_string()))
        .collect();
    format!("[{}]", d.join(", "))
}

/// Loads every model of a job.
pub fn load_all(job: &str, specs: &[ModelSpec]) -> Result<Vec<Arc<Model>>, ModelError> {
    specs
        .iter()
        .map(|s| Model::load(job, s).map(Arc::new))
        .collect()
}

/// A model as a DataFusion scalar function.
#[derive(Debug)]
struct ModelFunction {
    model: Arc<Model>,
    signature: Signature,
}

impl PartialEq for ModelFunction {
    fn eq(&self, other: &Self) -> bool {
        self.model.name == other.model.name && self.model.file == other.model.file
    }
}
impl Eq for ModelFunction {}
impl Hash for ModelFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.model.name.hash(state);
        self.model.file.hash(state);
    }
}

impl ScalarUDFImpl for ModelFunction {
    fn name(&self) -> &str {
        &self.model.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Float64)
    }

    fn coerce_types(&self, args: &[DataType]) -> DfResult<Vec<DataType>> {
        let m = &self.model;
        if args.len() != m.features {
            return plan_err!(
                "{} takes {} argument{}, one per feature of {} (its input {} is [N, {}]); this call passes {}",
                m.name,
                m.features,
                if m.features == 1 { "" } else { "s" },
                m.file.display(),
                m.input,
                m.features,
                args.len()
            );
        }
        for (i, t) in args.iter().enumerate() {
            if !(t.is_numeric() || matches!(t, DataType::Boolean | DataType::Null)) {
                return plan_err!(
                    "argument {} of {} is {t}, but the model ({}) takes numbers: turn it into one in SQL (e.g. CASE WHEN device = 'mobile' THEN 1 ELSE 0 END, or a CAST)",
                    i + 1,
                    m.name,
                    m.file.display()
                );
            }
        }
        Ok(vec![m.arrow_type.clone(); args.len()])
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let arrays = ColumnarValue::values_to_arrays(&args.args)?;
        let arrays = arrays
            .iter()
            .map(|a| {
                if a.data_type() == &self.model.arrow_type {
                    Ok(a.clone())
                } else {
                    cast(a, &self.model.arrow_type).map_err(DataFusionError::from)
                }
            })
            .collect::<DfResult<Vec<_>>>()?;
        match self.model.score(&arrays) {
            Ok(scores) => Ok(ColumnarValue::Array(Arc::new(scores))),
            Err(e) => exec_err!(
                "model {} ({}) failed on a batch of {} rows: {e:#}",
                self.model.name,
                self.model.file.display(),
                args.number_rows
            ),
        }
    }
}

/// Registers every model of a job as a SQL function; a name taken by a built-in is refused.
pub fn register(
    ctx: &datafusion::prelude::SessionContext,
    job: &str,
    models: &[Arc<Model>],
) -> Result<(), ModelError> {
    for m in models {
        if ctx.udf(&m.name).is_ok() || ctx.udaf(&m.name).is_ok() || ctx.udwf(&m.name).is_ok() {
            return Err(ModelError::new(
                job,
                &m.name,
                &m.file,
                format!(
                    "\"{}\" is already a SQL function; name the model something else",
                    m.name
                ),
            ));
        }
        ctx.register_udf(m.udf());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
