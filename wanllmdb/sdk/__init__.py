"""The W&B-shaped SDK: runs, artifacts and the public Api."""

from .api import Api
from .artifact import Artifact, ArtifactFile, ArtifactFilePath
from .run import Config, Run, Summary, current_run, finish, init, log, log_artifact, use_artifact

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
    "log_artifact",
    "use_artifact",
]
