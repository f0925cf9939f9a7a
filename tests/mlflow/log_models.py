"""Train-and-register, as a pipeline would, against a real MLflow tracking server (for the tests).

    python log_models.py TRACKING_URI

Runs in .venv-mlflow (full MLflow, made by scripts/setup-mlflow). Registers:

- ``fraud-scorer`` versions 1 and 2: tests/onnx_models.py's sigmoid scorer with two weight
  sets, logged with ``mlflow.onnx.log_model`` from runs that log a parameter, a metric, a git
  commit and a training dataset; alias ``champion`` -> 1. A third version, never loaded at
  start-up, for the load-while-down tests.
- ``pickled`` version 1: a scikit-learn model (a pickle-based flavor, to be refused).
- ``escape`` version 1: an MLmodel whose ONNX flavor points its data outside the artifacts.

Prints what it made as JSON: {"fraud-scorer": {"1": run_id, ...}, ...}.
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import mlflow
import numpy as np
from mlflow import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.onnx_models import sigmoid_scorer


def weights(version: int) -> np.ndarray:
    """The scorer's weights for a version (the test computes the same)."""
    return np.random.default_rng(100 + version).normal(0.0, 0.5, 17).astype(np.float32)


def log_scorer(version: int) -> str:
    with mlflow.start_run(run_name=f"scorer-{version}") as run:
        mlflow.log_param("learning_rate", 0.1 * version)
        mlflow.log_metric("auc", 0.90 + version / 100)
        mlflow.set_tag("mlflow.source.git.commit", f"c0ffee{version:034d}")
        train = np.random.default_rng(version).normal(size=(64, 16)).astype(np.float32)
        mlflow.log_input(mlflow.data.from_numpy(train, name="transactions-2026-11"), context="training")
        mlflow.onnx.log_model(sigmoid_scorer(weights(version)), name="model", registered_model_name="fraud-scorer")
        return str(run.info.run_id)


def log_pickled() -> str:
    from sklearn.linear_model import LogisticRegression

    x = np.random.default_rng(0).normal(size=(20, 16))
    model = LogisticRegression().fit(x, (x[:, 0] > 0).astype(int))
    with mlflow.start_run(run_name="pickled") as run:
        mlflow.sklearn.log_model(model, name="model", registered_model_name="pickled")
        return str(run.info.run_id)


def log_escape(client: MlflowClient) -> str:
    with mlflow.start_run(run_name="escape") as run, tempfile.TemporaryDirectory() as tmp:
        model_dir = Path(tmp) / "model"
        model_dir.mkdir()
        (model_dir / "MLmodel").write_text(
            "artifact_path: model\nflavors:\n  onnx:\n    data: ../../../../outside.onnx\n    onnx_version: 1.16.0\n"
        )
        (model_dir / "model.onnx").write_bytes(sigmoid_scorer(weights(1)).SerializeToString())
        mlflow.log_artifacts(str(model_dir), artifact_path="model")
        client.create_registered_model("escape")
        client.create_model_version("escape", source=f"{run.info.artifact_uri}/model", run_id=run.info.run_id)
        return str(run.info.run_id)


def main() -> None:
    uri = sys.argv[1]
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("fraud")
    client = MlflowClient(uri)
    made = {"fraud-scorer": {str(v): log_scorer(v) for v in (1, 2, 3)}}
    client.set_registered_model_alias("fraud-scorer", "champion", "1")
    made["pickled"] = {"1": log_pickled()}
    made["escape"] = {"1": log_escape(client)}
    print(json.dumps(made))


if __name__ == "__main__":
    main()
