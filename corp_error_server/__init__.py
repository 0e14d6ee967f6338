"""corp-error-server: the reference backend of corp-error-agent.

``create_app(db_path, ...)`` returns a WSGI application; ``app`` is one ready for any WSGI server
(gunicorn, waitress), storing into ``$CORP_ERROR_SERVER_DB`` or the per-user data directory and
requiring ``$CORP_ERROR_SERVER_TOKEN`` as bearer token when that is set and alerting the webhooks of
``$CORP_ERROR_SERVER_WEBHOOKS``. It opens its database on
the first request, so importing this package touches no file.
"""

from __future__ import annotations

import json
import os
import threading
from typing import Callable, Optional

from .app import DEFAULT_MAX_BODY, DEFAULT_RETENTION_DAYS, create_app
from .storage import StorageUnavailable, UnsupportedDatabase

__all__ = ["create_app", "app", "default_db_path", "DEFAULT_MAX_BODY", "DEFAULT_RETENTION_DAYS"]


def default_db_path() -> str:
    """``$CORP_ERROR_SERVER_DB``, else ``$XDG_DATA_HOME`` (or ~/.local/share)/corp_error_server/errors.db,
    whose directory this creates: it is the one place the server chooses. A path someone gave is
    theirs, and a directory missing from it is an error, as in sqlite3 (a typo makes no tree)."""
    explicit = os.environ.get("CORP_ERROR_SERVER_DB")
    if explicit:
        return explicit
    data = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    os.makedirs(os.path.join(data, "corp_error_server"), mode=0o700, exist_ok=True)
    return os.path.join(data, "corp_error_server", "errors.db")


class _LazyApp:
    """The WSGI callable behind ``app``: builds the real application on the first request."""

    def __init__(self) -> None:
        self._app: Optional[Callable] = None
        self._lock = threading.Lock()

    def __call__(self, environ, start_response):
        if self._app is None:
            with self._lock:
                if self._app is None:
                    from .alerts import parse_webhook

                    token: Optional[str] = os.environ.get("CORP_ERROR_SERVER_TOKEN") or None
                    hooks = [parse_webhook(s) for s in os.environ.get("CORP_ERROR_SERVER_WEBHOOKS", "").split()]
                    try:
                        self._app = create_app(default_db_path(), token=token, webhooks=hooks)
                    except StorageUnavailable as error:  # down at the first request: the next one tries again
                        return _unavailable(start_response, "storage unavailable: %s" % error)
                    except UnsupportedDatabase as error:
                        # a scheme or a driver missing: the operator's to fix, said in the server's log
                        # and to the agents, which keep their beacons until it is fixed
                        message = "the server cannot open its database: %s" % error
                        _log_once(environ, message)
                        return _unavailable(start_response, message)
        return self._app(environ, start_response)


_logged_messages: set = set()


def _log_once(environ, message: str) -> None:
    if message not in _logged_messages:
        _logged_messages.add(message)
        environ["wsgi.errors"].write("corp-error-server: %s\n" % message)
        environ["wsgi.errors"].flush()


def _unavailable(start_response, message: str) -> list:
    body = json.dumps({"error": message}).encode()
    start_response(
        "503 Service Unavailable",
        [("Content-Type", "application/json"), ("Content-Length", str(len(body))), ("Retry-After", "1")],
    )
    return [body]


app = _LazyApp()
