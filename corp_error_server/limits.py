"""Wire limits: how long each field of ``/beacon``, ``/env`` and ``/suggest`` may be, defined once.

The application validates with these (app.py) and /openapi.json states them (openapi.py);
tests/server/test_schema.py checks the running server against that document. The lengths are the
column limits of the published Django server, so a payload one server takes the other takes too.
"""

from __future__ import annotations

from typing import Dict

HASH = 12  # env_hash, script_id, prev_env_hash: the 12 hex digits both clients send
KINDS = ("error", "success")

# schema -> field -> the most characters it may have; a longer value is refused (400)
MAX_LENGTH: Dict[str, Dict[str, int]] = {
    "Beacon": {"env_hash": HASH, "script_id": HASH, "prev_env_hash": HASH, "event_id": 64},
    "Env": {"env_hash": HASH, "python_ver": 20, "python_impl": 40, "os_info": 120, "machine_arch": 20},
    "SuggestRequest": {"env_hash": HASH, "script_id": HASH},
}
# schema -> field -> characters kept of a longer value: a trace's end (where the error is), the
# start of the others. 25,000 is what the 0.4.2 client sends at most; our agent sends less.
KEPT: Dict[str, Dict[str, int]] = {
    "Beacon": {
        "trace": 25_000,
        "error_sig": 2_000,
        "prev_error_sig": 2_000,
        "script_name": 256,
        "agent": 100,
        "host": 255,
    },
    "SuggestRequest": {"error_sig": 2_000},
}
KEPT_AT_END = {"trace"}

# GET /api/errors: query parameter -> the most characters it may have
QUERY: Dict[str, int] = {"q": 200, "script": HASH, "package": 300}

TS_TEXT = 64  # an ISO-8601 ts
PACKAGES = 10_000  # entries of an environment's package list
PACKAGE_ITEM = 400  # one "name==version" entry
PACKAGE_NAME = 200
PACKAGE_VERSION = 100
ENV_VARS = 500  # entries of env_vars
ENV_VAR_NAME = 100
ENV_VAR_VALUE = 4_000
