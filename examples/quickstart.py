"""A short tour of wanllmdb on the embedded registry (nothing to start, nothing to configure).

Logs a small dataset twice, moves an alias, reads it back through the cache, verifies it, and prints where
to look next (``wanllmdb mount``). Run: ``python examples/quickstart.py``.
"""

from __future__ import annotations

import csv
import os
import random
import tempfile

import wanllmdb


def write_dataset(folder: str, rows: int, seed: int) -> None:
    rng = random.Random(seed)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    for split, count in (("train", rows), ("test", rows // 4)):
        with open(os.path.join(folder, f"{split}.csv"), "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["x", "y", "label"])
            for _ in range(count):
                writer.writerow([round(rng.random(), 4), round(rng.random(), 4), rng.randint(0, 9)])
    for i in range(3):
        with open(os.path.join(folder, "images", f"digit_{i}.bin"), "wb") as f:
            f.write(rng.randbytes(4096))


def main() -> None:
    work = tempfile.mkdtemp(prefix="wanllmdb-quickstart-")

    # 1. Log v1 of a dataset.
    write_dataset(os.path.join(work, "data"), rows=500, seed=1)
    with wanllmdb.init(project="quickstart", name="prepare-v1", config={"rows": 500}) as run:
        dataset = wanllmdb.Artifact("mnist", type="dataset", description="toy digits", metadata={"rows": 500})
        dataset.add_dir(os.path.join(work, "data"))
        run.log_artifact(dataset)
        print(f"logged {dataset.qualified_name}: {dataset.file_count} files, aliases {dataset.aliases}")

    # 2. Log v2 with more rows and move the 'best' alias to it.
    write_dataset(os.path.join(work, "data"), rows=1000, seed=2)
    with wanllmdb.init(project="quickstart", name="prepare-v2", config={"rows": 1000}) as run:
        dataset = wanllmdb.Artifact("mnist", type="dataset", metadata={"rows": 1000})
        dataset.add_dir(os.path.join(work, "data"))
        run.log_artifact(dataset, aliases=["best"])
        print(f"logged {dataset.qualified_name}: aliases {dataset.aliases}")

        # Logging identical content again creates no new version.
        again = wanllmdb.Artifact("mnist", type="dataset")
        again.add_dir(os.path.join(work, "data"))
        run.log_artifact(again)
        print(f"re-logged identical content -> still {again.qualified_name}")

    # 3. Use it in a training run: download (through the shared cache), read, verify.
    with wanllmdb.init(project="quickstart", name="train") as run:
        latest = run.use_artifact("mnist:latest")
        root = latest.download(os.path.join(work, "download"))
        with open(latest.get_path("train.csv")) as f:
            rows = sum(1 for _ in f) - 1
        print(f"downloaded {latest.qualified_name} to {root}: train.csv has {rows} rows")
        print(f"verify() -> {latest.verify(root)}")
        first = run.use_artifact("mnist:v1")
        print(f"mnist:v1 has {first.file_count} files; logged by run '{first.logged_by().name}'")
        run.log({"train_rows": rows})

    versions = wanllmdb.Api().artifact_versions("dataset", "quickstart/mnist")
    print("versions:", ", ".join(f"{a.version} {a.aliases}" for a in versions))
    print("next: mkdir -p ~/artifacts && wanllmdb mount ~/artifacts && ls -l ~/artifacts/quickstart/mnist/")


if __name__ == "__main__":
    main()
