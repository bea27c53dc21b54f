"""wanllmdb: version ML artifacts and read them as plain files.

W&B-shaped: ``run = wanllmdb.init(project=...)``, ``wanllmdb.Artifact(...)``, ``run.log_artifact(...)``,
``run.use_artifact("name:latest").download()``; ``import wanllmdb as wandb`` runs ordinary W&B artifact code.
``wanllmdb.run``, ``wanllmdb.config`` and ``wanllmdb.summary`` follow the current run.
"""

import logging as _logging
from typing import Any as _Any

from . import errors
from ._version import __version__
from .cache.artifacts import ArtifactCache
from .errors import (
    ArtifactNotFoundError,
    ChecksumError,
    NotFoundError,
    VersionNotFoundError,
    WanllmdbError,
)
from .registry.base import ArtifactTTL
from .sdk import (
    Api,
    Artifact,
    ArtifactFile,
    Config,
    Run,
    Summary,
    finish,
    init,
    link_artifact,
    log,
    log_artifact,
    log_model,
    use_artifact,
    use_model,
)
from .sdk.run import current_run as _current_run

_logging.getLogger(__name__).addHandler(_logging.NullHandler())


def __getattr__(name: str) -> _Any:
    # W&B's module attributes that follow the current run.
    if name == "run":
        return _current_run()
    if name in ("config", "summary"):
        run = _current_run()
        if run is None:
            return Config() if name == "config" else Summary()
        return getattr(run, name)
    if name == "ApiClient":
        from .api_client import ApiClient

        return ApiClient
    raise AttributeError(f"module 'wanllmdb' has no attribute {name!r}")


__all__ = [
    "Api",
    "ApiClient",
    "Artifact",
    "ArtifactCache",
    "ArtifactFile",
    "ArtifactNotFoundError",
    "ArtifactTTL",
    "ChecksumError",
    "Config",
    "NotFoundError",
    "Run",
    "Summary",
    "VersionNotFoundError",
    "WanllmdbError",
    "__version__",
    "errors",
    "finish",
    "init",
    "log",
    "link_artifact",
    "log_artifact",
    "log_model",
    "use_artifact",
    "use_model",
]
