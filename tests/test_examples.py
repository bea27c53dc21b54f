"""The examples run end to end on the embedded default, as the README promises."""

from __future__ import annotations

import os
import subprocess
import sys

EXAMPLES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "examples")


def _run(script: str) -> str:
    proc = subprocess.run(
        [sys.executable, os.path.join(EXAMPLES, script)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_quickstart_runs_and_shows_versions():
    out = _run("quickstart.py")
    assert "logged quickstart/mnist:v1" in out
    assert "re-logged identical content -> still quickstart/mnist:v2" in out
    assert "verify() -> True" in out
    assert "versions: v1 [], v2 ['best', 'latest']" in out


def test_seed_artifact_examples_run_with_import_wanllmdb_as_wandb():
    out = _run("artifact_example.py")
    assert "example 1: logged sample-dataset:v1 (7 files)" in out
    assert "train.csv has 200 rows" in out
    assert "metadata {'accuracy': 0.92}" in out
    assert "example 4: latest is v2 (['data_v2.txt']), v1 holds ['data_v1.txt']" in out


def test_promotion_example_aliases_after_evaluation_and_links():
    out = _run("promotion.py")
    assert "promoted classifier epoch-1: aliases ['epoch-1', 'production'], tags ['validated']" in out
    assert "model-registry:champion holds ['model.pt']" in out
    assert "serving model.pt: 'weights after epoch 1'" in out
    assert "versions: [('v1', ['epoch-1', 'production']), ('v2', ['epoch-2', 'latest'])]" in out
