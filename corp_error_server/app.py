"""The WSGI application: routes, input validation, JSON answers.

Every input is validated before anything is stored, so bad input is a 4xx naming the problem and
never reaches the database half-way. Column limits are those of the published Django server, so a
payload one server takes the other takes too.

The app is plain blocking WSGI (gunicorn runs it as it is): a beacon's request returns once its
write committed. A server may offer ``environ["corp_error_server.defer"]`` (the embedded one does,
see server.py): a callable that, called, returns ``respond(status, headers, body)`` and makes the
server ignore what the app call returns; the request is then answered by calling ``respond`` from
any thread, once. The app uses it for ``/beacon`` and ``/env`` (``INLINE_PATHS``): the write is
handed to the committer with a callback, and the thread that committed it hands the answer over,
so no thread waits on a commit per request.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import http.cookies
import json
import math
import os
import re
import sys
import threading
import time
import traceback
from datetime import datetime, timezone
from typing import Any, Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple
from urllib.parse import parse_qsl, quote

import corp_error_agent

from . import ahead, alerts, engine, ingest, limits, openapi, pages
from .storage import (
    GROUP_SORTS,
    GROUP_STATUSES,
    Beacon,
    BeaconResult,
    Env,
    GroupHead,
    GroupQuery,
    GroupState,
    Storage,
    StorageConflict,
    StorageError,
    StorageUnavailable,
    open_storage,
)

DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_RETENTION_DAYS = 90
_PURGE_EVERY = 3600.0
# the wire limits (limits.py) of each request body
_BEACON, _BEACON_KEPT = limits.MAX_LENGTH["Beacon"], limits.KEPT["Beacon"]
_ENV = limits.MAX_LENGTH["Env"]
_SUGGEST, _SUGGEST_KEPT = limits.MAX_LENGTH["SuggestRequest"], limits.KEPT["SuggestRequest"]

_REASONS = {
    200: "OK",
    201: "Created",
    204: "No Content",
    303: "See Other",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    409: "Conflict",
    411: "Length Required",
    413: "Payload Too Large",
    415: "Unsupported Media Type",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


_DEFERRED = object()  # a handler's answer: given later, through the server's defer extension


class HTTPError(Exception):
    def __init__(self, status: int, message: str, headers: Iterable[Tuple[str, str]] = ()) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = list(headers)


class Page(NamedTuple):
    """A non-JSON answer: an HTML page or a static file."""

    body: str
    content_type: str = "text/html; charset=utf-8"


# Every answer carries these; the pages load nothing but /static/ from this origin and cannot be framed.
_SECURITY_HEADERS = [
    (
        "Content-Security-Policy",
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
    ),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    ("Referrer-Policy", "no-referrer"),
]
_STATIC = {
    "/static/app.css": Page(pages.APP_CSS, "text/css; charset=utf-8"),
    "/static/app.js": Page(pages.APP_JS, "text/javascript; charset=utf-8"),
}
INLINE_PATHS = frozenset(("/beacon", "/env"))  # quick to answer: validation, then a deferred write
DEFER = "corp_error_server.defer"
_MACHINE_PATHS = ("/beacon", "/env", "/suggest", "/healthz", "/openapi.json")


def _for_machines(path: str) -> bool:
    """The wire, the API and static files answer in JSON; everything else is a page for a person."""
    return path in _MACHINE_PATHS or path.startswith(("/api/", "/static/"))


_SESSION_COOKIE, _CSRF_COOKIE = "cea_session", "cea_csrf"
_MAX_FORM = 8192
_TRIAGE = {"resolve": "resolved", "ignore": "ignored", "reopen": "new"}
_SPARK_DAYS, _CHART_DAYS, _FLEET_DAYS = 14, 30, 14
_SUGGESTIONS_KEPT = 20_000  # groups whose last answer the pages keep
_STATES_KEPT = 2000  # groups whose engine input stays in memory (a few hundred count rows each)
_SOURCES_SHOWN = 50  # scripts and environments a group page lists
_FIXES_SHOWN = 5  # observed fixes a group page diffs

###############################################################################
# Validation ##################################################################
###############################################################################


def _text(
    value: Any,
    name: str,
    limit: Optional[int] = None,
    *,
    keep: Optional[int] = None,
    keep_end: bool = False,
    empty: bool = True,
) -> str:
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
    return {
        _text(k, "env_vars name", limits.ENV_VAR_NAME, empty=False): (
            "MISSING" if v is None else _text(v, "env_vars[%s]" % k[:50], limits.ENV_VAR_VALUE)
        )
        for k, v in value.items()
    }


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
    features = engine.env_features(
        snapshot["packages"],
        snapshot["python_ver"].strip(),
        snapshot["python_impl"],
        snapshot["os_info"],
        snapshot["machine_arch"],
        snapshot["env_vars"],
    )
    return Env(env_hash, snapshot, features)


def _group_of(error_sig: Optional[str], trace: Optional[str]) -> str:
    """A bug's key: its normalised exception line and, after " @ ", where it is raised.

    Deterministic in its input whatever that is: the line comes from the signature, else from the
    trace's last line; the place from the trace's frames, else the signature's (engine.where_raised).
    """
    for text in (error_sig, trace):
        message = corp_error_agent.group_key(text) if text else ""
        if message:
            where = engine.where_raised(error_sig or trace or "", trace or "")
            return message + " @ " + where if where else message
    raise HTTPError(400, "an error beacon needs an error_sig or a trace with an exception line")


@functools.lru_cache(maxsize=256)
def _error_identity(error_sig: Optional[str], trace: Optional[str]) -> Tuple[str, frozenset]:
    """(group key, packages mentioned) of an error: the costliest part of reading a beacon (regular
    expressions over the whole trace), and a function of these two strings only. A burst is the same
    few errors from many machines, so most beacons find theirs here."""
    return _group_of(error_sig, trace), frozenset(engine.mentioned_packages((trace or "") + "\n" + (error_sig or "")))


def candidate_groups(storage: Storage, signature: str, env_hash: str, script_id: Optional[str]) -> List[GroupHead]:
    """The groups a signature without its trace may belong to (/suggest, a success's previous
    failure): one when the runs say which, else those of its line it may be in, busiest first.

    A 0.4.2 signature has no frames and ours names modules, not files: the group the same
    environment's (and script's) last error of that exception line went to says it best; then the
    group the script's errors went to from other environments (our agent's script_id hashes the
    script's content: the same script anywhere); then the groups whose place the signature's frames
    fit, else all of that line (a 0.4.2 client asking before its beacon is stored: only the
    environment can tell, which the engine weighs).
    """
    message = corp_error_agent.group_key(signature)
    heads = storage.group_heads(message) if message else []
    if len(heads) <= 1:
        return heads
    keys = [head.key for head in heads]
    for script in (script_id, None) if script_id else (None,):
        key = storage.last_error_group(keys, env_hash, script)
        if key:
            return [heads[keys.index(key)]]
    scripts = storage.script_groups(keys, script_id) if script_id else []
    if scripts:
        return [heads[keys.index(scripts[0])]]  # the busiest of them
    fitting = [head for head in heads if engine.places_match(head.key.partition(" @ ")[2], signature)]
    return fitting or heads


def parse_beacon(body: dict) -> Tuple[Beacon, Optional[Env], Optional[str]]:
    """The beacon, its inline environment, and the signature of the failure a success follows:
    that failure's group is, until ``with_previous_group`` resolves it, the group its own line and
    places make (a read of storage, done where the beacon is written)."""
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
    group, mentions = _error_identity(error_sig, trace) if kind == "error" else (None, frozenset())
    follows = prev_error_sig if prev_error_sig and kind == "success" else None
    prev_group = _group_of(follows, None) if follows and corp_error_agent.group_key(follows) else None
    inline = body.get("env")
    if inline is not None and not isinstance(inline, dict):
        raise HTTPError(400, "env must be an object like the /env body")
    beacon = Beacon(
        kind=kind,
        env_hash=env_hash,
        script_id=script_id,
        group_key=group,
        signature=error_sig,
        trace=trace,
        ts=ts,
        event_id=event_id,
        script_name=_optional_text(body, "script_name", keep=_BEACON_KEPT["script_name"]),
        agent=_optional_text(body, "agent", keep=_BEACON_KEPT["agent"]),
        test=test,
        prev_env_hash=prev_env_hash if kind == "success" else None,
        prev_group_key=prev_group,
        mentions=mentions,
        handled=handled and kind == "error",
        host=_optional_text(body, "host", keep=_BEACON_KEPT["host"]) or None,
    )
    return beacon, (parse_env(inline, env_hash) if inline else None), follows


def with_previous_group(storage: Storage, beacon: Beacon, follows: str) -> Beacon:
    """``beacon`` (a success after the failure ``follows``) naming the group that failure is in."""
    resolved = candidate_groups(storage, follows, beacon.prev_env_hash or beacon.env_hash, beacon.script_id)
    return beacon._replace(prev_group_key=resolved[0].key) if resolved else beacon


###############################################################################
# The application #############################################################
###############################################################################


class _App:
    def __init__(
        self,
        storage: Storage,
        token: Optional[str],
        retention_days: float,
        max_body: int,
        max_waiting: int,
        webhooks: Sequence[alerts.Webhook] = (),
    ) -> None:
        self.storage = storage
        self._committer = ingest.Committer(storage, max_waiting)
        self._token = token.encode("utf-8") if token else None
        self._session = (
            hmac.new(self._token, b"corp-error-server dashboard session", hashlib.sha256).hexdigest()
            if self._token
            else ""
        )
        self._retention = retention_days * 86400.0
        self._max_body = max_body
        self._purge_lock = threading.Lock()
        self._next_purge = 0.0
        self._purger: Optional[threading.Thread] = None
        self._schema_version = storage.schema_version()
        self._alerts = alerts.Alerts(webhooks, self._alert_events) if webhooks else None
        # group id -> what was computed from it, under the group's revision then (and the requester)
        self._states: Dict[int, GroupState] = {}
        self._suggested: Dict[int, Tuple[tuple, dict]] = {}
        self._compared: Dict[int, Tuple[int, List[dict]]] = {}
        self._suggested_lock = threading.Lock()
        self._ahead = ahead.Ahead(self._suggest_ahead)
        self._routes: Dict[str, Dict[str, Callable]] = {
            "/beacon": {"POST": self._beacon},
            "/env": {"POST": self._env},
            "/suggest": {"POST": self._suggest},
            "/healthz": {"GET": self._healthz},
            "/api/errors": {"GET": self._errors},
            "/openapi.json": {"GET": self._openapi},
            "/": {"GET": self._list_page},
            "/fleet": {"GET": self._fleet_page},
            "/diff": {"GET": self._diff_page},
            "/login": {"GET": self._login_page, "POST": self._login},
            "/favicon.ico": {"GET": self._no_icon},
        }
        self._patterns: List[Tuple[re.Pattern[str], Dict[str, Callable]]] = [
            (re.compile(r"/api/errors/(\d{1,18})"), {"GET": self._error}),
            (re.compile(r"/group/(\d{1,18})"), {"GET": self._group_page}),
            (re.compile(r"/group/(\d{1,18})/status"), {"POST": self._triage}),
            (re.compile(r"/env/([^/]{1,%d})" % limits.HASH), {"GET": self._env_page}),
        ]
        self._maybe_purge()

    def close(self) -> None:
        self._ahead.close()
        if self._alerts is not None:
            self._alerts.close()
        if self._purger is not None:
            self._purger.join(timeout=30)
        self.storage.close()

    # -- WSGI -------------------------------------------------------------------------------

    def __call__(self, environ: dict, start_response) -> List[bytes]:
        path = environ.get("PATH_INFO") or "/"
        answer = self._answer(environ, path, lambda: self._dispatch(environ, path))
        if answer is None:  # answered through the server's defer extension
            return []
        start_response(answer[0], answer[1])
        return [answer[2]]

    def _answer(self, environ: dict, path: str, compute: Callable) -> Optional[Tuple[str, list, bytes]]:
        """(status line, headers, body) of what ``compute()`` gives or raises; None when deferred."""
        is_page = not _for_machines(path)
        try:
            computed = compute()
            if computed is _DEFERRED:
                return None
            status, payload, headers = computed
        except HTTPError as error:
            status, payload, headers = error.status, {"error": error.message}, error.headers
        except ingest.Busy as error:
            status, payload, headers = 503, {"error": "busy: %s" % error}, [("Retry-After", str(ingest.RETRY_AFTER))]
        except StorageUnavailable as error:
            _log_line(environ, "storage unavailable: %s" % error)
            status, payload, headers = 503, {"error": "storage unavailable: %s" % error}, [("Retry-After", "1")]
        except StorageConflict as error:
            status, payload, headers = 409, {"error": str(error)}, []
        except Exception:
            _log_exception(environ)
            status, payload, headers = 500, {"error": "internal error"}, []
        headers = list(headers) + _SECURITY_HEADERS
        if is_page and isinstance(payload, dict) and "text/html" in environ.get("HTTP_ACCEPT", ""):
            if status == 401:
                payload = Page(pages.login_page(_here(environ), wrong=False))
            else:
                payload = Page(pages.error_page(status, payload.get("error", "")))
        if isinstance(payload, Page):
            body = payload.body.encode("utf-8")
            headers += [
                ("Content-Type", payload.content_type),
                ("Content-Length", str(len(body))),
                ("Cache-Control", "no-store" if is_page else "max-age=3600"),
            ]
            if is_page and environ.get("cea.new_csrf"):
                headers.append(("Set-Cookie", _cookie(environ, _CSRF_COOKIE, environ["cea.csrf"])))
        else:
            body = b"" if status in (204, 303) else json.dumps(payload).encode("utf-8")
            if status not in (204, 303):
                headers += [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
        return "%d %s" % (status, _REASONS.get(status, "Error")), headers, body

    def _dispatch(self, environ: dict, path: str) -> Tuple[int, Any, List[Tuple[str, str]]]:
        method = environ.get("REQUEST_METHOD", "GET")
        if path in _STATIC:
            if method != "GET":
                raise HTTPError(405, "method %s not allowed on %s" % (method[:20], path), [("Allow", "GET")])
            return 200, _STATIC[path], []
        routes: Optional[Dict[str, Callable]] = self._routes.get(path)
        args: Tuple[str, ...] = ()
        if routes is None:
            for pattern, candidate in self._patterns:
                match = pattern.fullmatch(path)
                if match:
                    routes, args = candidate, match.groups()
                    break
        if routes is None:
            raise HTTPError(404, "no such path: %s" % path[:200])
        self._authorise(environ, path)
        handler = routes.get(method)
        if handler is None:
            raise HTTPError(
                405, "method %s not allowed on %s" % (method[:20], path), [("Allow", ", ".join(sorted(routes)))]
            )
        if path in INLINE_PATHS:
            return handler(self._json_body(environ), environ)
        if path == "/suggest":
            return handler(self._json_body(environ))
        return handler(environ, *args)

    def _authorise(self, environ: dict, path: str) -> None:
        """Machines show the bearer token; a browser its session cookie, got once from /login."""
        cookies = _cookies(environ)
        environ["cea.cookies"] = cookies
        if not _for_machines(path):
            csrf = cookies.get(_CSRF_COOKIE, "")
            if not re.fullmatch(r"[0-9a-f]{32}", csrf):
                csrf, environ["cea.new_csrf"] = os.urandom(16).hex(), True
            environ["cea.csrf"] = csrf
        if self._token is None or path in ("/healthz", "/login", "/favicon.ico"):
            return
        given = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, credential = given.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
            credential.strip().encode("utf-8", "replace"), self._token
        ):
            return
        session = cookies.get(_SESSION_COOKIE, "")
        if (
            session
            and hmac.compare_digest(session.encode("utf-8", "replace"), self._session.encode("ascii"))
            and (not _for_machines(path) or environ.get("REQUEST_METHOD") == "GET")
        ):
            return
        if _for_machines(path):
            raise HTTPError(401, "missing or wrong bearer token", [("WWW-Authenticate", "Bearer")])
        raise HTTPError(401, "sign in with the server's token")

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
        except OSError:  # the client stalled past the connection timeout, or went away
            raise HTTPError(408, "request body not received in time") from None
        if len(raw) < length:
            raise HTTPError(400, "body shorter than Content-Length")
        try:
            body = _JSON.decode(raw.decode("utf-8-sig"))
        except UnicodeDecodeError:
            raise HTTPError(400, "body is not UTF-8") from None
        except RecursionError:
            raise HTTPError(400, "JSON nested too deeply") from None
        except ValueError as error:
            raise HTTPError(400, "malformed JSON: %s" % str(error)[:200]) from None
        if not isinstance(body, dict):
            raise HTTPError(400, "body must be a JSON object")
        return body

    def _form_body(self, environ: dict) -> Dict[str, str]:
        """A small urlencoded form (the dashboard's POSTs)."""
        if "application/x-www-form-urlencoded" not in environ.get("CONTENT_TYPE", "").lower():
            raise HTTPError(415, "Content-Type must be application/x-www-form-urlencoded")
        try:
            length = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            raise HTTPError(400, "Content-Length is not a number") from None
        if not 0 <= length <= _MAX_FORM:
            raise HTTPError(413, "form of %d bytes is over the limit of %d" % (length, _MAX_FORM))
        try:
            raw = environ["wsgi.input"].read(length) if length else b""
        except OSError:
            raise HTTPError(408, "request body not received in time") from None
        try:
            return dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True, max_num_fields=20))
        except (UnicodeDecodeError, ValueError):
            raise HTTPError(400, "the form is not valid") from None

    def _check_csrf(self, environ: dict, form: Dict[str, str]) -> None:
        """The form's token must be the one in this browser's cookie, and the POST must come from our pages."""
        expected = environ.get("cea.cookies", {}).get(_CSRF_COOKIE, "")
        given = form.get("csrf", "")
        if not expected or not hmac.compare_digest(
            given.encode("utf-8", "replace"), expected.encode("utf-8", "replace")
        ):
            raise HTTPError(
                403, "the form is stale or did not come from this dashboard (CSRF check); reload the page and try again"
            )
        origin = environ.get("HTTP_ORIGIN")
        if origin and origin != "null" and origin.split("://", 1)[-1] != environ.get("HTTP_HOST", ""):
            raise HTTPError(403, "cross-origin form refused")

    def _maybe_purge(self) -> None:
        """Start the retention purge in a thread when it is due (one at a time per process): a large
        purge would otherwise hold the request that happened to trigger it."""
        now = time.time()
        if now < self._next_purge or not self._purge_lock.acquire(blocking=False):
            return
        self._next_purge = now + _PURGE_EVERY
        self._purger = threading.Thread(target=self._purge, args=(now - self._retention,), name="purge", daemon=True)
        self._purger.start()

    def _purge(self, older_than: float) -> None:
        try:
            self.storage.purge(older_than)
        except StorageError as error:  # the database down or busy: tried again on the next request
            self._next_purge = 0.0
            _log_line({}, "retention purge failed: %s" % error)
        finally:
            self._purge_lock.release()

    # -- wire routes ------------------------------------------------------------------------

    def _store(
        self,
        environ: dict,
        beacon: Optional[Beacon],
        env: Optional[Env],
        answer: Callable,
        prepare: Optional[ingest.Prepare] = None,
    ):
        """``answer(result)`` once the write committed: now, or, when the server can defer the
        request's answer, from the committing thread (``_DEFERRED`` now)."""
        defer = environ.get(DEFER)
        if defer is None:
            return answer(self._committer.add(beacon, env, prepare))
        path = environ.get("PATH_INFO") or "/"
        respond = defer()

        def committed(result: Optional[BeaconResult], error: Optional[BaseException]) -> None:
            def compute():
                if error is not None:
                    raise error
                return answer(result)

            given = self._answer(environ, path, compute)
            assert given is not None  # (compute gives an answer, not _DEFERRED)
            respond(*given)

        try:
            self._committer.submit(beacon, env, committed, prepare)
        except ingest.Busy as error:
            committed(None, error)
        return _DEFERRED

    def _beacon(self, body: dict, environ: dict):
        beacon, env, follows = parse_beacon(body)
        self._maybe_purge()
        if follows is None:
            return self._store(environ, beacon, env, functools.partial(self._stored_beacon, beacon))
        # The previous failure's group is read from storage on the committing thread: on the
        # embedded server's loop that read would hold every connection while the database is slow.
        stored = [beacon]

        def prepare() -> Beacon:
            stored[0] = with_previous_group(self.storage, beacon, follows)
            return stored[0]

        return self._store(environ, beacon, env, lambda result: self._stored_beacon(stored[0], result), prepare)

    def _stored_beacon(self, beacon: Beacon, result: BeaconResult):
        moved = beacon.group_key or beacon.prev_group_key
        if moved and not beacon.test and not result.duplicate:
            self._ahead.note(moved)
        if self._alerts is not None and not beacon.test and not result.duplicate:
            if beacon.group_key:
                self._alerts.note(beacon.group_key, result.new_group, result.regressed)
            elif beacon.prev_group_key:
                self._alerts.note(beacon.prev_group_key)
        if not result.env_known:
            return 204, None, []
        return 200, {"ok": True, "duplicate": result.duplicate}, []

    def _env(self, body: dict, environ: dict):
        return self._store(environ, None, parse_env(body), _stored_env)

    def _suggest(self, body: dict):
        error_sig = _text(_required(body, "error_sig"), "error_sig", keep=_SUGGEST_KEPT["error_sig"], empty=False)
        env_hash = _text(_required(body, "env_hash"), "env_hash", _SUGGEST["env_hash"])
        script_id = _optional_text(body, "script_id", _SUGGEST["script_id"])
        heads = candidate_groups(self.storage, error_sig, env_hash, script_id)[: engine.MAX_CANDIDATES]
        if not heads:
            return 200, {"match": False, "reason": "no runs of this error yet"}, []
        states = self._group_states({head.id: head.revision for head in heads})
        requester = self.storage.env_features(env_hash)
        if len(heads) == 1:
            return 200, engine.suggest(states[heads[0].id].data, requester), []
        return 200, engine.suggest_among([states[head.id].data for head in heads], requester), []

    def _healthz(self, environ: dict):
        self.storage.ping()  # the database down: StorageUnavailable, a 503 (bounded by the storage's timeouts)
        return 200, {"ok": True, "schema_version": self._schema_version, "ingest": self._committer.stats()}, []

    def _openapi(self, environ: dict):
        return 200, openapi.spec(self._max_body), []

    # -- what pages and the API share -------------------------------------------------------

    def _group_states(self, revisions: Dict[int, int]) -> Dict[int, GroupState]:
        """The engine's input of each group (id -> revision): the one kept when the group has not moved
        since, else read (at its revision by then) and kept."""
        with self._suggested_lock:
            states = {
                g: self._states[g]
                for g, revision in revisions.items()
                if g in self._states and self._states[g].revision == revision
            }
        missing = [g for g in revisions if g not in states]
        if missing:
            read = self.storage.group_states(missing)
            states.update(read)
            with self._suggested_lock:
                if len(self._states) + len(read) > _STATES_KEPT:
                    self._states.clear()
                self._states.update(read)
        return states

    def _suggestions(self, groups: Sequence[dict]) -> None:
        """Each group's suggestion for its latest failing run, into ``group["suggestion"]``.

        The engine's answer depends on the group's data, which moves with its revision, and on the
        requesting environment: it is kept under both and computed again once either moved."""
        keys = {g["id"]: (g["revision"], g["latest_env"]) for g in groups}
        with self._suggested_lock:
            kept = {g["id"]: self._suggested[g["id"]] for g in groups if g["id"] in self._suggested}
        missing = [g for g in groups if g["id"] not in kept or kept[g["id"]][0] != keys[g["id"]]]
        states = self._group_states({g["id"]: g["revision"] for g in missing}) if missing else {}
        for group in missing:
            requester = self.storage.env_features(group["latest_env"]) if group["latest_env"] else None
            kept[group["id"]] = (keys[group["id"]], engine.suggest(states[group["id"]].data, requester))
        with self._suggested_lock:
            if len(self._suggested) + len(missing) > _SUGGESTIONS_KEPT:
                self._suggested.clear()
            self._suggested.update((g["id"], kept[g["id"]]) for g in missing)
        for group in groups:
            group["suggestion"] = kept[group["id"]][1]

    def _suggest_ahead(self, group_key: str) -> None:
        """Runs on the ahead thread: the suggestion the list page will show for the group, kept."""
        head = self.storage.group_head(group_key)
        if head is not None:
            self._suggestions([head._asdict()])

    def _suggestion(self, group: dict) -> dict:
        self._suggestions([group])
        return group["suggestion"]

    def _comparison(self, group: dict) -> List[dict]:
        """The engine's per-feature comparison of the group, kept like its suggestion."""
        with self._suggested_lock:
            kept = self._compared.get(group["id"])
        if kept is not None and kept[0] == group["revision"]:
            return kept[1]
        comparison = engine.comparison(self._group_states({group["id"]: group["revision"]})[group["id"]].data)
        with self._suggested_lock:
            if len(self._compared) >= _SUGGESTIONS_KEPT:
                self._compared.clear()
            self._compared[group["id"]] = (group["revision"], comparison)
        return comparison

    def _groups(self, query: GroupQuery, now: float) -> Tuple[int, List[dict]]:
        total, groups = self.storage.find_groups(query)
        first_day = int(now // 86400) - _SPARK_DAYS + 1
        daily = self.storage.daily_runs([g["id"] for g in groups], first_day, _SPARK_DAYS)
        self._suggestions(groups)
        for group in groups:
            group["daily"] = [fails for fails, _ in daily[group["id"]]]
        return total, groups

    # -- JSON API ---------------------------------------------------------------------------

    def _errors(self, environ: dict):
        query = _group_query(_query(environ), 50)
        total, groups = self._groups(query, time.time())
        return (
            200,
            {"groups": [_api_group(g) for g in groups], "total": total, "limit": query.limit, "offset": query.offset},
            [],
        )

    def _error(self, environ: dict, group_id: str):
        group = self.storage.group_by_id(int(group_id))
        if group is None:
            raise HTTPError(404, "no error group %s" % group_id)
        data = self._group_states({group["id"]: group["revision"]})[group["id"]].data
        self._suggestions([group])
        answer = _api_group(group)
        answer["recent"] = [
            dict(r, ts_iso=pages.iso(r["ts"]), received_iso=pages.iso(r["received"]))
            for r in self.storage.recent_errors(group["id"], 5)
        ]
        answer["mentions"] = sorted(data.mentions)
        answer["comparison"] = self._comparison(group)
        answer["observed_fixes"] = [
            dict(f, received_iso=pages.iso(f["received"])) for f in self.storage.observed_fixes(group["id"], 20)
        ]
        return 200, answer, []

    # -- pages ------------------------------------------------------------------------------

    def _list_page(self, environ: dict):
        params = _query(environ)
        query = _group_query(params, 50)
        now = time.time()
        total, groups = self._groups(query, now)
        shown = {k: params[k] for k in ("q", "status", "script", "package", "python", "sort") if params.get(k)}
        return (
            200,
            Page(
                pages.groups_page(
                    groups, total, shown, query.limit, query.offset, GROUP_STATUSES, list(GROUP_SORTS), now
                )
            ),
            [],
        )

    def _group_page(self, environ: dict, group_id: str):
        group = self.storage.group_by_id(int(group_id))
        if group is None:
            raise HTTPError(404, "no error group %s" % group_id)
        now = time.time()
        fixes = []
        for fix in self.storage.observed_fixes(group["id"], _FIXES_SHOWN):
            before, after = self.storage.env_features(fix["failing_env"]), self.storage.env_features(fix["fixed_env"])
            fixes.append(dict(fix, diff=feature_diff(before or {}, after or {})[0]))
        first_day = int(now // 86400) - _CHART_DAYS + 1
        series = self.storage.daily_runs([group["id"]], first_day, _CHART_DAYS)[group["id"]]
        days = [(pages.day_label(first_day + i), f, o) for i, (f, o) in enumerate(series)]
        scripts, envs = self.storage.group_sources(group["id"], _SOURCES_SHOWN)
        snapshots = self.storage.env_snapshots(e["env_hash"] for e in envs)
        return (
            200,
            Page(
                pages.group_page(
                    group,
                    self._suggestion(group),
                    self._comparison(group),
                    fixes,
                    days,
                    self.storage.recent_errors(group["id"], 10),
                    scripts,
                    envs,
                    snapshots,
                    environ["cea.csrf"],
                    now,
                )
            ),
            [],
        )

    def _triage(self, environ: dict, group_id: str):
        form = self._form_body(environ)
        self._check_csrf(environ, form)
        status = _TRIAGE.get(form.get("action", ""))
        if status is None:
            raise HTTPError(400, "action must be one of: %s" % ", ".join(sorted(_TRIAGE)))
        if not self.storage.set_status(int(group_id), status):
            raise HTTPError(404, "no error group %s" % group_id)
        return 303, None, [("Location", pages.group_url(int(group_id)))]

    def _env_page(self, environ: dict, env_hash: str):
        env = self.storage.environment(env_hash)
        if env is None:
            raise HTTPError(404, "no environment %s" % env_hash)
        return 200, Page(pages.environment_page(env, time.time())), []

    def _diff_page(self, environ: dict):
        params = _query(environ)
        sides = []
        for name in ("a", "b"):
            env_hash = params.get(name, "").strip()
            features = self.storage.env_features(env_hash) if env_hash else None
            if features is None:
                raise HTTPError(404 if env_hash else 400, "no environment %s" % (env_hash[:40] or "given as " + name))
            sides.append(({"env_hash": env_hash}, features))
        rows, same = feature_diff(sides[0][1], sides[1][1])
        return 200, Page(pages.diff_page(sides[0][0], sides[1][0], rows, same)), []

    def _fleet_page(self, environ: dict):
        now = time.time()
        rows = self.storage.fleet(now - _FLEET_DAYS * 86400)
        snapshots = self.storage.env_snapshots(r["env_hash"] for r in rows)
        machines: Dict[str, dict] = {}
        for row in sorted(rows, key=lambda r: r["last_seen"]):
            snap = snapshots.get(row["env_hash"], {})
            key = row["host"] or "env " + row["env_hash"]
            machine = machines.setdefault(key, {"host": row["host"], "envs": set(), "beacons": 0})
            machine["envs"].add(row["env_hash"])
            machine["beacons"] += row["beacons"]
            machine.update(
                agent=row["agent"],
                last_seen=row["last_seen"],
                python=snap.get("python_ver", "?"),
                os=snap.get("os_info", "?"),
            )
        hosts = sorted(machines.values(), key=lambda m: -m["last_seen"])
        for machine in hosts:
            machine["envs"] = len(machine["envs"])

        def shares(field: str) -> Dict[str, int]:
            counts: Dict[str, int] = {}
            for machine in hosts:
                counts[machine[field]] = counts.get(machine[field], 0) + 1
            return counts

        first_day = int(now // 86400) - _FLEET_DAYS + 1
        days = [
            (pages.day_label(first_day + i), e, o)
            for i, (e, o) in enumerate(self.storage.fleet_days(first_day, _FLEET_DAYS))
        ]
        systems: Dict[str, int] = {}
        for machine in hosts:
            system = re.split(r"[-\s]", machine["os"], maxsplit=1)[0] or "?"
            systems[system] = systems.get(system, 0) + 1
        return (
            200,
            Page(pages.fleet_page(hosts, shares("agent"), shares("python"), systems, days, _FLEET_DAYS, now)),
            [],
        )

    def _no_icon(self, environ: dict):
        return 204, None, []

    def _login_page(self, environ: dict):
        if self._token is None:
            return 303, None, [("Location", "/")]
        return 200, Page(pages.login_page(_safe_next(_query(environ).get("next", "/")), wrong=False)), []

    def _login(self, environ: dict):
        form = self._form_body(environ)
        target = _safe_next(form.get("next", "/"))
        if self._token is None:
            return 303, None, [("Location", _location(target))]
        given = form.get("token", "").strip().encode("utf-8", "replace")
        if not hmac.compare_digest(given, self._token):
            return 401, Page(pages.login_page(target, wrong=True)), []
        return (
            303,
            None,
            [
                ("Location", _location(target)),
                ("Set-Cookie", _cookie(environ, _SESSION_COOKIE, self._session, max_age=30 * 86400)),
            ],
        )

    # -- alerts -----------------------------------------------------------------------------

    def _alert_events(self, group_key: str, new_group: bool, regressed: bool) -> List[dict]:
        """Runs on the alerts thread, never on a request."""
        group_id = self.storage.group_id_of(group_key)
        group = self.storage.group_by_id(group_id) if group_id is not None else None
        if group is None:
            return []
        events = []
        title = "#%d %s" % (group["id"], group["signature"][:300])
        if new_group:
            events.append(_event("new_group", "New error group %s" % title, group, None))
        if regressed:
            events.append(_event("regression", "Regression: resolved error group %s failed again" % title, group, None))
        suggestion = self._suggestion(group)
        if suggestion.get("match") and self.storage.alerted_solution(group["id"]) != suggestion["solution"]:
            self.storage.set_alerted_solution(group["id"], suggestion["solution"])
            events.append(
                _event(
                    "suggestion",
                    "Fix available for %s: %s (confidence %d%%)"
                    % (title, suggestion["solution"], round(100 * suggestion["confidence"])),
                    group,
                    suggestion,
                )
            )
        return events


def _event(kind: str, text: str, group: dict, suggestion: Optional[dict]) -> dict:
    return {
        "event": kind,
        "text": text,
        "group": {k: v for k, v in _api_group(group).items() if k != "suggestion"},
        "suggestion": None if suggestion is None else {k: suggestion[k] for k in ("solution", "confidence", "hint")},
    }


def _api_group(group: dict) -> dict:
    """A group as /api/errors shows it: epoch and ISO times, the suggestion for its latest failing run."""
    keys = (
        "id",
        "group_key",
        "where",
        "signature",
        "status",
        "count",
        "handled",
        "scripts",
        "script_names",
        "envs_affected",
        "first_seen",
        "last_seen",
        "failing_runs",
        "succeeding_runs",
        "suggestion",
    )
    answer = {k: group[k] for k in keys if k in group}
    answer["first_seen_iso"], answer["last_seen_iso"] = pages.iso(group["first_seen"]), pages.iso(group["last_seen"])
    return answer


def _group_query(params: Dict[str, str], default_limit: int) -> GroupQuery:
    """The list's filters from query parameters; 400 naming the one that is wrong."""
    search = params.get("q", "").strip()
    if len(search) > limits.QUERY["q"]:
        raise HTTPError(400, "q is longer than %d characters" % limits.QUERY["q"])
    status = params.get("status", "")
    if status and status not in GROUP_STATUSES:
        raise HTTPError(400, "status must be one of: %s" % ", ".join(GROUP_STATUSES))
    sort = params.get("sort") or "last_seen"
    if sort not in GROUP_SORTS:
        raise HTTPError(400, "sort must be one of: %s" % ", ".join(GROUP_SORTS))
    features = []
    package = params.get("package", "").strip()
    if package:
        name, sep, version = package.partition("==")
        if not sep or not name.strip() or not version.strip() or len(package) > limits.QUERY["package"]:
            raise HTTPError(400, "package must be name==version")
        features.append(("pkg:" + engine.canonical_name(name), version.strip()))
    python = params.get("python", "").strip()
    if python:
        if not re.fullmatch(r"\d{1,2}\.\d{1,3}(\.\d{1,3}\S{0,12})?", python):
            raise HTTPError(400, "python must be a version like 3.11 or 3.11.7")
        features.append(("python" if python.count(".") == 1 else "python_full", python))
    script = params.get("script", "").strip()
    if len(script) > limits.QUERY["script"]:
        raise HTTPError(400, "script must be a script id (%d characters at most)" % limits.HASH)
    return GroupQuery(
        search,
        status,
        script,
        tuple(features),
        sort,
        _int_param(params, "limit", default_limit, 1, 500),
        _int_param(params, "offset", 0, 0, 10**9),
    )


def feature_diff(before: Dict[str, str], after: Dict[str, str]) -> Tuple[List[Tuple[str, str, str]], int]:
    """What differs between two environments' features (interpreter and system first), and how much is equal."""
    keys = sorted(set(before) | set(after), key=lambda k: (k.startswith(("pkg:", "env:")), k))
    rows = [
        (k, before.get(k, engine.ABSENT), after.get(k, engine.ABSENT))
        for k in keys
        if before.get(k, engine.ABSENT) != after.get(k, engine.ABSENT)
    ]
    return rows, len(keys) - len(rows)


def _cookies(environ: dict) -> Dict[str, str]:
    jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
    try:
        jar.load(environ.get("HTTP_COOKIE", ""))
    except http.cookies.CookieError:
        return {}
    return {name: morsel.value for name, morsel in jar.items()}


def _cookie(environ: dict, name: str, value: str, max_age: Optional[int] = None) -> str:
    parts = ["%s=%s" % (name, value), "Path=/", "HttpOnly", "SameSite=Strict"]
    if max_age is not None:
        parts.append("Max-Age=%d" % max_age)
    if environ.get("wsgi.url_scheme") == "https":
        parts.append("Secure")
    return "; ".join(parts)


def _safe_next(target: str) -> str:
    """Only a path on this server: never //host or a scheme (no open redirect)."""
    if not target.startswith("/") or target.startswith("//") or "\\" in target or any(c in target for c in "\r\n"):
        return "/"
    return target[:2000]


def _location(target: str) -> str:
    """A safe ``next`` as a Location header's value: HTTP headers carry latin-1 at most, and a
    browser reads a percent-encoded path as the one meant."""
    return quote(target, safe="/?&=%#:;,+@!$'()*[]~")


def _here(environ: dict) -> str:
    query = environ.get("QUERY_STRING", "")
    return _safe_next((environ.get("PATH_INFO") or "/") + ("?" + query if query else ""))


def _stored_env(result: BeaconResult):
    created = not result.duplicate
    return (201 if created else 200), {"ok": True, "created": created}, []


def _reject_constant(name: str):
    raise ValueError("%s is not valid JSON" % name)


_JSON = json.JSONDecoder(parse_constant=_reject_constant)  # made once: json.loads with an option makes one a call


def _query(environ: dict) -> Dict[str, str]:
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


def create_app(
    db_path: str,
    *,
    token: Optional[str] = None,
    retention_days: float = DEFAULT_RETENTION_DAYS,
    max_body: int = DEFAULT_MAX_BODY,
    max_waiting: int = ingest.DEFAULT_MAX_WAITING,
    storage: Optional[Storage] = None,
    webhooks: Sequence[alerts.Webhook] = (),
) -> _App:
    """A WSGI application storing into ``db_path``: a SQLite file, or a ``postgresql://`` URL; past
    ``max_waiting`` writes not yet committed, it answers 503 with Retry-After; alerting ``webhooks``."""
    return _App(storage or open_storage(db_path), token, retention_days, max_body, max_waiting, webhooks)
