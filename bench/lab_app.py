"""The lab's system (../shared/seed-lab.md), kept only as the baseline that bench.py measures against.

`train` is the lab's src/train.py and `serve` its src/app.py's /predict, as written there except:
  * `OneHotEncoder(sparse=False)` is `sparse_output=False` (newer scikit-learn renamed it);
  * the diamonds table is read from the copy shipped in data/ (no network);
  * paths and port are arguments, and it listens on 127.0.0.1 only;
  * the forest is fitted on all cores and then set back to the lab's n_jobs=None (the same trees,
    random_state=42; it only makes the benchmark's set-up faster);
  * the APScheduler drift job and the Prometheus server on port 8000 are left out: the job first
    runs after a minute (longer than a benchmark run), and neither is on the /predict path.
Needs Flask (not a dependency of this project): `pip install flask`.

    python bench/lab_app.py train --output /tmp/lab/model_pipeline.joblib
    python bench/lab_app.py serve --model /tmp/lab/model_pipeline.joblib --port 5001
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA_DIR = ROOT / "data"


def train_model(output: Path) -> None:
    # --- the lab's src/train.py ---
    from sklearn.compose import ColumnTransformer
    from sklearn.preprocessing import StandardScaler, OneHotEncoder
    from sklearn.ensemble import RandomForestRegressor
    from sklearn.pipeline import Pipeline
    from sklearn.model_selection import train_test_split
    from sklearn.metrics import mean_squared_error
    import joblib
    import seaborn as sns

    diamonds = sns.load_dataset("diamonds", data_home=str(DATA_DIR))
    X = diamonds[["carat", "cut", "color", "clarity", "depth", "table"]]
    y = diamonds["price"]
    preprocessor = ColumnTransformer(
        transformers=[
            ("num", StandardScaler(), ["carat", "depth", "table"]),
            ("cat", OneHotEncoder(drop="first", sparse_output=False), ["cut", "color", "clarity"]),
        ]
    )
    model_pipeline = Pipeline(
        [("preprocessor", preprocessor),
         ("regressor", RandomForestRegressor(n_estimators=100, random_state=42, n_jobs=-1))]
    )
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.2, random_state=42)
    model_pipeline.fit(X_train, y_train)
    model_pipeline.named_steps["regressor"].set_params(n_jobs=None)  # serve as the lab does
    y_pred = model_pipeline.predict(X_test)
    print(f"Model MSE: {mean_squared_error(y_test, y_pred)}")
    output.parent.mkdir(parents=True, exist_ok=True)
    joblib.dump(model_pipeline, output)
    print(f"Model pipeline saved to {output}")


def serve(model: Path, host: str, port: int) -> None:
    # --- the lab's src/app.py, /predict only ---
    import joblib
    import pandas as pd
    from flask import Flask, request, jsonify

    app = Flask(__name__)
    try:
        model_pipeline = joblib.load(model)
        print("Model pipeline loaded successfully")
    except Exception as e:
        print(f"Error loading model pipeline: {e}")
        model_pipeline = None

    @app.route("/predict", methods=["POST"])
    def predict():
        if model_pipeline is None:
            return jsonify({"error": "Model pipeline not loaded properly"}), 500
        data = request.json
        df = pd.DataFrame(data, index=[0])
        prediction = model_pipeline.predict(df)
        return jsonify({"prediction": prediction[0]})

    @app.route("/healthz")
    def healthz():  # added so that bench.py can wait for it to be up
        return jsonify({"status": "ok"})

    app.run(host=host, port=port)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the lab's pipeline")
    t.add_argument("--output", type=Path, required=True)
    s = sub.add_parser("serve", help="serve it with the lab's Flask /predict")
    s.add_argument("--model", type=Path, required=True)
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=5001)
    args = parser.parse_args(argv)
    if args.command == "train":
        train_model(args.output)
    else:
        serve(args.model, args.host, args.port)
    return 0


if __name__ == "__main__":
    sys.exit(main())
