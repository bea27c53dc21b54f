"""Schemathesis over the server's own OpenAPI schema: every operation, generated good and bad input, no 5xx.

One real ``wanllmdb server`` (with an API key) serves ``/openapi.json``; schemathesis generates requests for
every operation it documents (the JSON API and the presigned blob endpoint), in both of its modes (input
the schema allows, and input it forbids), and checks each answer: never a server error, and a status code
and content type the schema documents. The number of examples per operation is bounded
(``WANLLMDB_LONG_TESTS=1`` for more) so that the module stays under ~30 s.

The operations are walked inside one test per mode rather than through ``schema.parametrize``, whose lazy
fixture loading does not work with pytest 9; every failure is collected and reported with its operation.
"""

from __future__ import annotations

import os

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import content_type_conformance, status_code_conformance

from tests.support.server import start_server

pytestmark = pytest.mark.server

EXAMPLES = 150 if os.environ.get("WANLLMDB_LONG_TESTS") == "1" else 6
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance]


@pytest.fixture(scope="module")
def schema_server(tmp_path_factory):
    server = start_server(tmp_path_factory.mktemp("schema-server"), quiet=True)
    yield server
    server.stop()


def _exercise(operation, mode: GenerationMode, headers: dict[str, str]) -> tuple[int, list[str]]:
    """Run ``EXAMPLES`` generated cases of ``operation``; returns (cases sent, failures)."""
    sent: list[int] = []
    failures: list[str] = []

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True,
              database=None)  # fmt: skip
    def check(case) -> None:
        sent.append(1)
        response = case.call(headers={**(case.headers or {}), **headers}, timeout=30)
        try:
            case.validate_response(response, checks=CHECKS)
        except (AssertionError, FailureGroup) as exc:
            failures.append(f"{operation.label} [{mode.value}] {response.status_code}: {exc}")

    try:
        check()
    except Unsatisfiable:  # nothing to negate (an operation without parameters or body)
        assert mode is GenerationMode.NEGATIVE, operation.label
    return len(sent), failures


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=lambda m: m.value)
def test_no_operation_answers_a_server_error(schema_server, mode):
    schema = schemathesis.openapi.from_url(schema_server.url + "/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20, [op.label for op in operations]
    failures: list[str] = []
    total = 0
    for operation in operations:
        count, found = _exercise(operation, mode, schema_server.headers)
        total += count
        failures += found
    assert total >= len(operations)
    assert not failures, "\n\n".join(failures[:10])


def test_a_signature_with_non_ascii_characters_is_refused_not_a_crash(schema_server):
    sha = "ab" * 32
    for method in ("GET", "PUT"):
        response = requests.request(
            method, f"{schema_server.url}/api/v1/blobs/{sha}", params={"expires": 9999999999, "size": 3, "sig": "é"},
            data=b"abc" if method == "PUT" else None, timeout=30,
        )  # fmt: skip
        assert response.status_code == 403, (method, response.text)
        assert response.json()["error"]["message"] == f"invalid signature for {method} of blob {sha[:12]}"


def test_sizes_no_blob_can_have_are_unknown_not_a_crash(schema_server):
    response = requests.post(
        f"{schema_server.url}/api/v1/blob-sizes", json={"sizes": [-1, 2**63, 2**80, 0]},
        headers=schema_server.headers, timeout=30,
    )  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json() == {"known": [], "unhashed_uploads": True}
