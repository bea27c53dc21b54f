"""The W&B-shaped SDK: runs, artifacts and the public Api."""

from .api import Api
from .artifact import Artifact, ArtifactFile, ArtifactFilePath
from .run import (
    Config,
    Run,
    Summary,
    current_run,
    finish,
    init,
    link_artifact,
    log,
    log_artifact,
    log_model,
    use_artifact,
    use_model,
)

__all__ = [
    "Api",
    "Artifact",
    "ArtifactFile",
    "ArtifactFilePath",
    "Config",
    "Run",
    "Summary",
    "current_run",
    "finish",
    "init",
    "log",
    "link_artifact",
    "log_artifact",
    "log_model",
    "use_artifact",
    "use_model",
]
