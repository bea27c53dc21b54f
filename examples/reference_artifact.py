"""A reference artifact: files recorded by URI and digest, left where they are, checked when read.

Logs a folder as a reference (nothing is uploaded), reads it back, then edits one referenced file and shows
the error a reader gets. Run: ``python examples/reference_artifact.py``.
"""

from __future__ import annotations

import pathlib
import tempfile

import wanllmdb as wandb
from wanllmdb.errors import ReferenceChangedError


def main() -> None:
    shelf = pathlib.Path(tempfile.mkdtemp(prefix="wanllmdb-shelf-"))
    (shelf / "shards").mkdir()
    for i in range(3):
        (shelf / "shards" / f"shard-{i}.txt").write_text(f"rows of shard {i}\n" * 100)

    with wandb.init(project="references", name="index-shelf") as run:
        art = wandb.Artifact("shelf", type="dataset")
        entries = art.add_reference((shelf / "shards").as_uri(), name="shards")
        run.log_artifact(art)
    print(f"logged {art.qualified_name}: {[e.path for e in entries]}, {len(entries)} references, nothing uploaded")

    used = wandb.Api().artifact(f"references/shelf:{art.version}")
    print(f"shard-0 read from its reference: {open(used.get_path('shards/shard-0.txt')).readline().strip()!r}")

    (shelf / "shards" / "shard-2.txt").write_text("edited after logging\n")
    try:
        used.download(tempfile.mkdtemp(prefix="wanllmdb-refs-out-"))
    except ReferenceChangedError as exc:
        print(f"download refused the edited reference: {type(exc).__name__}: {exc}")


if __name__ == "__main__":
    main()
