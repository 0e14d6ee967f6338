"""The running server and its /openapi.json agree: every wire limit (corp_error_server/limits.py)
is the document's and the validation's, at the boundary; and schemathesis, fuzzing the server from
the document, finds no request the server answers against it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import env_body, error_beacon
from corp_error_server import limits

TOKEN = "schema-test-token"
SCHEMATHESIS_CONFIG = Path(__file__).resolve().parent / "schemathesis.toml"


def _bodies() -> dict:
    """A body each request schema accepts, to vary one field of."""
    success = {
        "kind": "success",
        "env_hash": "e" * 12,
        "script_id": "s" * 12,
        "ts": 1700000000.0,
        "prev_env_hash": "p" * 12,
        "prev_error_sig": "ValueError: x",
        "script_name": "x.py",
        "agent": "t",
    }
    return {
        "Beacon": ("/beacon", success),
        "Env": ("/env", env_body("f" * 12, {"requests": "2.31.0"}, python_impl="CPython")),
        "SuggestRequest": ("/suggest", {"error_sig": "ValueError: x", "env_hash": "e" * 12, "script_id": "s" * 12}),
    }


@pytest.fixture
def server(make_server):
    return make_server("--token", TOKEN)


def test_every_length_limit_is_the_document_s_and_the_server_s(server):
    status, document = server.request("GET", "/openapi.json", token=TOKEN)
    assert status == 200
    schemas = document["components"]["schemas"]
    bodies = _bodies()
    checked = 0
    for schema, fields in limits.MAX_LENGTH.items():
        path, body = bodies[schema]
        for field, length in fields.items():
            assert schemas[schema]["properties"][field]["maxLength"] == length, (schema, field)
            at_limit = server.request("POST", path, dict(body, **{field: "a" * length}), token=TOKEN)
            over = server.request("POST", path, dict(body, **{field: "a" * (length + 1)}), token=TOKEN)
            assert 200 <= at_limit[0] < 300, (schema, field, at_limit)
            assert over[0] == 400 and field in over[1]["error"], (schema, field, over)
            checked += 1
    for schema, fields in limits.KEPT.items():
        path, body = bodies[schema]
        for field, length in fields.items():
            end = "last" if field in limits.KEPT_AT_END else "first"
            assert (
                "the %s %s characters are kept" % (end, format(length, ","))
                in schemas[schema]["properties"][field]["description"]
            ), (schema, field)
            value = body.get(field, "ValueError: x") + "a" * length  # longer than kept: cut, not refused
            longer = server.request("POST", path, dict(body, **{field: value}), token=TOKEN)
            assert 200 <= longer[0] < 300, (schema, field, longer)
            checked += 1
    assert checked >= 14
    kept = dict(
        error_beacon("e" * 12, "s" * 12, "ValueError: kept"),
        trace="x" * (2 * limits.KEPT["Beacon"]["trace"]) + "\nValueError: kept",
    )
    assert server.request("POST", "/beacon", kept, token=TOKEN)[0] in (200, 204)
    _, groups = server.request("GET", "/api/errors", token=TOKEN)
    group = next(g for g in groups["groups"] if "kept" in g["group_key"])
    _, detail = server.request("GET", "/api/errors/%d" % group["id"], token=TOKEN)
    traces = [r["trace"] for r in detail["recent"] if r.get("trace")]
    assert traces and all(len(t) == limits.KEPT["Beacon"]["trace"] and t.endswith("ValueError: kept") for t in traces)


def test_schemathesis_finds_no_disagreement_between_the_server_and_its_document(server, tmp_path):
    # Bounded: a few examples per operation, boundary values (the coverage phase) and random ones.
    # Not checked: that every schema-valid body is taken. The document cannot say all the server
    # checks (an error beacon needs an exception line; a package name has at most 200 characters).
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "--config-file",
        str(SCHEMATHESIS_CONFIG),
        "run",
        server.url + "/openapi.json",
        "--header",
        "Authorization: Bearer " + TOKEN,
        "--checks",
        "all",
        "--exclude-checks",
        "positive_data_acceptance",
        "--phases",
        "coverage,fuzzing",
        "--max-examples",
        "15",
        "--seed",
        "13",
        "--workers",
        "1",
        "--generation-database",
        "none",
        "--continue-on-failure",
        "--no-color",
        "--request-timeout",
        "20",
    ]
    pytest.importorskip("schemathesis", reason="schemathesis is not installed (run_tests.sh installs it)")
    result = subprocess.run(
        command,
        cwd=str(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, SCHEMATHESIS_HOOKS=""),
    )
    report = "\n".join(line[:300] for line in result.stdout.splitlines())
    assert result.returncode == 0, report[-6000:]
    assert "6 passed" in report or "Tested: 6" in report, report[-3000:]
