"""Property-based run of the whole OpenAPI schema (schemathesis) against a real server on the
real PostgreSQL and Kafka: no 5xx, and every response matches the schema it declares.

Writes are exercised too (with an admin token), on this test's own schema and topics.  The
live streams never end, so they are left to their own tests.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotmon.settings import DatabaseSettings, KafkaSettings, Settings
from producers.masterdata import import_master_data, load_file
from producers.thresholds import import_thresholds, load_thresholds_file
from tests.api_support import api_settings, live_server

pytestmark = [pytest.mark.integration, pytest.mark.slow]

EXAMPLES = Path(__file__).resolve().parents[2] / "infra" / "examples"
CHECKS = (
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
)


@pytest.fixture
def base_url(stack: Settings, kafka: KafkaSettings, db: DatabaseSettings) -> Iterator[str]:
    import_master_data(db, kafka, load_file(EXAMPLES / "locations.csv"))
    import_thresholds(db, kafka, load_thresholds_file(EXAMPLES / "thresholds.yaml"))
    with live_server(api_settings(stack, kafka, db)) as url:
        yield url


def test_no_server_errors_and_no_schema_violations(base_url: str, tmp_path: Path) -> None:
    command = [
        str(Path(sys.executable).with_name("schemathesis")),
        "run",
        f"{base_url}/openapi.json",
        "--checks",
        ",".join(CHECKS),
        "--exclude-path-regex",
        "^/api/v1/stream/",
        "--header",
        "Authorization: Bearer adm",
        "--phases",
        "examples,coverage,fuzzing",
        "--max-examples",
        "25",
        "--seed",
        "20241126",
        "--workers",
        "1",
        "--request-timeout",
        "20",
        "--report",
        "junit",
        "--report-dir",
        str(tmp_path),
    ]
    run = subprocess.run(command, capture_output=True, text=True, timeout=1200, check=False)
    assert run.returncode == 0, run.stdout[-20000:] + run.stderr[-5000:]
