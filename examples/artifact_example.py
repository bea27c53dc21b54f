"""The four artifact examples of the original SDK sprint, written for W&B and run unchanged on wanllmdb.

Only the import differs: ``import wanllmdb as wandb``. Runs on the embedded registry by default (or on a
server when WANLLMDB_BASE_URL is set). Run: ``python examples/artifact_example.py``.
"""

from __future__ import annotations

import json
import os
import random
import tempfile

import wanllmdb as wandb

WORK = tempfile.mkdtemp(prefix="wanllmdb-examples-")


def make_files() -> None:
    """Create the files the examples log (train.csv, test.csv, images/, model.pth, config.json, data_v*.txt)."""
    os.chdir(WORK)
    rng = random.Random(0)
    for name, rows in (("train.csv", 200), ("test.csv", 50)):
        with open(name, "w") as f:
            f.write("feature_a,feature_b,label\n")
            for _ in range(rows):
                f.write(f"{rng.random():.5f},{rng.random():.5f},{rng.randint(0, 1)}\n")
    os.makedirs("images", exist_ok=True)
    for i in range(5):
        with open(os.path.join("images", f"img_{i}.png"), "wb") as f:
            f.write(rng.randbytes(2048))
    with open("model.pth", "wb") as f:
        f.write(rng.randbytes(64 * 1024))
    with open("config.json", "w") as f:
        json.dump({"layers": 3, "hidden": 128}, f)
    with open("data_v1.txt", "w") as f:
        f.write("version one\n")
    with open("data_v2.txt", "w") as f:
        f.write("version two\n")


def example_1_log_dataset_artifact() -> None:
    """Log a dataset artifact with files and directories."""
    run = wandb.init(project="artifact-examples", name="prepare-dataset")
    dataset = wandb.Artifact("sample-dataset", type="dataset")
    dataset.add_file("train.csv")
    dataset.add_file("test.csv")
    dataset.add_dir("images/", name="images")
    run.log_artifact(dataset)
    print(f"example 1: logged {dataset.name}:{dataset.version} ({dataset.file_count} files)")
    wandb.finish()


def example_2_use_artifact() -> None:
    """Use an artifact in another run."""
    run = wandb.init(project="artifact-examples", name="train-model")
    dataset = run.use_artifact("sample-dataset:latest")
    data_dir = dataset.download()
    train_path = dataset.get_path("train.csv")
    try:
        import pandas as pd

        rows = len(pd.read_csv(train_path))
        reader = "pandas"
    except ImportError:
        import csv

        with open(train_path, newline="") as f:
            rows = sum(1 for _ in csv.DictReader(f))
        reader = "csv"
    print(f"example 2: downloaded to {data_dir}; train.csv has {rows} rows (read with {reader})")
    wandb.finish()


def example_3_log_model_artifact() -> None:
    """Log a model artifact."""
    run = wandb.init(project="artifact-examples", name="train-final-model")
    model = wandb.Artifact("sample-model", type="model", metadata={"accuracy": 0.92})
    model.add_file("model.pth")
    model.add_file("config.json")
    run.log_artifact(model)
    print(f"example 3: logged {model.name}:{model.version} with metadata {model.metadata}")
    wandb.finish()


def example_4_versioning() -> None:
    """Demonstrate artifact versioning."""
    run = wandb.init(project="artifact-examples", name="data-v1")
    artifact_v1 = wandb.Artifact("versioned-data", type="dataset")
    artifact_v1.add_file("data_v1.txt")
    run.log_artifact(artifact_v1)
    wandb.finish()

    run = wandb.init(project="artifact-examples", name="data-v2")
    artifact_v2 = wandb.Artifact("versioned-data", type="dataset")
    artifact_v2.add_file("data_v2.txt")
    run.log_artifact(artifact_v2)
    wandb.finish()

    run = wandb.init(project="artifact-examples", name="use-versioned-data")
    latest = run.use_artifact("versioned-data:latest")
    v1 = run.use_artifact("versioned-data:v1")
    print(
        f"example 4: latest is {latest.version} ({[f.path for f in latest.files()]}), "
        f"v1 holds {[f.path for f in v1.files()]}"
    )
    wandb.finish()


if __name__ == "__main__":
    make_files()
    example_1_log_dataset_artifact()
    example_2_use_artifact()
    example_3_log_model_artifact()
    example_4_versioning()
