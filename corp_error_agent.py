"""corp-error-agent: an error agent for every Python interpreter.

Loaded at interpreter start by ``corp_error_agent.pth`` (or ``corp_error_agent.start`` on
Python 3.15+, PEP 829), it costs nothing until an uncaught exception happens. Then it sends the
scrubbed traceback and a snapshot of the environment to a backend, asks the backend how to fix it,
and prints the answer under the traceback. The first clean run after a failure is reported too, so
the backend can compare failing and succeeding environments.

Standard library only, Python 3.8+, one file: ``python corp_error_agent.py install`` needs nothing
else. Everything beyond ``os`` and ``sys`` is imported when an event happens, never at start-up.
"""
from __future__ import annotations

import os
import sys

__version__ = "0.5.0"
__all__ = ["activate", "main", "group_key", "__version__"]

###############################################################################
# Constants and configuration #################################################
###############################################################################

_APP = "corp_error_agent"
_USER_AGENT = "corp-error-agent/" + __version__
_DEFAULT_URL = "http://127.0.0.1:8000"
_DEFAULTS = {"url": _DEFAULT_URL, "token": "", "enabled": True, "hints": True, "min_confidence": 0.6}
# Environment variable and config-file key for each setting; the file keys are those the published
# 0.4.2 client reads (``backend_url``), so both clients share one configuration.
_ENV_NAMES = {"url": "ERROR_AGENT_URL", "token": "ERROR_AGENT_TOKEN", "enabled": "ERROR_AGENT_ENABLED",
              "hints": "ERROR_AGENT_HINT", "min_confidence": "ERROR_AGENT_MIN_CONFIDENCE"}
_FILE_KEYS = {"url": "backend_url", "token": "token", "enabled": "enabled", "hints": "hints",
              "min_confidence": "min_confidence"}
ENV_ALLOW = ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHONPATH", "LC_ALL", "LANG", "TZ",
             "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY")

_TRACE_LIMIT = 25_000          # characters of traceback kept (the end, where the error is)
_SIG_LIMIT = 400               # characters of error signature
_SIG_FRAMES = 3                # innermost frames in the signature
_RESPONSE_LIMIT = 256 * 1024   # bytes read from any backend answer
_SPOOL_MAX_FILES = 500         # beacons kept on disk; the oldest are dropped past this
_SPOOL_MAX_AGE = 7 * 86400     # seconds a spooled beacon is kept before it expires
_SPOOL_DRAIN_BATCH = 50        # spooled beacons delivered per contact, oldest first
_PENDING_MAX_AGE = 7 * 86400   # a failure not followed by a success within this is forgotten
_BREAKER_SECONDS = 180         # a backend that failed is not waited on again for this long
_CONNECT_TIMEOUT = 2.0         # seconds; beacons in the background never wait longer per request


def _truthy(value: str) -> bool:
    return value.strip().lower() not in ("0", "false", "no", "off", "")

###############################################################################
# The event: trace, signature, scrubbing ######################################
###############################################################################
# Pure functions of their arguments (plus the home directory), shared with the reference server so
# that both sides normalise a signature the same way.

_SECRET_PATTERNS = (
    # URL credentials: scheme://user:password@host
    (r"(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@", r"\1***:***@"),
    (r"(?i)\b(authorization\s*[:=]\s*)(?:(bearer|basic|token)\s+)?[^\s'\",]+", r"\1\2 ***"),
    (r"(?i)\b([a-z0-9_.-]*(?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key)"
     r"[a-z0-9_]*['\"]?\s*[=:]\s*['\"]?)[^\s'\",;&)}]+", r"\1***"),
    (r"\b(?:AKIA|ASIA)[0-9A-Z]{16}\b", "***aws-key***"),
    (r"\bgh[pousr]_[A-Za-z0-9]{30,}\b|\bgithub_pat_[A-Za-z0-9_]{30,}", "***github-token***"),
    (r"\bxox[abposr]-[A-Za-z0-9-]{10,}", "***slack-token***"),
    (r"\beyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]{5,}", "***jwt***"),
    (r"-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?(?:-----END [A-Z ]*PRIVATE KEY-----|$)", "***private-key***"),
)
_PATH = r"(?<![\w.<>])(?:[A-Za-z]:[\\/]|~[\\/]|/)[^\s'\"]+"
_MESSAGE_PATTERNS = (
    (_PATH, "<path>"),
    (r"(?i)\b0x[0-9a-f]+\b", "<hex>"),
    (r"(?i)\b[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b", "<hex>"),
    (r"(?i)\b(?=[a-f]*\d)[0-9a-f]{10,}\b", "<hex>"),
    (r"(?<![\w<])\d+(?:\.\d+)*", "<n>"),
)
_DID_YOU_MEAN = r"\.?\s*did you mean:? .*$"


def _sub_all(text: str, patterns) -> str:
    import re
    for pattern, replacement in patterns:
        text = re.sub(pattern, replacement, text)
    return text


def _home() -> str:
    home = os.path.expanduser("~")
    return home if len(home.rstrip("/\\")) > 1 else ""


def scrub(text: str) -> str:
    """Remove secrets and the user's home directory from text that is about to leave the machine."""
    text = _sub_all(text, _SECRET_PATTERNS)
    home = _home()
    return text.replace(home, "~") if home else text


def _normalise_message(message: str) -> str:
    """The message with what varies between runs and machines (paths, numbers, ids) replaced."""
    return _sub_all(" ".join(message.split()), _MESSAGE_PATTERNS)[:200]


def group_key(signature: str) -> str:
    """The bug a signature stands for, whichever client computed it.

    Our signature is ``<exception line> @ <frames>``; the published 0.4.2 client's is the last
    traceback line, lower-cased, raw. Both reduce to the normalised exception line.
    """
    import re
    lines = [line.strip(" \t|") for line in signature.strip().splitlines()]
    lines = [line for line in lines if line and line.strip("+-") ]
    line = lines[-1] if lines else ""
    line = line.split(" @ ")[0]
    line = re.sub(_DID_YOU_MEAN, "", line, flags=re.I)
    return _normalise_message(line).lower()[:_SIG_LIMIT]


def _exception_type_name(exc_type) -> str:
    module = getattr(exc_type, "__module__", "builtins")
    name = getattr(exc_type, "__qualname__", None) or getattr(exc_type, "__name__", "Exception")
    return name if module in ("builtins", "__main__") else module + "." + name


def _safe_str(exc) -> str:
    try:
        return str(exc)
    except BaseException:
        return "<exception str() failed>"


def _inner_frames(tb, count: int):
    frames = []
    while tb is not None:
        frame = tb.tb_frame
        code = frame.f_code
        name = getattr(code, "co_qualname", code.co_name)
        frames.append(str(frame.f_globals.get("__name__", "?")) + "." + name)
        tb = tb.tb_next
    return frames[::-1][:count]


def error_signature(exc_type, exc, tb) -> str:
    """Same for the same bug across runs, users and machines; readable; bounded."""
    message = _normalise_message(_safe_str(exc))
    line = _exception_type_name(exc_type) + (": " + message if message else "")
    frames = _inner_frames(tb, _SIG_FRAMES)
    return (line + (" @ " + " < ".join(frames) if frames else ""))[:_SIG_LIMIT]


def format_trace(exc_type, exc, tb) -> str:
    """The scrubbed traceback, chained and grouped exceptions included, its end kept."""
    import traceback
    try:
        text = "".join(traceback.format_exception(exc_type, exc, tb))
    except BaseException:  # a hostile exception can break even the formatter
        text = _exception_type_name(exc_type) + ": " + _safe_str(exc) + "\n"
    return scrub(text[-_TRACE_LIMIT * 2:])[-_TRACE_LIMIT:]
