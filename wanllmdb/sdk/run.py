"""``Run`` and the module-level W&B functions (``init``, ``log``, ``finish``) that follow the current run.

A run records its config, summary and logged rows in the registry, and the lineage of artifacts: which
versions it logged and which it used. ``log`` buffers rows and writes them in batches (at most every
``FLUSH_SECONDS`` or ``FLUSH_ROWS``, and at ``finish``), so a training loop calling ``log`` thousands of times
does not pay a registry write per step.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import secrets
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from ..errors import ArtifactTypeMismatchError, InvalidInputError, WanllmdbError
from ..manifest import parse_ref, validate_project
from ..registry import DraftSpec, RunSpec
from .artifact import Artifact
from .client import Client, get_client
from .transfer import store_pending, upload_version

logger = logging.getLogger(__name__)

FLUSH_SECONDS = 5.0
FLUSH_ROWS = 500
DEFAULT_PROJECT = "uncategorized"

_ADJECTIVES = (
    "amber",
    "brisk",
    "calm",
    "dawn",
    "eager",
    "fancy",
    "gentle",
    "hazy",
    "icy",
    "jolly",
    "keen",
    "lucid",
    "misty",
    "noble",
    "olive",
    "proud",
    "quiet",
    "rosy",
    "sunny",
    "tidy",
    "vivid",
    "wise",
)
_NOUNS = (
    "river",
    "forest",
    "meadow",
    "comet",
    "harbor",
    "glade",
    "summit",
    "breeze",
    "canyon",
    "delta",
    "ember",
    "fjord",
    "grove",
    "island",
    "lagoon",
    "mesa",
    "nebula",
    "orbit",
    "prairie",
    "reef",
)


class Config(dict):
    """``run.config``: a dict with attribute access, as in W&B."""

    def __init__(self, data: Mapping[str, Any] | None = None, on_change: Any = None) -> None:
        super().__init__(data or {})
        object.__setattr__(self, "_on_change", on_change)

    def _changed(self) -> None:
        if self._on_change:
            self._on_change()

    def __getattr__(self, key: str) -> Any:
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None

    def __setattr__(self, key: str, value: Any) -> None:
        self[key] = value

    def __setitem__(self, key: str, value: Any) -> None:
        super().__setitem__(key, value)
        self._changed()

    def __delitem__(self, key: str) -> None:
        super().__delitem__(key)
        self._changed()

    def update(self, *args: Any, allow_val_change: bool = True, **kwargs: Any) -> None:  # type: ignore[override]
        data = args[0] if args else {}
        if isinstance(data, argparse.Namespace):
            data = vars(data)
        super().update(data, **kwargs)
        self._changed()

    def setdefaults(self, data: Mapping[str, Any]) -> None:
        for key, value in data.items():
            self.setdefault(key, value)
        self._changed()

    def as_dict(self) -> dict[str, Any]:
        return dict(self)


class Summary(Config):
    """``run.summary``: the last value of every logged key, plus anything set directly."""


class Run:
    """One execution of a script: config, logged metrics, summary, and artifact lineage."""

    def __init__(
        self,
        client: Client,
        *,
        project: str,
        name: str | None,
        run_id: str | None,
        config: Mapping[str, Any] | None,
        tags: Sequence[str] | None,
        notes: str | None,
        group: str | None,
        job_type: str | None,
        disabled: bool = False,
    ) -> None:
        self._client = client
        self.project = validate_project(project)
        self.id = run_id or _new_run_id()
        self.name = name or _run_name()
        self.tags = tuple(tags or ())
        self.notes = notes
        self.group = group
        self.job_type = job_type
        self.disabled = disabled
        self._lock = threading.RLock()
        self._pending: list[dict[str, Any]] = []
        self._dirty = False
        self._last_flush = time.monotonic()
        self._start = time.time()
        self.step = 0
        self._finished = False
        self.config = Config(_as_mapping(config), on_change=self._mark_dirty)
        self.summary = Summary(on_change=self._mark_dirty)
        if not disabled:
            client.registry.create_run(
                RunSpec(
                    self.project, self.id, self.name, dict(self.config), self.tags, notes, group, job_type
                )
            )

    entity = None

    @property
    def registry(self):
        return self._client.registry

    def __repr__(self) -> str:
        return f"<Run {self.project}/{self.id} ({self.name})>"

    def __enter__(self) -> Run:
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.finish(exit_code=1 if exc_type else 0)

    # --- metrics ----------------------------------------------------------------------------------------

    def _mark_dirty(self) -> None:
        self._dirty = True

    def log(self, data: Mapping[str, Any], step: int | None = None, commit: bool | None = None) -> None:
        """Record a row of values (and update the summary with them)."""
        if not isinstance(data, Mapping):
            raise InvalidInputError(f"run.log expects a dict, got {type(data).__name__}")
        self._check_open("log")
        with self._lock:
            if step is not None:
                if step < self.step:
                    logger.warning("run.log: step %s is before the current step %s; ignored", step, self.step)
                    return
                self.step = step
            row = {
                **data,
                "_step": self.step,
                "_timestamp": time.time(),
                "_runtime": time.time() - self._start,
            }
            dict.update(self.summary, data)
            self._dirty = True
            self._pending.append(row)
            if commit is not False:
                self.step += 1
            if len(self._pending) >= FLUSH_ROWS or time.monotonic() - self._last_flush > FLUSH_SECONDS:
                self._flush()

    def _flush(self, state: str | None = None) -> None:
        with self._lock:
            if self.disabled:
                self._pending.clear()
                return
            if not self._pending and not self._dirty and state is None:
                return
            rows, self._pending = self._pending, []
            self.registry.update_run(
                self.id,
                config=dict(self.config) if self._dirty else None,
                summary=dict(self.summary) if self._dirty else None,
                history=rows,
                state=state,
            )
            self._dirty = False
            self._last_flush = time.monotonic()

    def _check_open(self, what: str) -> None:
        if self._finished:
            raise WanllmdbError(f"run.{what}: run {self.id} is finished; call wanllmdb.init() for a new one")

    # --- artifacts --------------------------------------------------------------------------------------

    def log_artifact(
        self,
        artifact_or_path: Artifact | str | os.PathLike[str],
        name: str | None = None,
        type: str | None = None,
        aliases: Sequence[str] | None = None,
        tags: Sequence[str] | None = None,
    ) -> Artifact:
        """Log a new version of ``artifact`` (or of a file/directory path) and move ``aliases`` to it.

        Content identical to the newest version creates no new version: that version is returned, with
        the aliases applied. Returns the artifact, now bound to its version (``artifact.version``).
        """
        self._check_open("log_artifact")
        artifact = _artifact_from(artifact_or_path, name, type)
        if isinstance(aliases, str):
            aliases = [aliases]
        if isinstance(tags, str):
            tags = [tags]
        if self.disabled:
            logger.info("run is disabled: artifact %s not logged", artifact.name)
            return artifact
        return _log(self._client, artifact, self.project, self.id, list(aliases or ()), list(tags or ()))

    def link_artifact(self, artifact: Artifact, target_path: str, aliases: Sequence[str] | None = None) -> Artifact:
        """Link a logged version into the collection ``target_path`` (``project/name`` or ``name``)."""
        self._check_open("link_artifact")
        if artifact.is_draft():
            self.log_artifact(artifact)
        return artifact.link(target_path, aliases)

    def log_model(
        self, path: str | os.PathLike[str], name: str | None = None, aliases: Sequence[str] | None = None
    ) -> Artifact:
        """Log a file or directory as a ``model`` artifact (named ``run-<id>-<basename>`` by default)."""
        name = name or _name_from_path(f"run-{self.id}-{os.path.basename(os.path.normpath(os.fspath(path)))}")
        return self.log_artifact(path, name=name, type="model", aliases=aliases)

    def use_model(self, name: str) -> str:
        """Use a ``model`` artifact and download it; returns the local path of its file(s)."""
        artifact = self.use_artifact(name)
        if artifact.type != "model":
            raise ArtifactTypeMismatchError(f"use_model: '{name}' has type '{artifact.type}', not 'model'")
        root = artifact.download()
        return os.path.join(root, artifact.files()[0].path) if artifact.file_count == 1 else root

    def use_artifact(
        self,
        artifact_or_name: Artifact | str,
        type: str | None = None,
        aliases: Sequence[str] | None = None,
        use_as: str | None = None,
        *,
        version: str | int | None = None,
        alias: str | None = None,
    ) -> Artifact:
        """Resolve ``name``, ``name:v1``, ``name:latest`` or ``project/name:alias`` and record the use."""
        self._check_open("use_artifact")
        if isinstance(artifact_or_name, Artifact):
            if artifact_or_name.is_draft():
                artifact = self.log_artifact(artifact_or_name)
            else:
                artifact = artifact_or_name
        else:
            ref = parse_ref(artifact_or_name, version=version, alias=alias)
            project = ref.project or self.project
            info = self.registry.resolve(project, ref.name, ref.selector)
            artifact = Artifact._from_version(info, self._client, fetched_as=ref.selector)
        if type is not None and artifact.type != type:
            raise ArtifactTypeMismatchError(
                f"artifact '{artifact.source_name}' has type '{artifact.type}', not the requested '{type}'"
            )
        if not self.disabled:
            self.registry.record_use(self.id, artifact.project, artifact.collection.name, int(artifact.version[1:]))
        return artifact

    # --- end --------------------------------------------------------------------------------------------

    def finish(self, exit_code: int | None = None, quiet: bool | None = None) -> None:
        """Write what is buffered and mark the run finished (or failed for a non-zero exit code)."""
        with self._lock:
            if self._finished:
                return
            self._finished = True
            try:
                self._flush(state="failed" if exit_code else "finished")
            finally:
                global _current
                if _current is self:
                    _current = None


def _artifact_from(
    artifact_or_path: Artifact | str | os.PathLike[str], name: str | None, type: str | None
) -> Artifact:
    if isinstance(artifact_or_path, Artifact):
        return artifact_or_path
    path = os.fspath(artifact_or_path)
    artifact = Artifact(name or _name_from_path(path), type or "unspecified")
    if os.path.isdir(path):
        artifact.add_dir(path)
    else:
        artifact.add_file(path)
    return artifact


def _name_from_path(path: str) -> str:
    base = os.path.basename(os.path.normpath(path))
    cleaned = "".join(c if c.isalnum() or c in "._-" else "-" for c in base)[:128]
    return cleaned.strip(".") or "artifact"


def _log(
    client: Client,
    artifact: Artifact,
    project: str,
    run_id: str | None,
    aliases: list[str],
    tags: list[str] | None = None,
) -> Artifact:
    if not artifact.is_draft():
        raise InvalidInputError(
            f"artifact {artifact.qualified_name} is already logged; create a new Artifact for a new version"
        )
    pending = artifact._take_pending()
    if pending:
        artifact._set_digests(store_pending(client, pending))
    manifest = artifact.manifest
    spec = DraftSpec(
        project=validate_project(project),
        name=artifact.collection.name,
        type=artifact.type,
        manifest=manifest,
        description=artifact.description,
        metadata=artifact.metadata,
        run_id=run_id,
    )
    local_paths = {}
    for path, local in artifact._local_paths.items():
        entry = manifest.get(path)
        if entry is not None:
            local_paths.setdefault(entry.sha256, local)
    tags = list(dict.fromkeys([*artifact.tags, *(tags or ())]))
    result = upload_version(client, spec, local_paths, aliases, tags, ttl=artifact._ttl)
    artifact._bind(result.version, client)
    artifact._cleanup_staging()
    logger.info(
        "%s %s",
        "logged" if result.created else "unchanged, reused",
        result.version.qualified_name,
    )
    return artifact


def log_artifact_without_run(
    artifact: Artifact, project: str | None, aliases: Sequence[str] = ()
) -> Artifact:
    """Log outside any run (``wanllmdb artifact put``, ``Artifact.save(project)``): no lineage is recorded."""
    client = get_client()
    return _log(client, artifact, project or client.settings.project or DEFAULT_PROJECT, None, list(aliases))


def _new_run_id() -> str:
    alphabet = "abcdefghijklmnopqrstuvwxyz0123456789"
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _run_name() -> str:
    return f"{secrets.choice(_ADJECTIVES)}-{secrets.choice(_NOUNS)}-{secrets.randbelow(1000)}"


def _as_mapping(config: Any) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, argparse.Namespace):
        return vars(config)
    if isinstance(config, Mapping):
        return dict(config)
    raise InvalidInputError(f"config must be a dict or argparse.Namespace, got {type(config).__name__}")


# --- module-level state, as in W&B ----------------------------------------------------------------------

_current: Run | None = None
_state_lock = threading.Lock()
_atexit_registered = False


def current_run() -> Run | None:
    return _current


def init(
    project: str | None = None,
    name: str | None = None,
    config: Mapping[str, Any] | argparse.Namespace | None = None,
    dir: str | None = None,
    *,
    tags: Sequence[str] | None = None,
    notes: str | None = None,
    group: str | None = None,
    job_type: str | None = None,
    reinit: bool | str | None = None,
    mode: str | None = None,
    id: str | None = None,
    resume: bool | str | None = None,
    entity: str | None = None,
    base_url: str | None = None,
    api_key: str | None = None,
    **ignored: Any,
) -> Run:
    """Start a run (W&B's keywords are accepted; unknown ones are ignored with a debug log line).

    ``dir`` overrides the embedded registry's data directory; ``base_url``/``api_key`` select a server.
    Starting a run while one is active finishes the previous one, unless ``reinit="return_previous"``.
    """
    global _current, _atexit_registered
    if ignored:
        logger.debug("init: ignoring unsupported keywords %s", sorted(ignored))
    if mode not in (None, "online", "offline", "disabled", "shared"):
        raise InvalidInputError(f"init: unknown mode {mode!r} (expected online, offline or disabled)")
    with _state_lock:
        previous = _current
    if previous is not None:
        if reinit == "return_previous":
            return previous
        previous.finish()
    client = get_client(data_dir=dir, base_url=base_url, api_key=api_key)
    run = Run(
        client,
        project=project or client.settings.project or DEFAULT_PROJECT,
        name=name,
        run_id=id,
        config=config,
        tags=tags,
        notes=notes,
        group=group,
        job_type=job_type,
        disabled=mode == "disabled",
    )
    with _state_lock:
        _current = run
        if not _atexit_registered:
            atexit.register(_finish_at_exit)
            _atexit_registered = True
    return run


def _finish_at_exit() -> None:
    run = _current
    if run is not None:
        try:
            run.finish()
        except Exception as exc:  # at interpreter exit there is no caller left to raise to
            logger.warning("could not finish run %s at exit: %s", run.id, exc)


def _require_run(what: str) -> Run:
    if _current is None:
        raise WanllmdbError(f"You must call wanllmdb.init() before wanllmdb.{what}()")
    return _current


def log(data: Mapping[str, Any], step: int | None = None, commit: bool | None = None) -> None:
    _require_run("log").log(data, step=step, commit=commit)


def log_artifact(
    artifact_or_path: Any,
    name: str | None = None,
    type: str | None = None,
    aliases: Sequence[str] | None = None,
    tags: Sequence[str] | None = None,
) -> Artifact:
    return _require_run("log_artifact").log_artifact(
        artifact_or_path, name=name, type=type, aliases=aliases, tags=tags
    )


def link_artifact(artifact: Artifact, target_path: str, aliases: Sequence[str] | None = None) -> Artifact:
    return _require_run("link_artifact").link_artifact(artifact, target_path, aliases)


def log_model(path: Any, name: str | None = None, aliases: Sequence[str] | None = None) -> Artifact:
    return _require_run("log_model").log_model(path, name=name, aliases=aliases)


def use_model(name: str) -> str:
    return _require_run("use_model").use_model(name)


def use_artifact(artifact_or_name: Any, type: str | None = None, **kwargs: Any) -> Artifact:
    return _require_run("use_artifact").use_artifact(artifact_or_name, type=type, **kwargs)


def finish(exit_code: int | None = None, quiet: bool | None = None) -> None:
    """Finish the current run, if any."""
    run = _current
    if run is not None:
        run.finish(exit_code=exit_code)


def _reset_for_tests() -> None:
    """Finish any run and forget opened clients (tests switch data dirs between cases)."""
    global _current
    run = _current
    if run is not None:
        try:
            run.finish()
        except Exception:
            logger.debug("ignoring error finishing a run left open by a test", exc_info=True)
    _current = None
    from .client import close_clients

    close_clients()
