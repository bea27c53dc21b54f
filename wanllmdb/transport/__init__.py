"""The HTTP transport: one session factory, retries with backoff, status -> typed errors, streaming blobs.

Only this package sends HTTP requests or looks at status codes; ``registry.http`` and ``api_client`` are
built on :class:`HttpTransport`.
"""

from .client import API_PREFIX, HttpTransport, normalize_base_url
from .errors import error_for_exception, raise_for_status
from .session import BLOCK_SIZE, make_retry, make_session

__all__ = [
    "API_PREFIX",
    "BLOCK_SIZE",
    "HttpTransport",
    "error_for_exception",
    "make_retry",
    "make_session",
    "normalize_base_url",
    "raise_for_status",
]
