"""Settings of the state-machine tests: short and reproducible in CI, long and random with WANLLMDB_LONG_TESTS=1."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, run_state_machine_as_test

LONG = os.environ.get("WANLLMDB_LONG_TESTS") == "1"


def state_machine_settings(*, examples: int, steps: int, long_examples: int, long_steps: int) -> settings:
    """``examples`` sequences of ``steps`` steps each, derandomized (the long variant: random, and longer)."""
    return settings(
        max_examples=long_examples if LONG else examples,
        stateful_step_count=long_steps if LONG else steps,
        deadline=None,
        derandomize=not LONG,
        database=None,
        suppress_health_check=list(HealthCheck),
    )


def run_in_folders(machine: type[RuleBasedStateMachine], parent: Path, machine_settings: settings) -> None:
    """Run ``machine``, each sequence with a new empty folder under ``parent`` as its ``root``."""
    numbers = iter(range(1_000_000_000))

    class InFolder(machine):  # type: ignore[valid-type,misc]
        def __init__(self) -> None:
            self.root = str(parent / f"run-{next(numbers)}")
            super().__init__()

    run_state_machine_as_test(InFolder, settings=machine_settings)
