"""Property-based fuzzing of every route of a real corp-error-server process (hypothesis).

Requests are raw bytes on a fresh loopback connection each, so methods, header shapes, encodings
and bodies are exactly what the strategies produce. Invariants checked per request: an HTTP answer
comes back, its status is < 500, and error answers are JSON objects with an "error". Afterwards:
the server is alive, PRAGMA integrity_check is ok, and /api/errors agrees with the tables.

Used by tests/reliability/test_server_hostile.py (CEA_FUZZ_REQUESTS, default 2,000) and by
bench/fuzz_server.py (--requests, default 12,000).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import string
from typing import Dict, List, Optional, Tuple

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FIELDS = [
    "kind",
    "env_hash",
    "script_id",
    "trace",
    "ts",
    "error_sig",
    "event_id",
    "script_name",
    "agent",
    "test",
    "prev_env_hash",
    "prev_error_sig",
    "env",
    "packages",
    "python_ver",
    "os_info",
    "machine_arch",
    "env_vars",
    "python_impl",
]
SQLI = [
    "'; DROP TABLE beacons; --",
    "\" OR 1=1 --",
    "x' UNION SELECT * FROM envs --",
    "1; DELETE FROM groups",
    "Robert'); DROP TABLE groups;--",
    "%' OR '%'='",
    "\\'; --",
]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=40),
    st.sampled_from(
        [
            "error",
            "success",
            "",
            "MISSING",
            "2024-01-01T00:00:00Z",
            "9999-99-99",
            "a==1",
            "x" * 12,
            "x" * 13,
            "x" * 121,
            "\x00",
            "\u202e",
            "\ud800",
        ]
        + SQLI
    ),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=20),
    st.builds(lambda n: "y" * n, st.integers(0, 70000)),
)
json_values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=5),
        st.dictionaries(st.one_of(st.sampled_from(FIELDS), st.text(max_size=8)), inner, max_size=5),
    ),
    max_leaves=20,
)
hex12 = st.text(alphabet="0123456789abcdef", min_size=1, max_size=12)


def _plausible(route: str):
    """Bodies close to valid ones for ``route``, with a few fields replaced by anything."""
    if route == "/beacon":
        base = st.fixed_dictionaries(
            {
                "kind": st.sampled_from(["error", "success"]),
                "env_hash": hex12,
                "script_id": hex12,
                "ts": st.one_of(st.floats(0, 4e9), st.sampled_from(["2024-05-01T10:00:00Z", "2024-05-01"])),
                "error_sig": st.one_of(st.sampled_from(SQLI), st.text(max_size=60).map(lambda t: "ValueError: " + t)),
                "trace": st.text(max_size=300).map(
                    lambda t: "Traceback (most recent call last):\n" + t + "\nKeyError: x"
                ),
                "event_id": st.one_of(
                    st.text(alphabet="0123456789abcdef", min_size=32, max_size=32), st.text(max_size=40)
                ),
            }
        )
    elif route == "/env":
        base = st.fixed_dictionaries(
            {
                "env_hash": hex12,
                "packages": st.one_of(
                    st.lists(st.from_regex(r"[a-z]{1,8}==[0-9]\.[0-9]", fullmatch=True), max_size=8),
                    st.dictionaries(st.text(max_size=10), st.text(max_size=10), max_size=5),
                ),
                "python_ver": st.sampled_from(["3.11.7", "3.8.18", "x" * 21]),
                "os_info": st.text(max_size=130),
                "machine_arch": st.sampled_from(["x86_64", "arm64", ""]),
                "env_vars": st.dictionaries(
                    st.text(max_size=10), st.one_of(st.text(max_size=20), st.sampled_from(SQLI)), max_size=5
                ),
            }
        )
    else:
        base = st.fixed_dictionaries(
            {"error_sig": st.one_of(st.text(max_size=80), st.sampled_from(SQLI)), "env_hash": hex12, "script_id": hex12}
        )
    mutations = st.dictionaries(st.sampled_from(FIELDS), json_values, max_size=3)
    return st.tuples(base, mutations, st.lists(st.sampled_from(FIELDS), max_size=2)).map(
        lambda t: {k: v for k, v in dict(t[0], **t[1]).items() if k not in t[2]}
    )


def _encode(value, how: str) -> bytes:
    text = json.dumps(value, ensure_ascii=(how == "ascii"), allow_nan=True)
    if how == "utf-16":
        return text.encode("utf-16", "surrogatepass")
    if how == "latin-1":
        return text.encode("latin-1", "replace")
    return text.encode("utf-8", "surrogatepass")


bodies = {
    route: st.one_of(
        st.tuples(_plausible(route), st.sampled_from(["utf-8", "ascii", "utf-8", "utf-16", "latin-1"])).map(
            lambda t: _encode(*t)
        ),
        json_values.map(lambda v: _encode(v, "utf-8")),
        st.binary(max_size=300),
        st.sampled_from(
            [
                b"",
                b"{",
                b"[]",
                b"null",
                b"{\"kind\": NaN}",
                b"\xef\xbb\xbf{}",
                b"{}" * 1000,
                b"[" * 5000 + b"]" * 5000,
                b"{\"a\":" * 3000 + b"1" + b"}" * 3000,
            ]
        ),
    )
    for route in ("/beacon", "/env", "/suggest")
}

header_values = st.one_of(
    st.sampled_from(
        [
            "application/json",
            "application/json; charset=utf-8",
            "text/plain",
            "",
            "application/x-www-form-urlencoded",
            "JSON",
        ]
    ),
    st.text(alphabet=string.printable.replace("\r", "").replace("\n", ""), max_size=30),
)


class Target:
    """Where requests go, and what came back."""

    def __init__(self, host: str, port: int, token: Optional[str] = None):
        self.host, self.port, self.token = host, port, token
        self.statuses: Dict[int, int] = {}
        self.sent = 0
        self.failures: List[str] = []

    def send(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Optional[List[Tuple[str, str]]] = None,
        length: Optional[int] = None,
    ) -> Tuple[int, bytes]:
        head = ["%s %s HTTP/1.1" % (method, path), "Host: 127.0.0.1", "Connection: close"]
        if self.token:
            head.append("Authorization: Bearer " + self.token)
        for name, value in headers or []:
            head.append("%s: %s" % (name, value))
        head.append("Content-Length: %d" % (len(body) if length is None else length))
        raw = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1", "replace") + body
        with socket.create_connection((self.host, self.port), timeout=30) as sock:
            sock.sendall(raw)
            chunks = []
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        answer = b"".join(chunks)
        self.sent += 1
        try:
            status = int(answer.split(b" ", 2)[1])
        except (IndexError, ValueError):
            self.failures.append("no HTTP answer to %s %s %r: %r" % (method, path, body[:100], answer[:200]))
            return 0, answer
        self.statuses[status] = self.statuses.get(status, 0) + 1
        payload = answer.partition(b"\r\n\r\n")[2]
        if status >= 500:
            self.failures.append("%d for %s %s %r: %r" % (status, method, path, body[:200], payload[:200]))
        elif status >= 400 and method != "HEAD":
            try:
                assert "error" in json.loads(payload.decode("utf-8"))
            except Exception:
                self.failures.append("non-JSON error %d for %s %s: %r" % (status, method, path, payload[:200]))
        return status, payload


def fuzz(target: Target, total: int) -> None:
    """Send about ``total`` generated requests, spread over every route and the request line itself."""
    share = {"/beacon": 0.3, "/env": 0.2, "/suggest": 0.2, "get": 0.15, "anything": 0.15}
    common = dict(deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))

    for route in ("/beacon", "/env", "/suggest"):

        @settings(max_examples=max(1, int(total * share[route])), **common)
        @given(
            body=bodies[route],
            content_type=header_values,
            extra=st.lists(
                st.tuples(
                    st.sampled_from(
                        [
                            "Content-Encoding",
                            "X-Forwarded-For",
                            "Expect",
                            "Authorization",
                            "Accept",
                            "Transfer-Encoding",
                        ]
                    ),
                    header_values,
                ),
                max_size=2,
            ),
        )
        def post(body, content_type, extra):
            target.send("POST", route, body, [("Content-Type", content_type)] + extra)  # noqa: B023 (run at once)

        post()

    @settings(max_examples=max(1, int(total * share["get"])), **common)
    @given(
        path=st.one_of(
            st.sampled_from(
                [
                    "/healthz",
                    "/openapi.json",
                    "/api/errors",
                    "/api/errors/1",
                    "/api/errors/0",
                    "/api/errors/99999999999999999999",
                    "/api/errors/-1",
                    "/api/errors/1%00",
                ]
            ),
            st.integers(0, 2**64).map(lambda n: "/api/errors/%d" % n),
        ),
        query=st.one_of(
            st.just(""),
            st.sampled_from(
                ["?limit=5", "?limit=0", "?limit=x", "?offset=-1", "?limit=500&offset=99999999999", "?limit=%00"]
            ),
            st.text(alphabet=string.ascii_letters + "=&%0123456789", max_size=30).map(lambda q: "?" + q),
        ),
        method=st.sampled_from(["GET", "GET", "HEAD", "POST", "DELETE"]),
    )
    def get(path, query, method):
        target.send(method, path + query)

    get()

    @settings(max_examples=max(1, int(total * share["anything"])), **common)
    @given(
        method=st.one_of(
            st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "BREW"]),
            st.text(alphabet=string.ascii_uppercase, min_size=1, max_size=12),
        ),
        path=st.one_of(
            st.sampled_from(
                [
                    "/beacon",
                    "/env",
                    "/suggest",
                    "/",
                    "",
                    "//beacon",
                    "/beacon/",
                    "/BEACON",
                    "/api",
                    "/../etc/passwd",
                    "/%2e%2e/",
                    "*",
                ]
            ),
            st.text(alphabet=string.ascii_letters + "/%.-_~?#", max_size=40).map(lambda p: "/" + p),
        ),
        body=st.binary(max_size=200),
        headers=st.lists(
            st.tuples(st.text(alphabet=string.ascii_letters + "-", min_size=1, max_size=20), header_values), max_size=4
        ),
    )
    def anything(method, path, body, headers):
        target.send(method, path, body, headers)

    anything()


def check_database(db_path: str, target: Target) -> List[str]:
    """Integrity and agreement of /api/errors with the tables; returns the problems found."""
    problems = []
    conn = sqlite3.connect("file:%s?mode=ro" % db_path, uri=True, timeout=30)
    try:
        result = conn.execute("PRAGMA integrity_check").fetchall()
        if result != [("ok",)]:
            problems.append("integrity_check: %r" % result)
        tables = {name for (name,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in ("beacons", "envs", "groups", "counts"):
            if table not in tables:
                problems.append("table %s is gone" % table)
        db_groups = {
            gid: (errors, fails, oks)
            for gid, errors, fails, oks in conn.execute("SELECT id, errors, fails, oks FROM groups WHERE errors > 0")
        }
        for gid, errors in conn.execute(
            "SELECT group_id, COUNT(*) FROM beacons WHERE kind = 'error' AND group_id IS NOT NULL GROUP BY group_id"
        ):
            if db_groups.get(gid, (0,))[0] != errors:
                problems.append("group %s: errors %s, error beacons stored %s" % (gid, db_groups.get(gid), errors))
    finally:
        conn.close()
    api_groups = {}
    offset = 0
    while True:
        status, payload = target.send("GET", "/api/errors?limit=500&offset=%d" % offset)
        page = json.loads(payload.decode("utf-8"))["groups"]
        api_groups.update({g["id"]: (g["count"], g["failing_runs"], g["succeeding_runs"]) for g in page})
        if len(page) < 500:
            break
        offset += 500
    if api_groups != db_groups:
        diff = {
            k: (api_groups.get(k), db_groups.get(k))
            for k in set(api_groups) | set(db_groups)
            if api_groups.get(k) != db_groups.get(k)
        }
        problems.append("/api/errors disagrees with the groups table: %s" % list(diff.items())[:5])
    return problems


def requests_wanted(default: int) -> int:
    return int(os.environ.get("CEA_FUZZ_REQUESTS", default))
