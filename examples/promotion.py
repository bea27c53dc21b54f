"""Promote a model after evaluation, then link it into a registry collection: W&B's usual flow, unchanged.

    python examples/promotion.py

Runs on the embedded registry in a temporary directory (or against WANLLMDB_BASE_URL if set).
"""

from __future__ import annotations

import os
import tempfile

import wanllmdb as wandb


def main() -> None:
    work = tempfile.mkdtemp(prefix="wanllmdb-promotion-")
    os.environ.setdefault("WANLLMDB_DIR", os.path.join(work, "data"))
    os.environ.setdefault("WANLLMDB_CACHE_DIR", os.path.join(work, "cache"))
    weights = os.path.join(work, "model.pt")

    # 1. Training logs two candidate checkpoints.
    with wandb.init(project="promotion", job_type="train") as run:
        for epoch in (1, 2):
            with open(weights, "wb") as f:
                f.write(f"weights after epoch {epoch}".encode())
            model = run.log_model(weights, name="classifier", aliases=[f"epoch-{epoch}"])
            print(f"logged {model.name}:{model.version} with aliases {sorted(model.aliases)}")

    # 2. Evaluation picks the best one and promotes it: alias, tags, metadata, written with save().
    with wandb.init(project="promotion", job_type="evaluate") as run:
        best = run.use_artifact("classifier:epoch-1")
        best.aliases.append("production")
        best.tags.append("validated")
        best.metadata["accuracy"] = 0.93
        best.save()
        name, version = best.name.split(":")
        print(f"promoted {name} {version}: aliases {sorted(best.aliases)}, tags {best.tags}")

        # 3. Link it into a registry collection that points at versions of other artifacts.
        run.link_artifact(best, "promotion/model-registry", aliases=["champion"])

    champion = wandb.Api().artifact("promotion/model-registry:champion")
    print(f"model-registry:champion holds {[f.name for f in champion.files()]}")
    path = champion.file(os.path.join(work, "serve"))
    print(f"serving {os.path.basename(path)}: {open(path, 'rb').read().decode()!r}")
    print(
        "versions:",
        [(a.version, sorted(a.aliases)) for a in wandb.Api().artifact_versions("model", "promotion/classifier")],
    )


if __name__ == "__main__":
    main()
