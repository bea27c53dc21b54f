"""The one factory for ``requests`` sessions: connection pooling, timeouts and retries with backoff.

Retries are urllib3's ``Retry`` on the adapter, so they cost nothing on the happy path:

- connection errors (nothing was sent) are retried for every method;
- read errors and 429/5xx answers are retried only for idempotent methods (GET, HEAD, PUT, DELETE,
  OPTIONS). A blob PUT is idempotent (the blob is named by its content) and its file body is rewound
  by urllib3 before each attempt. POST and PATCH are not repeated here: a finalize or a history append
  repeated after a lost answer would not be safe. Requests known to be safe to repeat (creating a
  draft, presigning URLs) are retried by :mod:`.client` instead.

A server that does not answer is retried for about ``retry_window()`` seconds per request (7.5 s with the
defaults; a request that may be repeated at most twice that): the first retry says so once, in one log line
naming the server and how long the retries may take, instead of urllib3's line per attempt.

Request bodies are sent in 1 MiB blocks rather than urllib3's default 16 KiB (fewer Python calls per
byte; see NOTES-performance.md).
"""

from __future__ import annotations

import logging
import os
import threading
import time

import requests
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

#: Statuses worth another attempt: rate limiting and server-side failures.
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
#: Methods urllib3 may repeat after a read error or a retryable status.
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
#: Bytes per ``send`` of a request body, and per read of a streamed response body.
BLOCK_SIZE = 1 << 20
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 0.25
BACKOFF_MAX = 10.0
#: A server's retries are announced at most this often.
ANNOUNCE_INTERVAL = 60.0

logger = logging.getLogger(__name__)


def retry_window(retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF) -> float:
    """Seconds of backoff the retries of one request may add (urllib3: none before the second retry, then
    ``backoff * 2**(n-1)`` each, at most BACKOFF_MAX)."""
    return sum(min(BACKOFF_MAX, backoff * 2 ** (n - 1)) for n in range(2, retries + 1))


class _AnnouncingRetry(Retry):
    """urllib3's ``Retry`` that says once per server (and per ANNOUNCE_INTERVAL) that it is retrying, and for
    how long at most; urllib3's own line per attempt is filtered out (:class:`_NoRetryLines`)."""

    _announced: dict[str, float] = {}
    _lock = threading.Lock()

    def increment(self, method=None, url=None, response=None, error=None, _pool=None, _stacktrace=None):
        if not self.history and _pool is not None:
            server = f"{_pool.scheme}://{_pool.host}:{_pool.port}"
            now = time.monotonic()
            with self._lock:
                due = now - self._announced.get(server, -ANNOUNCE_INTERVAL) >= ANNOUNCE_INTERVAL
                if due:
                    self._announced[server] = now
            if due:
                why = error if error is not None else f"HTTP {response.status}" if response is not None else "failed"
                logger.warning(
                    "%s is not answering (%s); retrying for up to %.0fs",
                    server,
                    _short(why),
                    retry_window(self.total or 0, self.backoff_factor),
                )
        return super().increment(method, url, response, error, _pool, _stacktrace)


def _short(why: object) -> str:
    text = str(why)
    for marker in ("Connection refused", "timed out", "Connection reset", "Name or service not known"):
        if marker in text:
            return marker.lower()
    return text[:120]


class _NoRetryLines(logging.Filter):
    """Drops urllib3's "Retrying (Retry(total=...)) after connection broken by ..." lines."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Retrying (")


logging.getLogger("urllib3.connectionpool").addFilter(_NoRetryLines())


class _LargeBlockAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections send request bodies in :data:`BLOCK_SIZE` pieces."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: object) -> None:
        pool_kwargs.setdefault("blocksize", BLOCK_SIZE)
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)


def make_retry(retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF) -> Retry:
    """The retry policy every session uses (see the module docstring)."""
    return _AnnouncingRetry(
        total=retries,
        connect=retries,
        read=min(retries, 2),
        status=retries,
        other=0,
        backoff_factor=backoff,
        backoff_max=BACKOFF_MAX,
        status_forcelist=RETRY_STATUSES,
        allowed_methods=IDEMPOTENT_METHODS,
        raise_on_status=False,
        respect_retry_after_header=True,
    )


def make_session(
    pool_size: int = 16,
    *,
    retries: int = DEFAULT_RETRIES,
    backoff: float = DEFAULT_BACKOFF,
    base_url: str | None = None,
) -> requests.Session:
    """A session with a pool of ``pool_size`` keep-alive connections per host and the retry policy.

    The environment (proxies, ``NO_PROXY``, CA bundle) is read once here rather than by requests on every
    request, which scans all of ``os.environ`` each time: a millisecond per request, the largest client
    cost of fetching many small blobs.

    Args:
        pool_size: connections kept per host; make it at least the number of transfer threads, or
            threads beyond it open and drop a connection per request.
        retries: attempts after the first, for the failures listed in the module docstring.
        backoff: urllib3 backoff factor (0, 2*b, 4*b, ... seconds between attempts, at most 10 s).
        base_url: the server the session talks to, for choosing proxies (all proxies apply without it).
    """
    session = requests.Session()
    adapter = _LargeBlockAdapter(
        pool_connections=4, pool_maxsize=max(1, pool_size), max_retries=make_retry(retries, backoff)
    )
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = _user_agent()
    session.proxies = requests.utils.get_environ_proxies(base_url) if base_url else requests.utils.getproxies()
    session.verify = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE") or True
    session.trust_env = False
    return session


def _user_agent() -> str:
    from .._version import __version__

    return f"wanllmdb/{__version__} {requests.utils.default_user_agent()}"
