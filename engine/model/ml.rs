//! The `ai.onnx.ml` operators tract 0.23 lacks (or runs too slowly) and ordinary scikit-learn
//! exports contain, registered with tract's ONNX parser from here: `Scaler` (every skl2onnx
//! `StandardScaler`/`MinMaxScaler`), `TreeEnsembleRegressor` and `TreeEnsembleClassifier`
//! (gradient boosting, random forests, decision trees: one forest evaluator, [`Forest`]) and
//! `ZipMap` (the dictionary of class probabilities at the end of every skl2onnx classifier, passed
//! through as the `[N, classes]` tensor it is made from). Each follows onnxruntime where the
//! ONNX-ML specification leaves room, refuses at load what it does not do the same way, and is
//! checked against onnxruntime by the integration tests.

use tract_onnx::model::{OnnxOpRegister, ParsingContext};
use tract_onnx::pb::NodeProto;
use tract_onnx::tract_hir::internal::*;

/// The operators Weir adds (TreeEnsembleClassifier replaces tract's, whose leaf lookup scans
/// the whole leaf table for every tree of every row).
pub const ADDED: [&str; 4] = [
    "Scaler",
    "TreeEnsembleRegressor",
    "TreeEnsembleClassifier",
    "ZipMap",
];

/// Registers Weir's operators with a tract ONNX parser.
pub fn register(reg: &mut OnnxOpRegister) {
    reg.insert("Scaler", scaler);
    reg.insert("TreeEnsembleRegressor", tree_regressor);
    reg.insert("TreeEnsembleClassifier", tree_classifier);
    reg.insert("ZipMap", zipmap);
}

type Built = TractResult<(Box<dyn InferenceOp>, Vec<String>)>;

// ---- Scaler: Y = (X - offset) * scale, per column (or one value for all), as float ----

#[derive(Debug, Clone)]
struct Scaler {
    /// f32, shape [1, C] (or [1, 1]).
    offset: Arc<Tensor>,
    scale: Arc<Tensor>,
}

fn scaler(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let row = |name: &str| -> TractResult<Arc<Tensor>> {
        let v: Vec<f32> = node
            .get_attr_opt_vec(name)?
            .unwrap_or_else(|| vec![if name == "scale" { 1.0 } else { 0.0 }]);
        Ok(Tensor::from_shape(&[1, v.len()], &v)?.into_arc_tensor())
    };
    Ok((
        expand(Scaler {
            offset: row("offset")?,
            scale: row("scale")?,
        }),
        vec![],
    ))
}

impl Expansion for Scaler {
    fn name(&self) -> StaticName {
        "Scaler".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let mut x = inputs[0];
        if model.outlet_fact(x)?.datum_type != f32::datum_type() {
            x = model.wire_node(
                format!("{prefix}.to_f32"),
                tract_core::ops::cast::cast(f32::datum_type()),
                &[x],
            )?[0];
        }
        let offset = model.add_const(format!("{prefix}.offset"), self.offset.clone())?;
        let scale = model.add_const(format!("{prefix}.scale"), self.scale.clone())?;
        let centred = model.wire_node(
            format!("{prefix}.sub"),
            tract_core::ops::math::sub(),
            &[x, offset],
        )?[0];
        model.wire_node(
            format!("{prefix}.mul"),
            tract_core::ops::math::mul(),
            &[centred, scale],
        )
    }
}

// ---- ZipMap: the [N, C] probabilities it would turn into a list of maps ----

#[derive(Debug, Clone)]
struct ZipMap;

fn zipmap(_ctx: &ParsingContext, _node: &NodeProto) -> Built {
    Ok((expand(ZipMap), vec![]))
}

impl Expansion for ZipMap {
    fn name(&self) -> StaticName {
        "ZipMap".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        _prefix: &str,
        _model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        Ok(inputs.into())
    }
}

// ---- TreeEnsembleRegressor: Weir's own forest evaluator ----
//
// tract's tree evaluator (`tract_onnx_opl::ml::tree`) finds a leaf's weights by skipping through
// the whole leaf table for every tree of every row: a 150-tree forest took 100 s for 20,000
// rows in a debug build. This one keeps each leaf's weights as a slice range.

/// A forest as flat arrays; thresholds kept as bits so the op can be compared and hashed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Forest {
    /// Root node of each tree.
    roots: Vec<u32>,
    /// Internal node: feature, threshold bits, mode, NaN goes true, true child, false child.
    /// Leaf: `mode == LEAF`, its weights `weights[first..end]` in the child fields.
    nodes: Vec<TreeNode>,
    /// (target, weight bits).
    weights: Vec<(u32, u32)>,
    targets: usize,
    aggregate: Aggregate,
    /// The highest feature index a node reads.
    max_feature: usize,
    /// Every branch is `BRANCH_LEQ` with NaN going false (scikit-learn's trees): one comparison
    /// per node, no mode to look at.
    leq_only: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct TreeNode {
    feature: u32,
    threshold: u32,
    mode: u8,
    nan_true: bool,
    a: u32,
    b: u32,
}

const LEAF: u8 = 0;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Aggregate {
    Sum,
    Average,
    Min,
    Max,
}

impl Forest {
    /// Adds up (or averages, or takes the min/max of) each target over the trees, for one row.
    fn score(&self, row: &[f32], out: &mut [f64], seen: &mut [bool]) {
        out.fill(0.0);
        seen.fill(false);
        for &root in &self.roots {
            let mut n = &self.nodes[root as usize];
            if self.leq_only {
                // NaN <= t is false: the false branch, as nan_true = false asks.
                while n.mode != LEAF {
                    let yes = row[n.feature as usize] <= f32::from_bits(n.threshold);
                    n = &self.nodes[if yes { n.a } else { n.b } as usize];
                }
            }
            while n.mode != LEAF {
                let v = row[n.feature as usize];
                let t = f32::from_bits(n.threshold);
                let yes = if v.is_nan() {
                    n.nan_true
                } else {
                    match n.mode {
                        1 => v <= t,
                        2 => v < t,
                        3 => v >= t,
                        4 => v > t,
                        5 => v == t,
                        _ => v != t,
                    }
                };
                n = &self.nodes[if yes { n.a } else { n.b } as usize];
            }
            for &(target, w) in &self.weights[n.a as usize..n.b as usize] {
                let (t, w) = (target as usize, f64::from(f32::from_bits(w)));
                out[t] = match (self.aggregate, seen[t]) {
                    (Aggregate::Min, true) => out[t].min(w),
                    (Aggregate::Max, true) => out[t].max(w),
                    (Aggregate::Min | Aggregate::Max, false) => w,
                    _ => out[t] + w,
                };
                seen[t] = true;
            }
        }
        if self.aggregate == Aggregate::Average {
            let trees = self.roots.len() as f64;
            out.iter_mut().for_each(|v| *v /= trees);
        }
    }
}

/// The forest as a tract operator: `[N, features]` in, `[N, targets]` f32 out.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ForestOp {
    forest: Arc<Forest>,
}

impl Op for ForestOp {
    fn name(&self) -> StaticName {
        "WeirTreeEnsemble".into()
    }

    fn as_typed(&self) -> Option<&dyn TypedOp> {
        Some(self)
    }
}

impl EvalOp for ForestOp {
    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let input = inputs
            .into_iter()
            .next()
            .ok_or_else(|| format_err!("the forest takes one input"))?;
        let input = input.cast_to::<f32>()?;
        let view = input.to_plain_array_view::<f32>()?;
        let rows = view.shape()[0];
        let features = view.shape().get(1).copied().unwrap_or(1);
        ensure!(
            features > self.forest.max_feature,
            "the forest reads feature {} but the input has {features}",
            self.forest.max_feature
        );
        // Rows as one slice: borrowed when the tensor is laid out row by row (it is, from Weir).
        let x: std::borrow::Cow<[f32]> = match view.as_slice() {
            Some(x) => x.into(),
            None => view.iter().copied().collect::<Vec<_>>().into(),
        };
        let t = self.forest.targets;
        let mut out = vec![0f32; rows * t];
        let (mut acc, mut seen) = (vec![0f64; t], vec![false; t]);
        for (row, o) in x.chunks_exact(features).zip(out.chunks_exact_mut(t)) {
            self.forest.score(row, &mut acc, &mut seen);
            for (o, a) in o.iter_mut().zip(&acc) {
                *o = *a as f32;
            }
        }
        Ok(tvec!(Tensor::from_shape(&[rows, t], &out)?.into_tvalue()))
    }

    fn eval_out_of_plan(&self, inputs: TVec<TValue>) -> TractResult<Option<TVec<TValue>>> {
        Ok(Some(self.eval(&EvalContext::out_of_plan(), inputs)?))
    }
}

impl TypedOp for ForestOp {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let shape = &inputs[0].shape;
        ensure!(shape.rank() == 2, "a tree ensemble takes [N, features]");
        if let Ok(features) = shape[1].to_usize() {
            ensure!(
                features > self.forest.max_feature,
                "the trees read feature {} but the input has {features}",
                self.forest.max_feature
            );
        }
        Ok(tvec!(f32::fact([
            shape[0].clone(),
            self.forest.targets.to_dim()
        ])))
    }

    fn as_op(&self) -> &dyn Op {
        self
    }

    fn as_op_mut(&mut self) -> &mut dyn Op {
        self
    }
}

/// A float attribute list, from `name` or `name_as_tensor` (the ai.onnx.ml 3 double form).
fn floats(node: &NodeProto, name: &str) -> TractResult<Option<Vec<f32>>> {
    if let Some(v) = node.get_attr_opt_vec::<f32>(name)? {
        return Ok(Some(v));
    }
    let tensor_name = format!("{name}_as_tensor");
    match node.attribute.iter().find(|a| a.name == tensor_name) {
        Some(a) => {
            let t =
                a.t.as_ref()
                    .ok_or_else(|| format_err!("attribute {tensor_name} holds no tensor"))?;
            let t =
                tract_onnx::tensor::load_tensor(&*tract_onnx::data_resolver::default(), t, None)?;
            let t = t.cast_to::<f32>()?;
            Ok(Some(
                t.to_plain_array_view::<f32>()?.iter().copied().collect(),
            ))
        }
        None => Ok(None),
    }
}

/// Parses the node, leaf and weight attributes shared by the tree ensemble operators
/// (`prefix` "target" for a regressor, "class" for a classifier).
fn forest(node: &NodeProto, prefix: &str, targets: usize, aggregate: &str) -> TractResult<Forest> {
    let aggregate = match aggregate {
        "SUM" => Aggregate::Sum,
        "AVERAGE" => Aggregate::Average,
        "MIN" => Aggregate::Min,
        "MAX" => Aggregate::Max,
        other => bail!("aggregate_function {other} is not one of SUM, AVERAGE, MIN, MAX"),
    };
    let ints = |name: &str| -> TractResult<Vec<usize>> {
        Ok(node
            .get_attr_slice::<i64>(name)?
            .iter()
            .map(|&v| v as usize)
            .collect())
    };
    let node_ids = ints("nodes_nodeids")?;
    let n = node_ids.len();
    node.expect_attr("nodes_nodeids", n != 0, "at least one node")?;
    let per_node = |name: &str| -> TractResult<Vec<usize>> {
        let v = ints(name)?;
        node.expect_attr(name, v.len() == n, "one per node")?;
        Ok(v)
    };
    let tree_ids = per_node("nodes_treeids")?;
    let features = per_node("nodes_featureids")?;
    let trues = per_node("nodes_truenodeids")?;
    let falses = per_node("nodes_falsenodeids")?;
    let values = floats(node, "nodes_values")?.unwrap_or_else(|| vec![0.0; n]);
    node.expect_attr("nodes_values", values.len() == n, "one per node")?;
    let nan_true: Vec<bool> = node
        .get_attr_opt_slice::<i64>("nodes_missing_value_tracks_true")?
        .map(|v| v.iter().map(|&b| b != 0).collect())
        .unwrap_or_else(|| vec![false; n]);
    node.expect_attr(
        "nodes_missing_value_tracks_true",
        nan_true.len() == n,
        "one per node",
    )?;
    let modes: Vec<u8> = node
        .get_attr_tvec::<&str>("nodes_modes")?
        .iter()
        .map(|m| {
            Ok(match *m {
                "LEAF" => LEAF,
                "BRANCH_LEQ" => 1,
                "BRANCH_LT" => 2,
                "BRANCH_GTE" => 3,
                "BRANCH_GT" => 4,
                "BRANCH_EQ" => 5,
                "BRANCH_NEQ" => 6,
                other => bail!("node mode {other} is not supported"),
            })
        })
        .collect::<TractResult<_>>()?;
    node.expect_attr("nodes_modes", modes.len() == n, "one per node")?;

    let leaf_nodes = ints(&format!("{prefix}_nodeids"))?;
    let leaf_trees = ints(&format!("{prefix}_treeids"))?;
    let leaf_targets = ints(&format!("{prefix}_ids"))?;
    let leaf_weights = floats(node, &format!("{prefix}_weights"))?.unwrap_or_default();
    let leaves = leaf_nodes.len();
    node.expect_attr(
        &format!("{prefix}_weights"),
        leaf_trees.len() == leaves && leaf_targets.len() == leaves && leaf_weights.len() == leaves,
        "one per leaf weight",
    )?;
    node.expect_attr(
        &format!("{prefix}_ids"),
        leaf_targets.iter().all(|&t| t < targets),
        || format!("below the number of {prefix}s ({targets})"),
    )?;

    // Nodes by (tree, id); children are ids in the same tree.
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| (tree_ids[i], node_ids[i]));
    let mut index: std::collections::HashMap<(usize, usize), u32> = Default::default();
    for (at, &i) in order.iter().enumerate() {
        if index
            .insert((tree_ids[i], node_ids[i]), at as u32)
            .is_some()
        {
            bail!(
                "node {} of tree {} is listed twice",
                node_ids[i],
                tree_ids[i]
            );
        }
    }
    let mut weights_of: std::collections::HashMap<(usize, usize), Vec<(u32, u32)>> =
        Default::default();
    for l in 0..leaves {
        match index.get(&(leaf_trees[l], leaf_nodes[l])) {
            Some(&at) if modes[order[at as usize]] == LEAF => {}
            _ => bail!(
                "a {prefix} weight is on node {} of tree {}, which is not a LEAF node",
                leaf_nodes[l],
                leaf_trees[l]
            ),
        }
        weights_of
            .entry((leaf_trees[l], leaf_nodes[l]))
            .or_default()
            .push((leaf_targets[l] as u32, leaf_weights[l].to_bits()));
    }
    let child = |tree: usize, id: usize, attr: &str| -> TractResult<u32> {
        index
            .get(&(tree, id))
            .copied()
            .ok_or_else(|| format_err!("{attr}: node {id} of tree {tree} does not exist"))
    };
    let mut nodes = Vec::with_capacity(n);
    let mut weights = Vec::new();
    for &i in &order {
        let tree = tree_ids[i];
        nodes.push(if modes[i] == LEAF {
            let first = weights.len() as u32;
            if let Some(w) = weights_of.get(&(tree, node_ids[i])) {
                weights.extend_from_slice(w);
            }
            TreeNode {
                feature: 0,
                threshold: 0,
                mode: LEAF,
                nan_true: false,
                a: first,
                b: weights.len() as u32,
            }
        } else {
            TreeNode {
                feature: features[i] as u32,
                threshold: values[i].to_bits(),
                mode: modes[i],
                nan_true: nan_true[i],
                a: child(tree, trues[i], "nodes_truenodeids")?,
                b: child(tree, falses[i], "nodes_falsenodeids")?,
            }
        });
    }
    // Each tree: exactly one node no other node points to (its root), and every node reached
    // once from it (no cycle, no node shared by two branches, none left over).
    let mut pointed = vec![false; n];
    for node in nodes.iter().filter(|n| n.mode != LEAF) {
        pointed[node.a as usize] = true;
        pointed[node.b as usize] = true;
    }
    let mut roots = Vec::new();
    let mut seen = vec![false; n];
    let mut start = 0;
    while start < n {
        let tree = tree_ids[order[start]];
        let end = start
            + order[start..]
                .iter()
                .take_while(|&&i| tree_ids[i] == tree)
                .count();
        let tree_roots: Vec<usize> = (start..end).filter(|&at| !pointed[at]).collect();
        let [root] = tree_roots.as_slice() else {
            bail!(
                "tree {tree} has {} nodes that no other node points to; a tree has one root",
                tree_roots.len()
            );
        };
        let mut stack = vec![*root];
        while let Some(at) = stack.pop() {
            if std::mem::replace(&mut seen[at], true) {
                bail!(
                    "tree {tree} reaches node {} twice (a cycle or a shared node)",
                    node_ids[order[at]]
                );
            }
            let node = &nodes[at];
            if node.mode != LEAF {
                stack.extend([node.a as usize, node.b as usize]);
            }
        }
        roots.push(*root as u32);
        start = end;
    }
    if let Some(at) = seen.iter().position(|s| !s) {
        bail!(
            "node {} of tree {} is not reached from its tree's root",
            node_ids[order[at]],
            tree_ids[order[at]]
        );
    }
    let max_feature = (0..n)
        .filter(|&i| modes[i] != LEAF)
        .map(|i| features[i])
        .max()
        .unwrap_or(0);
    let leq_only = nodes
        .iter()
        .all(|n| n.mode == LEAF || (n.mode == 1 && !n.nan_true));
    Ok(Forest {
        roots,
        nodes,
        weights,
        targets,
        aggregate,
        max_feature,
        leq_only,
    })
}

/// `base_values`: `n` floats, or none.
fn base_values(node: &NodeProto, n: usize) -> TractResult<Option<Vec<f32>>> {
    let base = floats(node, "base_values")?;
    if let Some(b) = &base {
        node.expect_attr("base_values", b.len() == n, || {
            format!("{n} values (one per output column)")
        })?;
    }
    Ok(base)
}

/// `post_transform`, of those Weir runs.
fn post_transform(node: &NodeProto, allowed: &[Post]) -> TractResult<Post> {
    let post: String = node
        .get_attr_opt("post_transform")?
        .unwrap_or_else(|| "NONE".to_string());
    let post = match post.as_str() {
        "NONE" => Post::None,
        "LOGISTIC" => Post::Logistic,
        "SOFTMAX" => Post::Softmax,
        other => bail!("post_transform {other} is not supported"),
    };
    ensure!(
        allowed.contains(&post),
        "post_transform {post:?} is not supported here"
    );
    Ok(post)
}

/// The forest's scores, `[N, columns]`, plus `base` when given.
fn wire_forest(
    prefix: &str,
    model: &mut TypedModel,
    inputs: &[OutletId],
    forest: &Arc<Forest>,
    base: Option<&[f32]>,
) -> TractResult<TVec<OutletId>> {
    let scores = model.wire_node(
        format!("{prefix}.trees"),
        ForestOp {
            forest: forest.clone(),
        },
        inputs,
    )?;
    match base {
        None => Ok(scores),
        Some(b) => {
            let b = model.add_const(
                format!("{prefix}.base"),
                Tensor::from_shape(&[1, b.len()], b)?.into_arc_tensor(),
            )?;
            model.wire_node(
                format!("{prefix}.base_values"),
                tract_core::ops::math::add(),
                &[scores[0], b],
            )
        }
    }
}

#[derive(Debug, Clone)]
struct TreeRegressor {
    forest: Arc<Forest>,
    base: Option<Vec<f32>>,
}

fn tree_regressor(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let targets: usize = node.get_attr_opt("n_targets")?.unwrap_or(1);
    post_transform(node, &[Post::None])?;
    let aggregate: String = node
        .get_attr_opt("aggregate_function")?
        .unwrap_or_else(|| "SUM".to_string());
    let forest = Arc::new(forest(node, "target", targets, &aggregate)?);
    let base = base_values(node, targets)?;
    Ok((expand(TreeRegressor { forest, base }), vec![]))
}

impl Expansion for TreeRegressor {
    fn name(&self) -> StaticName {
        "TreeEnsembleRegressor".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 1)?;
        s.equals(&outputs[0].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].rank, 2)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[0].shape[1], self.forest.targets.to_dim())?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        wire_forest(prefix, model, inputs, &self.forest, self.base.as_deref())
    }
}

// ---- TreeEnsembleClassifier: the same forest, class scores as onnxruntime computes them ----

#[derive(Debug, Clone)]
struct TreeClassifier {
    forest: Arc<Forest>,
    labels: Arc<Tensor>,
    layout: Layout,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Post {
    None,
    Logistic,
    Softmax,
}

/// How the class scores come out of the trees (onnxruntime's rules, fixed when the model loads).
#[derive(Debug, Clone)]
enum Layout {
    /// A score per class, plus its base value, then the post transform over all of them.
    Classes { base: Option<Vec<f32>>, post: Post },
    /// Two classes, every vote for class 0 (skl2onnx's gradient boosting): one score `s` (plus
    /// the one base value), and the classes get `[1 - s, s]` when every weight is positive,
    /// `[logistic(-s), logistic(s)]` under LOGISTIC, `[-s, s]` otherwise.
    Binary { base: Option<f32>, scores: Binary },
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Binary {
    Complement,
    Logistic,
    Negated,
}

fn tree_classifier(_ctx: &ParsingContext, node: &NodeProto) -> Built {
    let labels = match (
        node.get_attr_opt_slice::<i64>("classlabels_int64s")?,
        node.get_attr_opt_tvec::<&str>("classlabels_strings")?,
    ) {
        (Some(ints), None) => rctensor1(ints),
        (None, Some(strs)) => rctensor1(&strs.iter().map(|s| s.to_string()).collect::<Vec<_>>()),
        _ => bail!("TreeEnsembleClassifier needs one of classlabels_int64s, classlabels_strings"),
    };
    let classes = labels.len();
    let forest = forest(node, "class", classes, "SUM")?;
    let post = post_transform(node, &[Post::None, Post::Logistic, Post::Softmax])?;
    let voted: std::collections::BTreeSet<u32> = forest.weights.iter().map(|w| w.0).collect();
    let layout = if classes == 2 && voted.len() == 1 {
        ensure!(
            voted.contains(&0),
            "a two-class forest whose votes are all for class 1 is not supported"
        );
        let base = floats(node, "base_values")?.unwrap_or_default();
        ensure!(
            base.len() <= 1,
            "a two-class forest voting for one class takes at most one base value (onnxruntime reads two differently)"
        );
        let positive = forest.weights.iter().all(|w| f32::from_bits(w.1) >= 0.0);
        Layout::Binary {
            base: base.first().copied(),
            scores: match (positive, post) {
                (true, _) => Binary::Complement,
                (false, Post::Logistic) => Binary::Logistic,
                (false, _) => Binary::Negated,
            },
        }
    } else {
        let base = base_values(node, classes)?;
        ensure!(
            classes != 2 || base.is_none(),
            "base_values on a two-class forest voting for both classes is not supported (onnxruntime reads them its own way)"
        );
        Layout::Classes { base, post }
    };
    Ok((
        expand(TreeClassifier {
            forest: Arc::new(forest),
            labels,
            layout,
        }),
        vec![],
    ))
}

impl Expansion for TreeClassifier {
    fn name(&self) -> StaticName {
        "TreeEnsembleClassifier".into()
    }

    fn nboutputs(&self) -> TractResult<usize> {
        Ok(2)
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, 1)?;
        check_output_arity(outputs, 2)?;
        s.equals(&outputs[0].datum_type, self.labels.datum_type())?;
        s.equals(&outputs[1].datum_type, f32::datum_type())?;
        s.equals(&outputs[0].rank, 1)?;
        s.equals(&outputs[1].rank, 2)?;
        s.equals(&outputs[0].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[1].shape[0], &inputs[0].shape[0])?;
        s.equals(&outputs[1].shape[1], self.labels.len().to_dim())?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        use tract_core::ops::array::{Slice, TypedConcat};
        use tract_core::ops::math::{mul, sub};
        use tract_core::ops::nn::{Reduce, Reducer, sigmoid};
        let scores = match &self.layout {
            Layout::Classes { base, post } => {
                let scores = wire_forest(prefix, model, inputs, &self.forest, base.as_deref())?;
                match post {
                    Post::None => scores,
                    Post::Logistic => {
                        model.wire_node(format!("{prefix}.logistic"), sigmoid(), &scores)?
                    }
                    Post::Softmax => tract_onnx::tract_hir::ops::nn::LayerSoftmax::new(1, false)
                        .wire(&format!("{prefix}.softmax"), model, &scores)?,
                }
            }
            Layout::Binary { base, scores } => {
                // The one base value broadcasts over both columns; only column 0 is kept.
                let base = base.as_ref().map(std::slice::from_ref);
                let all = wire_forest(prefix, model, inputs, &self.forest, base)?;
                let s = model.wire_node(format!("{prefix}.score"), Slice::new(1, 0, 1), &all)?;
                let (negative, positive) = match scores {
                    Binary::Complement => {
                        let one = model.add_const(format!("{prefix}.one"), rctensor2(&[[1f32]]))?;
                        let neg =
                            model.wire_node(format!("{prefix}.complement"), sub(), &[one, s[0]])?;
                        (neg[0], s[0])
                    }
                    Binary::Logistic | Binary::Negated => {
                        let minus =
                            model.add_const(format!("{prefix}.minus"), rctensor2(&[[-1f32]]))?;
                        let neg =
                            model.wire_node(format!("{prefix}.negated"), mul(), &[minus, s[0]])?;
                        if *scores == Binary::Logistic {
                            let n =
                                model.wire_node(format!("{prefix}.logistic0"), sigmoid(), &neg)?;
                            let p =
                                model.wire_node(format!("{prefix}.logistic1"), sigmoid(), &s)?;
                            (n[0], p[0])
                        } else {
                            (neg[0], s[0])
                        }
                    }
                };
                model.wire_node(
                    format!("{prefix}.both"),
                    TypedConcat::new(1),
                    &[negative, positive],
                )?
            }
        };
        let winner = model.wire_node(
            format!("{prefix}.argmax"),
            Reduce::new(tvec!(1), Reducer::ArgMax(false)),
            &scores,
        )?;
        let winner = model.wire_node(
            format!("{prefix}.rm_axis"),
            tract_core::ops::change_axes::AxisOp::Rm(1),
            &winner,
        )?;
        let winner = model.wire_node(
            format!("{prefix}.as_i32"),
            tract_core::ops::cast::cast(i32::datum_type()),
            &winner,
        )?;
        let labels = model.wire_node(
            format!("{prefix}.labels"),
            tract_onnx_opl::ml::DirectLookup::new(
                self.labels.clone(),
                Tensor::zero_dt(self.labels.datum_type(), &[])?.into_arc_tensor(),
            )?,
            &winner,
        )?[0];
        Ok(tvec!(labels, scores[0]))
    }
}
