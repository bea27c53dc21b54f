"""The one factory for ``requests`` sessions: connection pooling, timeouts and retries with backoff.

Retries are urllib3's ``Retry`` on the adapter, so they cost nothing on the happy path:

- connection errors (nothing was sent) are retried for every method;
- read errors and 429/5xx answers are retried only for idempotent methods (GET, HEAD, PUT, DELETE,
  OPTIONS). A blob PUT is idempotent (the blob is named by its content) and its file body is rewound
  by urllib3 before each attempt. POST and PATCH are not repeated here: a finalize or a history append
  repeated after a lost answer would not be safe. Requests known to be safe to repeat (creating a
  draft, presigning URLs) are retried by :mod:`.client` instead.

Request bodies are sent in 1 MiB blocks rather than urllib3's default 16 KiB (fewer Python calls per
byte; see NOTES-performance.md).
"""

from __future__ import annotations

import os

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


class _LargeBlockAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose connections send request bodies in :data:`BLOCK_SIZE` pieces."""

    def init_poolmanager(self, connections: int, maxsize: int, block: bool = False, **pool_kwargs: object) -> None:
        pool_kwargs.setdefault("blocksize", BLOCK_SIZE)
        super().init_poolmanager(connections, maxsize, block=block, **pool_kwargs)


def make_retry(retries: int = DEFAULT_RETRIES, backoff: float = DEFAULT_BACKOFF) -> Retry:
    """The retry policy every session uses (see the module docstring)."""
    return Retry(
        total=retries,
        connect=retries,
        read=min(retries, 2),
        status=retries,
        other=0,
        backoff_factor=backoff,
        backoff_max=10.0,
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
