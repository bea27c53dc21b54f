"""Settings from environment variables and platformdirs, resolved once per call to :func:`load_settings`.

| variable                  | meaning                                             | default                          |
|---------------------------|-----------------------------------------------------|----------------------------------|
| WANLLMDB_DIR              | embedded registry (SQLite + blobs)                  | platformdirs.user_data_dir       |
| WANLLMDB_CACHE_DIR        | shared blob cache                                   | platformdirs.user_cache_dir      |
| WANLLMDB_CACHE_SIZE       | cache size limit ("10GB", "500M", bytes)            | 10GB                             |
| WANLLMDB_BASE_URL         | selects the HTTP registry of a ``wanllmdb server``  | unset: embedded registry         |
| WANLLMDB_API_KEY          | bearer key for that server                          | unset                            |
| WANLLMDB_PROJECT          | default project for refs without one                | unset                            |
| WANLLMDB_TIMEOUT          | seconds before a stalled network read fails         | 30                               |
| WANLLMDB_TRANSFER_THREADS | parallel blob transfers                             | 8                                |
| WANLLMDB_SINGLE_PASS_MIN  | new files this large are hashed while uploaded      | 64MiB                            |
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace

import platformdirs

from .errors import ConfigError

APP_NAME = "wanllmdb"
DEFAULT_CACHE_BYTES = 10 * 1000**3
#: Files larger than this are split into chunks with their own SHA-256, so that a reader can fetch and
#: verify any part of a file on its own. The chunk is the unit of verification, not of transfer (the mount
#: fetches several per request): a reader of the first bytes of a cold file waits for one chunk to arrive
#: and be hashed, so it is kept small. 1 MiB costs 64 hex characters of manifest per MiB of file.
CHUNK_SIZE = 1024 * 1024

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}
_DURATION_UNITS = {"": 86400, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_size(text: str | int | float) -> int:
    """Parse ``"10GB"``, ``"500M"``, ``"1.5GiB"`` or a plain number of bytes.

    Raises:
        ConfigError: the text is not a size.
    """
    if isinstance(text, (int, float)):
        if text < 0:
            raise ConfigError(f"size must not be negative: {text}")
        return int(text)
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise ConfigError(f"not a size: {text!r} (expected e.g. 500MB, 10GB, 1.5GiB or a number of bytes)")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str | int | float) -> float:
    """Parse ``"7d"``, ``"12h"``, ``"30m"``, ``"45s"``; a bare number means days.

    Raises:
        ConfigError: the text is not a duration.
    """
    if isinstance(text, (int, float)):
        return float(text) * 86400
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([a-zA-Z]?)\s*", text)
    if not match or match.group(2).lower() not in _DURATION_UNITS:
        raise ConfigError(f"not a duration: {text!r} (expected e.g. 7d, 12h, 30m, 45s)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


def format_size(num: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(num) < 1000 or unit == "TB":
            return f"{num:.0f} {unit}" if unit == "B" else f"{num:.1f} {unit}"
        num /= 1000
    raise AssertionError("unreachable")


@dataclass(frozen=True)
class Settings:
    """Where data lives and which registry serves it."""

    data_dir: str
    cache_dir: str
    cache_max_bytes: int = DEFAULT_CACHE_BYTES
    base_url: str | None = None
    api_key: str | None = None
    project: str | None = None
    timeout: float = 30.0
    transfer_threads: int = 8
    #: New files at least this large are uploaded in the same read that hashes them (see sdk/transfer.py).
    single_pass_min: int = 64 * 1024 * 1024

    def with_overrides(self, **changes: object) -> Settings:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def _env_float(name: str, default: float) -> float:
    raw = os.environ.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r} is not a number") from None
    if value <= 0:
        raise ConfigError(f"{name}={raw!r} must be positive")
    return value


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment, with explicit keyword overrides (``None`` means "not given")."""
    env = os.environ
    settings = Settings(
        data_dir=env.get("WANLLMDB_DIR") or platformdirs.user_data_dir(APP_NAME),
        cache_dir=env.get("WANLLMDB_CACHE_DIR") or platformdirs.user_cache_dir(APP_NAME),
        cache_max_bytes=parse_size(env.get("WANLLMDB_CACHE_SIZE") or DEFAULT_CACHE_BYTES),
        base_url=env.get("WANLLMDB_BASE_URL") or None,
        api_key=env.get("WANLLMDB_API_KEY") or None,
        project=env.get("WANLLMDB_PROJECT") or None,
        timeout=_env_float("WANLLMDB_TIMEOUT", 30.0),
        transfer_threads=int(_env_float("WANLLMDB_TRANSFER_THREADS", 8)),
        single_pass_min=parse_size(env.get("WANLLMDB_SINGLE_PASS_MIN") or 64 * 1024 * 1024),
    )
    return settings.with_overrides(**overrides)
