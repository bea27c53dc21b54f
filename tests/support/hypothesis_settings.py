"""Settings of the state-machine tests: short and reproducible in CI, long and random with WANLLMDB_LONG_TESTS=1."""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

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
