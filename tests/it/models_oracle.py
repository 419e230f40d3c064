"""The models test's independent side: trains and exports scikit-learn pipelines with skl2onnx,
writes rows to score as JSON lines (with nulls), and scores them with onnxruntime.

usage: models_oracle.py OUT_DIR REPO_DIR
writes OUT_DIR/models/{logreg,mlp,gbr,two_inputs,label_encoder}.onnx, OUT_DIR/data/rows.jsonl and
OUT_DIR/expected.csv (id, then one column per model; empty where an input is null).
"""

import csv
import json
import os
import sys

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import (GradientBoostingClassifier, GradientBoostingRegressor,
                              RandomForestClassifier, RandomForestRegressor)
from sklearn.linear_model import LinearRegression, LogisticRegression
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import MinMaxScaler, StandardScaler

out, repo = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(out, "models"), exist_ok=True)
os.makedirs(os.path.join(out, "data"), exist_ok=True)
rng = np.random.default_rng(3)

# Training data: four features on different scales.
n = 3000
X = (rng.normal(size=(n, 4)) * [40, 1.5, 6, 0.5] + [60, 2, 12, 0.5]).astype(np.float32)
y_cls = (0.03 * X[:, 0] - 0.8 * X[:, 1] + np.sin(X[:, 2] / 4) + rng.normal(size=n) > 0).astype(int)
y_reg = 0.2 * X[:, 0] + 3 * np.sin(X[:, 2] / 3) + 2 * X[:, 3] + rng.normal(size=n)

pipelines = {
    # StandardScaler -> Scaler, LogisticRegression -> LinearClassifier, probabilities via ZipMap
    "logreg": make_pipeline(StandardScaler(), LogisticRegression()).fit(X, y_cls),
    # MatMul/Add/Relu/Sigmoid and ZipMap; its label output needs ArrayFeatureExtractor (pruned)
    "mlp": make_pipeline(
        StandardScaler(), MLPClassifier(hidden_layer_sizes=(16, 8), max_iter=400, random_state=0)
    ).fit(X, y_cls),
    # TreeEnsembleRegressor
    "gbr": GradientBoostingRegressor(n_estimators=60, max_depth=4, random_state=0).fit(X, y_reg),
    # TreeEnsembleClassifier: binary gradient boosting (one score, logistic) and a 3-class forest
    "gbc": GradientBoostingClassifier(n_estimators=40, max_depth=3, random_state=0).fit(X, y_cls),
    "forest": RandomForestClassifier(n_estimators=30, max_depth=6, random_state=0).fit(
        X, np.digitize(y_reg, np.quantile(y_reg, [0.33, 0.66]))),
    # two classes, votes for both, no base values
    "forest2": RandomForestClassifier(n_estimators=20, max_depth=5, random_state=0).fit(X, y_cls),
    # TreeEnsembleRegressor with aggregate_function AVERAGE
    "rfr": RandomForestRegressor(n_estimators=20, max_depth=6, random_state=0).fit(X, y_reg),
    # MinMaxScaler -> Scaler, LinearRegression -> LinearRegressor
    "minmax": make_pipeline(MinMaxScaler(), LinearRegression()).fit(X, y_reg),
}
sessions = {}
for name, model in pipelines.items():
    onx = to_onnx(model, initial_types=[("features", FloatTensorType([None, 4]))],
                  target_opset={"": 15, "ai.onnx.ml": 3})
    path = os.path.join(out, "models", f"{name}.onnx")
    with open(path, "wb") as f:
        f.write(onx.SerializeToString())
    sessions[name] = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

# Refused models: two inputs, and an operator Weir does not run (ai.onnx.ml LabelEncoder).
two = helper.make_model(
    helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["y"])], "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, [None, 2]),
         helper.make_tensor_value_info("b", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 2])]),
    opset_imports=[helper.make_opsetid("", 15)])
onnx.save(two, os.path.join(out, "models", "two_inputs.onnx"))
enc = helper.make_model(
    helper.make_graph(
        [helper.make_node("LabelEncoder", ["x"], ["y"], domain="ai.onnx.ml",
                          keys_floats=[1.0, 2.0], values_floats=[10.0, 20.0])], "enc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])]),
    opset_imports=[helper.make_opsetid("", 15), helper.make_opsetid("ai.onnx.ml", 2)])
onnx.save(enc, os.path.join(out, "models", "label_encoder.onnx"))

# Rows to score: 20,000 (more than a chunk), as JSON with a decimal, an int, a double and a
# boolean, some nulls, and the committed sample models' inputs.
m = 20_000
a = np.round(rng.uniform(1, 300, m), 2)
b = rng.integers(1, 5, m)
c = rng.uniform(0, 24, m)
d = rng.random(m) < 0.5
null_a = rng.random(m) < 0.02
null_d = rng.random(m) < 0.02
with open(os.path.join(out, "data", "rows.jsonl"), "w") as f:
    for i in range(m):
        row = {"id": i, "a": None if null_a[i] else f"{a[i]:.2f}", "b": int(b[i]),
               "c": float(c[i]), "d": None if null_d[i] else bool(d[i])}
        if row["a"] is not None:
            row["a"] = float(row["a"])
        f.write(json.dumps(row) + "\n")

# What Weir computes: arguments cast to float32 (decimal -> float, boolean -> 0/1).
feats = np.stack([a.astype(np.float32), b.astype(np.float32), c.astype(np.float32),
                  d.astype(np.float32)], axis=1)
hour = np.floor(c).astype(np.float32)


def run(sess, x, output, index):
    names = [o.name for o in sess.get_outputs()]
    res = sess.run([names[output]], {sess.get_inputs()[0].name: x})[0]
    if isinstance(res, list):  # ZipMap: a list of {class: probability}
        keys = sorted(res[0].keys())
        return np.array([r[keys[index]] for r in res], np.float64)
    res = np.asarray(res, np.float64)
    return res[:, index] if res.ndim == 2 else res


def sample(name):
    return ort.InferenceSession(os.path.join(repo, "models", f"{name}.onnx"),
                                providers=["CPUExecutionProvider"])


scores = {
    "logreg": run(sessions["logreg"], feats, 1, 1),
    "mlp": run(sessions["mlp"], feats, 1, 1),
    "gbr": run(sessions["gbr"], feats, 0, 0),
    "gbc": run(sessions["gbc"], feats, 1, 1),
    "forest": run(sessions["forest"], feats, 1, 2),
    "forest2": run(sessions["forest2"], feats, 1, 1),
    "rfr": run(sessions["rfr"], feats, 0, 0),
    "minmax": run(sessions["minmax"], feats, 0, 0),
    # the committed TensorFlow model: [price, quantity, hour, is_mobile]
    "propensity": run(sample("cart_propensity"),
                      np.stack([feats[:, 0], feats[:, 1], hour, feats[:, 3]], axis=1), 0, 0),
    # the committed scikit-learn model: [product_id, hour, price]
    "demand": run(sample("demand_forecast"),
                  np.stack([feats[:, 1], hour, feats[:, 0]], axis=1), 0, 0),
}
null_any = null_a | null_d
nulls = {name: null_any for name in scores}
nulls["demand"] = null_a
with open(os.path.join(out, "expected.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["id"] + list(scores))
    for i in range(m):
        w.writerow([i] + ["" if nulls[k][i] else repr(float(v[i])) for k, v in scores.items()])
