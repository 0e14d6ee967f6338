"""The WSGI application: routes, input validation, JSON answers.

Every input is validated before anything is stored, so bad input is a 4xx naming the problem and
never reaches the database half-way. Column limits are those of the published Django server, so a
payload one server takes the other takes too.
"""
from __future__ import annotations

import hmac
import json
import math
import re
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import corp_error_agent

from . import engine, limits, openapi
from .storage import Beacon, Env, Storage, StorageConflict, StorageUnavailable, open_storage

DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_RETENTION_DAYS = 90
_PURGE_EVERY = 3600.0
# the wire limits (limits.py) of each request body
_BEACON, _BEACON_KEPT = limits.MAX_LENGTH["Beacon"], limits.KEPT["Beacon"]
_ENV = limits.MAX_LENGTH["Env"]
_SUGGEST, _SUGGEST_KEPT = limits.MAX_LENGTH["SuggestRequest"], limits.KEPT["SuggestRequest"]

_REASONS = {200: "OK", 201: "Created", 204: "No Content", 400: "Bad Request", 401: "Unauthorized",
            404: "Not Found", 405: "Method Not Allowed", 408: "Request Timeout", 409: "Conflict",
            411: "Length Required", 413: "Payload Too Large",
            415: "Unsupported Media Type", 500: "Internal Server Error", 503: "Service Unavailable"}


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: Iterable[Tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)

###############################################################################
# Validation ##################################################################
###############################################################################


def _text(value: Any, name: str, limit: Optional[int] = None, *, keep: Optional[int] = None,
          keep_end: bool = False, empty: bool = True) -> str:
    """A string field: type-checked, valid UTF-8, within its column limit (or cut to ``keep``)."""
    if not isinstance(value, str):
        raise HTTPError(400, "%s must be a string" % name)
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise HTTPError(400, "%s is not valid unicode (lone surrogate)" % name) from None
    if limit is not None and len(value) > limit:
        raise HTTPError(400, "%s is longer than %d characters" % (name, limit))
    if keep is not None and len(value) > keep:
        value = value[-keep:] if keep_end else value[:keep]
    if not empty and not value.strip():
        raise HTTPError(400, "%s must not be empty" % name)
    return value


def _required(body: dict, name: str) -> Any:
    if body.get(name) is None:
        raise HTTPError(400, "missing field: %s" % name)
    return body[name]


def _optional_text(body: dict, name: str, limit: Optional[int] = None, **kw) -> Optional[str]:
    value = body.get(name)
    return None if value is None else _text(value, name, limit, **kw)


def _timestamp(value: Any) -> float:
    """Epoch seconds from an epoch number or an ISO-8601 string (both clients' forms)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise HTTPError(400, "ts must be an epoch number or an ISO-8601 string")
    if isinstance(value, str):
        text = _text(value, "ts", limits.TS_TEXT).strip()
        try:
            parsed = datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
        except ValueError:
            raise HTTPError(400, "ts is not an ISO-8601 timestamp") from None
        if parsed.tzinfo is None:
            parsed = parsed.replace(tzinfo=timezone.utc)
        return parsed.timestamp()
    if not math.isfinite(float(value)) or abs(value) > 1e11:
        raise HTTPError(400, "ts is out of range")
    return float(value)


def _packages(value: Any) -> Dict[str, str]:
    if isinstance(value, dict):
        items = list(value.items())
    elif isinstance(value, list):
        items = [_split_requirement(_text(item, "packages[]", limits.PACKAGE_ITEM)) for item in value]
    else:
        raise HTTPError(400, "packages must be a list of \"name==version\" or a {name: version} object")
    if len(items) > limits.PACKAGES:
        raise HTTPError(400, "packages has more than %d entries" % limits.PACKAGES)
    packages: Dict[str, str] = {}
    for name, version in items:
        name = _text(name, "package name", limits.PACKAGE_NAME, empty=False)
        version = "unknown" if version is None else _text(version, "version of " + name[:50], limits.PACKAGE_VERSION)
        packages[engine.canonical_name(name)] = version.strip() or "unknown"
    return packages


def _split_requirement(item: str) -> Tuple[str, str]:
    name, sep, version = item.partition("==")
    if not sep:
        name = re.split(r"[\s@<>=!~;\[]", item.strip(), maxsplit=1)[0]
    return name, version


def _env_vars(value: Any) -> Dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise HTTPError(400, "env_vars must be an object {NAME: value}")
    if len(value) > limits.ENV_VARS:
        raise HTTPError(400, "env_vars has more than %d entries" % limits.ENV_VARS)
    return {_text(k, "env_vars name", limits.ENV_VAR_NAME, empty=False): (
                "MISSING" if v is None else _text(v, "env_vars[%s]" % k[:50], limits.ENV_VAR_VALUE))
            for k, v in value.items()}


def parse_env(body: dict, env_hash: Optional[str] = None) -> Env:
    env_hash = env_hash or _text(_required(body, "env_hash"), "env_hash", _ENV["env_hash"], empty=False)
    snapshot: Dict[str, Any] = {
        "packages": _packages(_required(body, "packages")),
        "python_ver": _text(_required(body, "python_ver"), "python_ver", _ENV["python_ver"]),
        "python_impl": _optional_text(body, "python_impl", _ENV["python_impl"]) or "",
        "os_info": _text(_required(body, "os_info"), "os_info", _ENV["os_info"]),
        "machine_arch": _text(_required(body, "machine_arch"), "machine_arch", _ENV["machine_arch"]),
        "env_vars": _env_vars(body.get("env_vars")),
    }
    features = engine.env_features(snapshot["packages"], snapshot["python_ver"].strip(), snapshot["python_impl"],
                                   snapshot["os_info"], snapshot["machine_arch"], snapshot["env_vars"])
    return Env(env_hash, snapshot, features)


def _group_of(error_sig: Optional[str], trace: Optional[str]) -> str:
    for text in (error_sig, trace):
        key = corp_error_agent.group_key(text) if text else ""
        if key:
            return key
    raise HTTPError(400, "an error beacon needs an error_sig or a trace with an exception line")


def parse_beacon(body: dict) -> Tuple[Beacon, Optional[Env]]:
    kind = _text(_required(body, "kind"), "kind", max(map(len, limits.KINDS)))
    if kind not in limits.KINDS:
        raise HTTPError(400, "kind must be \"error\" or \"success\"")
    env_hash = _text(_required(body, "env_hash"), "env_hash", _BEACON["env_hash"], empty=False)
    script_id = _text(_required(body, "script_id"), "script_id", _BEACON["script_id"], empty=False)
    ts = _timestamp(_required(body, "ts"))
    trace = _optional_text(body, "trace", keep=_BEACON_KEPT["trace"], keep_end="trace" in limits.KEPT_AT_END)
    error_sig = _optional_text(body, "error_sig", keep=_BEACON_KEPT["error_sig"])
    event_id = _optional_text(body, "event_id", _BEACON["event_id"], empty=False)
    test = body.get("test", False)
    if not isinstance(test, bool):
        raise HTTPError(400, "test must be a boolean")
    handled = False if body.get("handled") is None else body["handled"]
    if not isinstance(handled, bool):
        raise HTTPError(400, "handled must be a boolean")
    prev_env_hash = _optional_text(body, "prev_env_hash", _BEACON["prev_env_hash"], empty=False)
    prev_error_sig = _optional_text(body, "prev_error_sig", keep=_BEACON_KEPT["prev_error_sig"])
    group = mentions = None
    if kind == "error":
        group = _group_of(error_sig, trace)
        mentions = engine.mentioned_packages((trace or "") + "\n" + (error_sig or ""))
    prev_group = corp_error_agent.group_key(prev_error_sig) or None if prev_error_sig and kind == "success" else None
    inline = body.get("env")
    if inline is not None and not isinstance(inline, dict):
        raise HTTPError(400, "env must be an object like the /env body")
    beacon = Beacon(kind, env_hash, script_id, group, error_sig, trace, ts, event_id,
                    _optional_text(body, "script_name", keep=_BEACON_KEPT["script_name"]),
                    _optional_text(body, "agent", keep=_BEACON_KEPT["agent"]), test,
                    prev_env_hash if kind == "success" else None, prev_group, frozenset(mentions or ()),
                    handled and kind == "error")
    return beacon, (parse_env(inline, env_hash) if inline else None)

###############################################################################
# The application #############################################################
###############################################################################


class _App:
    def __init__(self, storage: Storage, token: Optional[str], retention_days: float, max_body: int) -> None:
        self.storage = storage
        self._token = token.encode("utf-8") if token else None
        self._retention = retention_days * 86400.0
        self._max_body = max_body
        self._purge_lock = threading.Lock()
        self._next_purge = 0.0
        self._schema_version = storage.schema_version()
        self._routes: Dict[str, Dict[str, Callable]] = {
            "/beacon": {"POST": self._beacon}, "/env": {"POST": self._env}, "/suggest": {"POST": self._suggest},
            "/healthz": {"GET": self._healthz}, "/api/errors": {"GET": self._errors},
            "/openapi.json": {"GET": self._openapi},
        }
        self._maybe_purge()

    # -- WSGI -------------------------------------------------------------------------------

    def __call__(self, environ: dict, start_response) -> List[bytes]:
        try:
            status, payload, headers = self._dispatch(environ)
        except HTTPError as error:
            status, payload, headers = error.status, {"error": error.message}, error.headers
        except StorageUnavailable as error:
            _log_line(environ, "storage unavailable: %s" % error)
            status, payload, headers = 503, {"error": "storage unavailable: %s" % error}, [("Retry-After", "1")]
        except StorageConflict as error:
            status, payload, headers = 409, {"error": str(error)}, []
        except Exception:
            _log_exception(environ)
            status, payload, headers = 500, {"error": "internal error"}, []
        body = b"" if status == 204 else json.dumps(payload).encode("utf-8")
        headers = list(headers)
        if status != 204:
            headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        start_response("%d %s" % (status, _REASONS.get(status, "Error")), headers)
        return [body]

    def _dispatch(self, environ: dict) -> Tuple[int, Any, List[Tuple[str, str]]]:
        path = environ.get("PATH_INFO") or "/"
        method = environ.get("REQUEST_METHOD", "GET")
        match = re.fullmatch(r"/api/errors/(\d{1,18})", path)
        routes: Optional[Dict[str, Callable]] = {"GET": self._error} if match else self._routes.get(path)
        if routes is None:
            raise HTTPError(404, "no such path: %s" % path[:200])
        if path != "/healthz":
            self._authorise(environ)
        handler = routes.get(method)
        if handler is None:
            raise HTTPError(405, "method %s not allowed on %s" % (method[:20], path),
                            [("Allow", ", ".join(sorted(routes)))])
        if method == "POST":
            return handler(self._json_body(environ))
        return handler(int(match.group(1))) if match else handler(environ)

    def _authorise(self, environ: dict) -> None:
        if self._token is None:
            return
        given = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, credential = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(credential.strip().encode("utf-8", "replace"),
                                                                 self._token):
            raise HTTPError(401, "missing or wrong bearer token", [("WWW-Authenticate", "Bearer")])

    def _json_body(self, environ: dict) -> dict:
        content_type = environ.get("CONTENT_TYPE", "")
        if content_type and "json" not in content_type.lower():
            raise HTTPError(415, "Content-Type must be application/json")
        if environ.get("HTTP_CONTENT_ENCODING", "identity").lower() not in ("", "identity"):
            raise HTTPError(415, "compressed bodies are not accepted")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise HTTPError(400, "Content-Length is not a number") from None
        if length > self._max_body:
            # refuse before reading: a client cannot make the server buffer an unbounded body
            raise HTTPError(413, "body of %d bytes is over the limit of %d" % (length, self._max_body))
        if length <= 0:
            raise HTTPError(400, "empty body: a JSON object is required")
        try:
            raw = environ["wsgi.input"].read(length)
        except OSError:   # the client stalled past the connection timeout, or went away
            raise HTTPError(408, "request body not received in time") from None
        if len(raw) < length:
            raise HTTPError(400, "body shorter than Content-Length")
        try:
            body = json.loads(raw.decode("utf-8-sig"), parse_constant=_reject_constant)
        except UnicodeDecodeError:
            raise HTTPError(400, "body is not UTF-8") from None
        except RecursionError:
            raise HTTPError(400, "JSON nested too deeply") from None
        except ValueError as error:
            raise HTTPError(400, "malformed JSON: %s" % str(error)[:200]) from None
        if not isinstance(body, dict):
            raise HTTPError(400, "body must be a JSON object")
        return body

    def _maybe_purge(self) -> None:
        now = time.time()
        if now < self._next_purge or not self._purge_lock.acquire(blocking=False):
            return
        try:
            self._next_purge = now + _PURGE_EVERY
            self.storage.purge(now - self._retention)
        finally:
            self._purge_lock.release()

    # -- routes -----------------------------------------------------------------------------

    def _beacon(self, body: dict):
        beacon, env = parse_beacon(body)
        self._maybe_purge()
        result = self.storage.add_beacon(beacon, env)
        if not result.env_known:
            return 204, None, []
        return 200, {"ok": True, "duplicate": result.duplicate}, []

    def _env(self, body: dict):
        created = self.storage.add_env(parse_env(body))
        return (201 if created else 200), {"ok": True, "created": created}, []

    def _suggest(self, body: dict):
        error_sig = _text(_required(body, "error_sig"), "error_sig", keep=_SUGGEST_KEPT["error_sig"], empty=False)
        env_hash = _text(_required(body, "env_hash"), "env_hash", _SUGGEST["env_hash"])
        script_id = _optional_text(body, "script_id", _SUGGEST["script_id"])
        key = corp_error_agent.group_key(error_sig)
        group = self.storage.group_data(key, script_id) if key else None
        if group is None:
            return 200, {"match": False, "reason": "no runs of this error yet"}, []
        return 200, engine.suggest(group, self.storage.env_features(env_hash)), []

    def _healthz(self, environ: dict):
        return 200, {"ok": True, "schema_version": self._schema_version}, []

    def _openapi(self, environ: dict):
        return 200, openapi.spec(self._max_body), []

    def _errors(self, environ: dict):
        query = _query(environ)
        limit = _int_param(query, "limit", 50, 1, 500)
        offset = _int_param(query, "offset", 0, 0, 10 ** 9)
        groups = [dict(row.info, suggestion=engine.suggest(row.data, row.latest_features))
                  for row in self.storage.list_groups(limit, offset)]
        return 200, {"groups": groups, "limit": limit, "offset": offset}, []

    def _error(self, group_id: int):
        row = self.storage.get_group(group_id)
        if row is None:
            raise HTTPError(404, "no error group %d" % group_id)
        return 200, dict(row.info, suggestion=engine.suggest(row.data, row.latest_features),
                         comparison=engine.comparison(row.data)), []


def _reject_constant(name: str):
    raise ValueError("%s is not valid JSON" % name)


def _query(environ: dict) -> Dict[str, str]:
    from urllib.parse import parse_qsl
    return dict(parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True))


def _int_param(query: Dict[str, str], name: str, default: int, low: int, high: int) -> int:
    if name not in query:
        return default
    try:
        value = int(query[name])
    except ValueError:
        raise HTTPError(400, "%s must be an integer" % name) from None
    if not low <= value <= high:
        raise HTTPError(400, "%s must be between %d and %d" % (name, low, high))
    return value


def _log_line(environ: dict, line: str) -> None:
    stream = environ.get("wsgi.errors") or sys.stderr
    try:
        stream.write(line + "\n")
    except Exception:
        pass


def _log_exception(environ: dict) -> None:
    stream = environ.get("wsgi.errors") or sys.stderr
    try:
        stream.write(traceback.format_exc())
    except Exception:
        pass


def create_app(db_path: str, *, token: Optional[str] = None, retention_days: float = DEFAULT_RETENTION_DAYS,
               max_body: int = DEFAULT_MAX_BODY, storage: Optional[Storage] = None) -> _App:
    """A WSGI application storing into ``db_path``: a SQLite file, or a ``postgresql://`` URL."""
    return _App(storage or open_storage(db_path), token, retention_days, max_body)
