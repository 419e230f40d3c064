#!/usr/bin/env python3
"""Trains the sample job's two models on data from `weir generate` and exports them to ONNX.

    python3 -m venv .venv-models
    .venv-models/bin/pip install -r models/requirements.txt
    cargo build --release
    .venv-models/bin/python models/train.py            # writes models/*.onnx, prints the quality

- cart_propensity.onnx (TensorFlow/Keras, exported with tf2onnx): the probability that an
  add-to-cart event is bought, from [price, quantity, hour of day, is_mobile].
- demand_forecast.onnx (scikit-learn gradient boosting, exported with skl2onnx): units a product
  sells in an hour, from [product_id, hour of day, price].

Both are trained on 60 days of generated events at the sample data's rate (10,000 a day), on the
first 48 days, and judged on the last 12: AUC for the propensity, mean absolute error against a
naive forecast (the same product's units in the same hour the day before) for the demand.
The Keras model is built with tf_keras (Keras 2) and exported with an explicit input signature:
tf2onnx does not read Keras 3 models.
"""

import argparse
import collections
import csv
import json
import os
import subprocess
import sys
from datetime import datetime

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DAYS, TRAIN_DAYS, EVENTS_PER_DAY = 60, 48, 10_000


def generate(weir, out):
    if not os.path.exists(os.path.join(out, "products.csv")):
        subprocess.run(
            [weir, "generate", "--events", str(DAYS * EVENTS_PER_DAY), "--days", str(DAYS),
             "--out", out, "--seed", "7"],
            check=True,
        )
    products = {}
    with open(os.path.join(out, "products.csv")) as f:
        for row in csv.DictReader(f):
            products[int(row["product_id"])] = float(row["price"])
    events = []
    for name in sorted(os.listdir(os.path.join(out, "events"))):
        with open(os.path.join(out, "events", name)) as f:
            events.extend(json.loads(line) for line in f)
    return products, events


def parse_time(text):
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ")


def propensity_data(events, start):
    """Add-to-carts with [price, quantity, hour, is_mobile], labelled bought or not."""
    bought = {(e["session_id"], e["product_id"]) for e in events if e["event_type"] == "purchase"}
    x, y, day = [], [], []
    for e in events:
        if e["event_type"] != "add_to_cart":
            continue
        t = parse_time(e["event_time"])
        x.append([e["price"], e["quantity"], t.hour, 1.0 if e["device"] == "mobile" else 0.0])
        y.append(1.0 if (e["session_id"], e["product_id"]) in bought else 0.0)
        day.append((t - start).days)
    return np.array(x, np.float32), np.array(y, np.float32), np.array(day)


def train_propensity(x, y, day):
    """A small Keras MLP; returns its held-out AUC."""
    import tensorflow as tf
    import tf_keras as keras
    import tf2onnx
    from sklearn.metrics import roc_auc_score

    keras.utils.set_random_seed(7)
    train, test = day < TRAIN_DAYS, day >= TRAIN_DAYS
    norm = keras.layers.Normalization(axis=-1)
    norm.adapt(x[train])
    model = keras.Sequential([
        keras.Input(shape=(4,), name="features"),
        norm,
        keras.layers.Dense(16, activation="relu"),
        keras.layers.Dense(8, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss="binary_crossentropy")
    model.fit(x[train], y[train], epochs=12, batch_size=256, verbose=0)
    auc = roc_auc_score(y[test], model.predict(x[test], verbose=0)[:, 0])
    spec = (tf.TensorSpec([None, 4], tf.float32, name="features"),)
    path = os.path.join(ROOT, "models", "cart_propensity.onnx")
    tf2onnx.convert.from_keras(model, input_signature=spec, opset=13, output_path=path)
    return auc, int(train.sum()), int(test.sum()), float(y.mean())


def demand_data(events, products, start):
    """Units sold per product and hour, every product-hour of the span (zeros included)."""
    units = collections.Counter()
    for e in events:
        if e["event_type"] == "purchase":
            t = parse_time(e["event_time"])
            h = int((t - start).total_seconds() // 3600)
            units[(e["product_id"], h)] += e["quantity"]
    x, y, hours, ids = [], [], [], []
    for pid, price in sorted(products.items()):
        for h in range(DAYS * 24):
            x.append([pid, h % 24, price])
            y.append(units[(pid, h)])
            hours.append(h)
            ids.append(pid)
    return np.array(x, np.float32), np.array(y, np.float32), np.array(hours)


def train_demand(x, y, hours):
    from sklearn.ensemble import GradientBoostingRegressor
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import FloatTensorType

    train, test = hours < TRAIN_DAYS * 24, hours >= TRAIN_DAYS * 24
    model = GradientBoostingRegressor(n_estimators=150, max_depth=4, learning_rate=0.1,
                                      subsample=0.8, random_state=7)
    model.fit(x[train], y[train])
    pred = model.predict(x)
    # Naive: the same product's units in the same hour the day before (rows are by product,
    # then hour, so that is 24 rows back).
    prev = np.roll(y, 24)
    mae = float(np.abs(pred[test] - y[test]).mean())
    naive = float(np.abs(prev[test] - y[test]).mean())
    # The same forecasts summed per product and day (the hours of a day are 24 consecutive rows).
    day = lambda v: v[test].reshape(-1, 24).sum(axis=1)
    mae_day = float(np.abs(day(pred) - day(y)).mean())
    naive_day = float(np.abs(day(prev) - day(y)).mean())
    onx = to_onnx(model, initial_types=[("features", FloatTensorType([None, 3]))],
                  target_opset={"": 15, "ai.onnx.ml": 3})
    with open(os.path.join(ROOT, "models", "demand_forecast.onnx"), "wb") as f:
        f.write(onx.SerializeToString())
    return mae, naive, float(y[test].mean()), mae_day, naive_day, float(day(y).mean())


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weir", default=os.path.join(ROOT, "target", "release", "weir"))
    ap.add_argument("--data", default=os.path.join(ROOT, "target", "train-data"))
    args = ap.parse_args()
    products, events = generate(args.weir, args.data)
    start = datetime(2025, 6, 1)
    auc, n_train, n_test, rate = train_propensity(*propensity_data(events, start))
    print(f"cart_propensity.onnx: AUC {auc:.3f} on {n_test} held-out add-to-carts "
          f"({n_train} trained on; {rate:.1%} bought)")
    mae, naive, mean, mae_day, naive_day, mean_day = train_demand(*demand_data(events, products, start))
    print(f"demand_forecast.onnx on the last {DAYS - TRAIN_DAYS} days: per product-hour MAE {mae:.4f} "
          f"units, naive (same hour yesterday) {naive:.4f}, mean units {mean:.4f}; summed per "
          f"product-day MAE {mae_day:.3f}, naive (yesterday) {naive_day:.3f}, mean {mean_day:.3f}")


if __name__ == "__main__":
    sys.exit(main())
