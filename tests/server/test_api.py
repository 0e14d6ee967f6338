"""The HTTP API of a real server process: flows, dedupe, bad input, auth, limits."""

from __future__ import annotations

import http.client
import json
import socket

import pytest

from conftest import env_body, error_beacon
from corp_error_server.storage import SCHEMA_VERSION
from pgsupport import db_rows, db_tables

SIG = "AttributeError: module 'packaging.version' has no attribute 'LegacyVersion' @ __main__.main"
OLD_SIG = "attributeerror: module 'packaging.version' has no attribute 'legacyversion'. did you mean: 'version'?"


def _stored(server) -> int:
    status, body = server.request("GET", "/api/errors")
    assert status == 200
    return sum(group["count"] for group in body["groups"])


def test_health_and_openapi(server):
    status, health = server.request("GET", "/healthz")
    assert (status, health["ok"], health["schema_version"]) == (200, True, SCHEMA_VERSION)
    status, spec = server.request("GET", "/openapi.json")
    assert status == 200 and spec["openapi"].startswith("3.")
    assert {"/beacon", "/env", "/suggest", "/healthz", "/api/errors", "/api/errors/{id}", "/openapi.json"} <= set(
        spec["paths"]
    )


def test_beacon_before_env_is_counted_when_env_arrives(server):
    assert server.request("POST", "/beacon", error_beacon("e1", "s1", SIG))[0] == 204
    assert server.request("POST", "/env", env_body("e1", {"packaging": "23.2"}))[0] == 201
    assert server.request("POST", "/env", env_body("e1", {"packaging": "23.2"}))[0] == 200  # idempotent
    assert server.request("POST", "/beacon", error_beacon("e1", "s1", SIG))[0] == 200
    status, body = server.request("GET", "/api/errors")
    group = body["groups"][0]
    assert (group["count"], group["failing_runs"], group["scripts"], group["envs_affected"]) == (2, 2, 1, 1)


def test_repeated_event_id_is_stored_once(server):
    server.request("POST", "/env", env_body("e1", {"packaging": "23.2"}))
    beacon = error_beacon("e1", "s1", SIG, event_id="a" * 32)
    assert server.request("POST", "/beacon", beacon) == (200, {"ok": True, "duplicate": False})
    assert server.request("POST", "/beacon", beacon) == (200, {"ok": True, "duplicate": True})
    assert _stored(server) == 1


def test_test_beacons_are_stored_but_are_no_ones_error(server):
    server.request("POST", "/env", env_body("e1", {"packaging": "23.2"}))
    test = error_beacon("e1", "s1", "CorpErrorAgentTest: synthetic error from corp-error-agent test", test=True)
    assert server.request("POST", "/beacon", test)[0] == 200
    assert db_rows(server.db, "SELECT COUNT(*) FROM beacons WHERE test = 1") == [(1,)]
    assert server.request("GET", "/api/errors")[1]["groups"] == []
    server.request("POST", "/beacon", error_beacon("e1", "s1", SIG))
    assert [g["count"] for g in server.request("GET", "/api/errors")[1]["groups"]] == [1]


def test_population_suggestion_for_both_signature_styles(server):
    for i in range(7):
        server.request("POST", "/env", env_body("bad%d" % i, {"packaging": "23.2", "requests": "2.%d" % (i % 2)}))
        server.request("POST", "/beacon", error_beacon("bad%d" % i, "s%d" % i, SIG))
    for i in range(5):
        server.request("POST", "/env", env_body("ok%d" % i, {"packaging": "21.3", "requests": "2.%d" % (i % 2)}))
        server.request(
            "POST",
            "/beacon",
            {"kind": "success", "env_hash": "ok%d" % i, "script_id": "s%d" % i, "ts": "2024-05-01T10:00:00Z"},
        )
    for sig in (SIG, OLD_SIG):
        status, answer = server.request("POST", "/suggest", {"error_sig": sig, "env_hash": "bad0"})
        assert status == 200 and answer["match"] is True
        assert answer["solution"] == 'pip install "packaging==21.3"'
        assert answer["recommendation"] == answer["hint"]
        assert "fails in 7/7 environments with packaging 23.2; succeeds in 5/5 with 21.3" in answer["hint"]
        assert 0.5 <= answer["confidence"] <= 1
    # the requester that already has the success value gets no suggestion
    assert server.request("POST", "/suggest", {"error_sig": SIG, "env_hash": "ok0"})[1]["match"] is False
    status, group = server.request("GET", "/api/errors/1")
    assert status == 200 and group["comparison"][0]["feature"] == "pkg:packaging" and group["recent"]


def test_observed_fix_pair_is_enough(server):
    server.request("POST", "/env", env_body("before", {"packaging": "23.2", "rich": "13.0"}))
    server.request("POST", "/env", env_body("after", {"packaging": "21.3", "rich": "13.0"}))
    server.request("POST", "/beacon", error_beacon("before", "s1", SIG))
    server.request(
        "POST",
        "/beacon",
        {
            "kind": "success",
            "env_hash": "after",
            "script_id": "s1",
            "ts": 1700000100,
            "prev_env_hash": "before",
            "prev_error_sig": SIG,
        },
    )
    answer = server.request("POST", "/suggest", {"error_sig": SIG, "env_hash": "before", "script_id": "s1"})[1]
    assert answer["match"] is True and answer["solution"] == 'pip install "packaging==21.3"'
    assert answer["evidence"]["observed_fixes"] == 1


@pytest.mark.parametrize(
    "path,body,fragment",
    [
        ("/beacon", {"env_hash": "e", "script_id": "s", "ts": 1, "error_sig": "X: y"}, "missing field: kind"),
        ("/beacon", {"kind": "oops", "env_hash": "e", "script_id": "s", "ts": 1, "error_sig": "X: y"}, "kind"),
        (
            "/beacon",
            {"kind": "error", "env_hash": "e" * 13, "script_id": "s", "ts": 1, "error_sig": "X: y"},
            "env_hash",
        ),
        ("/beacon", {"kind": "error", "env_hash": "e", "script_id": ["s"], "ts": 1, "error_sig": "X: y"}, "script_id"),
        ("/beacon", {"kind": "error", "env_hash": "e", "script_id": "s", "ts": "yesterday", "error_sig": "X: y"}, "ts"),
        ("/beacon", {"kind": "error", "env_hash": "e", "script_id": "s", "ts": True, "error_sig": "X: y"}, "ts"),
        ("/beacon", {"kind": "error", "env_hash": "e", "script_id": "s", "ts": 1}, "error_sig"),
        ("/beacon", {"kind": "error", "env_hash": "e", "script_id": "s", "ts": 1, "error_sig": 5}, "error_sig"),
        (
            "/beacon",
            {"kind": "error", "env_hash": "e", "script_id": "s", "ts": 1, "error_sig": "X: y", "test": "yes"},
            "test",
        ),
        ("/beacon", {"kind": "error", "env_hash": "e", "script_id": "s", "ts": 1, "error_sig": "X: \ud800"}, "unicode"),
        ("/beacon", ["not", "an", "object"], "JSON object"),
        (
            "/env",
            {"env_hash": "e", "packages": "numpy", "python_ver": "3", "os_info": "L", "machine_arch": "x"},
            "packages",
        ),
        (
            "/env",
            {"env_hash": "e", "packages": [], "python_ver": "3" * 21, "os_info": "L", "machine_arch": "x"},
            "python_ver",
        ),
        (
            "/env",
            {"env_hash": "e", "packages": [], "python_ver": "3", "os_info": "L" * 121, "machine_arch": "x"},
            "os_info",
        ),
        (
            "/env",
            {"env_hash": "e", "packages": [], "python_ver": "3", "os_info": "L", "machine_arch": "x" * 21},
            "machine_arch",
        ),
        (
            "/env",
            {"env_hash": "e", "packages": [1], "python_ver": "3", "os_info": "L", "machine_arch": "x"},
            "packages",
        ),
        (
            "/env",
            {
                "env_hash": "e",
                "packages": [],
                "python_ver": "3",
                "os_info": "L",
                "machine_arch": "x",
                "env_vars": {"LANG": 3},
            },
            "env_vars",
        ),
        ("/suggest", {"env_hash": "e"}, "error_sig"),
        ("/suggest", {"error_sig": "X: y", "env_hash": 12}, "env_hash"),
    ],
)
def test_bad_input_is_a_4xx_naming_the_problem_and_stores_nothing(server, path, body, fragment):
    status, answer = server.request("POST", path, body)
    assert 400 <= status < 500 and fragment in answer["error"]
    assert _stored(server) == 0
    assert server.request("GET", "/api/errors")[1]["groups"] == []


@pytest.mark.parametrize(
    "raw,fragment",
    [
        (b"{", "malformed JSON"),
        (b"\xff\xfe", "UTF-8"),
        (b'{"ts": NaN}', "malformed JSON"),
        (b"[" * 100000, "JSON"),
    ],
)
def test_malformed_bodies(server, raw, fragment):
    status, answer = server.request("POST", "/beacon", raw=raw)
    assert status == 400 and fragment in answer["error"]


def test_paths_methods_and_content_type(server):
    assert server.request("GET", "/nowhere")[0] == 404
    assert server.request("GET", "/beacon/")[0] == 404
    assert server.request("DELETE", "/env")[0] == 405
    assert server.request("GET", "/api/errors/999")[0] == 404
    assert server.request("GET", "/api/errors?limit=0")[0] == 400
    status, answer = server.request("POST", "/beacon", raw=b"{}", headers={"Content-Type": "text/plain"})
    assert status == 415 and "application/json" in answer["error"]


def _read_to_close(sock: socket.socket) -> bytes:
    answer = b""
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            return answer
        answer += chunk


@pytest.mark.parametrize(
    "request_line, status",
    [
        (b"BREW /beacon HTTP/1.1", 405),  # a made-up method: not allowed, not "not implemented"
        (b"GET  HTTP/1.1", 404),  # path missing: http.server takes it for HTTP/0.9
        (b"POST  HTTP/1.1", 400),
    ],
)
def test_odd_request_lines_get_a_status_line_and_a_4xx(server, request_line, status):
    host, port = server.url[len("http://") :].split(":")
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(request_line + b"\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        answer = _read_to_close(sock)
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 %d " % status), answer
    assert "error" in json.loads(body)


@pytest.mark.parametrize("lengths", [[b"-1"], [b"+5"], [b"5", b"5"], [b"0", b"40"], [b"1_0"], [b"\xc2\xb2"]])
def test_a_doubtful_content_length_gets_400_and_the_connection_closed(server, lengths):
    host, port = server.url[len("http://") :].split(":")
    smuggled = b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    headers = b"".join(b"Content-Length: %s\r\n" % value for value in lengths)
    with socket.create_connection((host, int(port)), timeout=20) as sock:
        sock.sendall(
            b"POST /beacon HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n" + headers + b"\r\n" + smuggled
        )
        answer = _read_to_close(sock)
    assert answer.startswith(b"HTTP/1.1 400 ") and b"Content-Length" in answer, answer
    assert answer.count(b"HTTP/1.1 ") == 1, answer  # the bytes after it were never taken for a request


def test_oversized_body_is_refused_before_it_is_read(make_server):
    server = make_server("--max-body", "1000")
    host, port = server.url[len("http://") :].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    # announce 100 MB, send none of it: the answer must come without the server waiting for the body
    conn.putrequest("POST", "/beacon")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Content-Length", str(100 * 1024 * 1024))
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 413 and "limit" in json.loads(response.read())["error"]
    conn.close()
    huge = error_beacon("e1", "s1", SIG, trace="x" * 5000)
    assert server.request("POST", "/beacon", huge)[0] == 413


def test_keep_alive_serves_many_requests_on_one_connection(server):
    host, port = server.url[len("http://") :].split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=20)
    server.request("POST", "/env", env_body("e1", {"packaging": "23.2"}))
    for i in range(20):
        body = json.dumps(error_beacon("e1", "s1", SIG, event_id="%032x" % i))
        conn.request("POST", "/beacon", body, {"Content-Type": "application/json"})
        response = conn.getresponse()
        assert response.status == 200 and json.loads(response.read())["ok"]
    conn.close()
    assert _stored(server) == 20


def test_token_required_everywhere_but_healthz(make_server):
    server = make_server("--token", "s3cret-token")
    assert server.request("GET", "/healthz")[0] == 200
    for method, path, body in [
        ("POST", "/beacon", error_beacon("e", "s", SIG)),
        ("POST", "/env", env_body("e", {})),
        ("POST", "/suggest", {"error_sig": SIG, "env_hash": "e"}),
        ("GET", "/api/errors", None),
        ("GET", "/api/errors/1", None),
        ("GET", "/openapi.json", None),
    ]:
        assert server.request(method, path, body)[0] == 401
        assert server.request(method, path, body, token="wrong")[0] == 401
    assert server.request("POST", "/beacon", error_beacon("e", "s", SIG), token="s3cret-token")[0] == 204
    assert server.request("GET", "/api/errors", token="s3cret-token")[1]["groups"][0]["count"] == 1
    server.stop()
    assert "s3cret-token" not in "".join(server.log)


def test_sql_shaped_values_are_stored_verbatim(server):
    evil = "'; DROP TABLE beacons; --"
    server.request("POST", "/env", env_body("e1", {"x": evil[:20]}))
    assert server.request("POST", "/beacon", error_beacon("e1", "s1", "ValueError: " + evil))[0] == 200
    status, group = server.request("GET", "/api/errors/1")
    assert status == 200 and evil in group["signature"]


def test_binds_loopback_and_stops_cleanly(server):
    assert server.url.startswith("http://127.0.0.1:")
    port = int(server.url.rsplit(":", 1)[1])
    addresses = [
        a
        for a in {info[4][0] for info in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)}
        if not a.startswith("127.")
    ]
    for address in addresses:
        with pytest.raises(OSError):
            socket.create_connection((address, port), timeout=2).close()
    assert server.stop() == 0
    assert {"beacons", "envs", "groups", "counts", "meta", "schema_version"} <= db_tables(server.db)


def test_retention_takes_old_beacons_out_of_the_counts(db_target):
    import io
    import time

    from corp_error_server import create_app
    from corp_error_server.storage import open_storage

    storage = open_storage(db_target)
    app = create_app("", storage=storage)

    def post(path, body):
        raw = json.dumps(body).encode()
        status = []
        app(
            {
                "REQUEST_METHOD": "POST",
                "PATH_INFO": path,
                "CONTENT_LENGTH": str(len(raw)),
                "CONTENT_TYPE": "application/json",
                "wsgi.input": io.BytesIO(raw),
            },
            lambda s, h: status.append(s),
        )
        return status[0]

    post("/env", env_body("e1", {"packaging": "23.2"}))
    post("/beacon", error_beacon("e1", "s1", SIG))
    # a 0.4.2 pass of that environment: counted without its variables, and taken out so
    post("/beacon", {"kind": "success", "env_hash": "e1", "script_id": "s1", "ts": 1.7e9})
    counted = storage.group_data(__import__("corp_error_agent").group_key(SIG)).counts
    assert counted["pkg:packaging"]["23.2"] == (1, 1) and counted["env:LANG"]["C.UTF-8"] == (1, 0)
    assert storage.purge(time.time() + 1) == 2
    data = storage.group_data(__import__("corp_error_agent").group_key(SIG))
    assert data.fails == 0 and data.counts == {}
    storage.close()


def test_slow_clients_are_timed_out_and_do_not_block_others(make_server):
    server = make_server("--timeout", "1")
    host, port = server.url[len("http://") :].split(":")
    stalled_headers = socket.create_connection((host, int(port)), timeout=30)
    stalled_headers.sendall(b"POST /beacon HTTP/1.1\r\nHost: x\r\n")
    stalled_body = socket.create_connection((host, int(port)), timeout=30)
    stalled_body.sendall(
        b"POST /beacon HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"kind\""
    )
    assert server.request("GET", "/healthz")[0] == 200  # served while both stall
    assert stalled_headers.recv(1000) == b""  # closed by the server's timeout
    answer = _read_to_close(stalled_body)
    assert answer.startswith(b"HTTP/1.1 408") and b"not received in time" in answer
    stalled_headers.close()
    stalled_body.close()
    assert _stored(server) == 0


def test_handled_errors_are_counted_per_group(server):
    server.request("POST", "/env", env_body("e1", {"packaging": "23.2"}))
    assert server.request("POST", "/beacon", error_beacon("e1", "s1", SIG, handled=True))[0] == 200
    assert server.request("POST", "/beacon", error_beacon("e1", "s1", SIG))[0] == 200
    assert server.request("POST", "/beacon", error_beacon("e1", "s1", SIG, handled=None))[0] == 200
    group = server.request("GET", "/api/errors")[1]["groups"][0]
    assert (group["count"], group["handled"]) == (3, 1)
    recent = server.request("GET", "/api/errors/%d" % group["id"])[1]["recent"]
    assert [r["handled"] for r in recent] == [False, False, True]
    status, body = server.request("POST", "/beacon", error_beacon("e1", "s1", SIG, handled="yes"))
    assert status == 400 and "handled" in body["error"]
