"""corp-error-agent: an error agent for every Python interpreter.

Loaded at interpreter start by ``corp_error_agent.pth`` (or ``corp_error_agent.start`` on
Python 3.15+, PEP 829), it costs nothing until an uncaught exception happens. Then it sends the
scrubbed traceback and a snapshot of the environment to a backend, asks the backend how to fix it,
and prints the answer under the traceback. The first clean run after a failure is reported too, so
the backend can compare failing and succeeding environments.

Standard library only, Python 3.8+, one file: ``python corp_error_agent.py install`` needs nothing
else. This file has two parts. The start-up part, right below, is all that every Python process
runs: it installs the hooks and imports nothing beyond builtin modules. The agent proper is the
source text after it, in a string that is not assigned, so the compiler leaves it out of the byte
code: as byte code it would cost every Python start ~10% (bench/startup.py). Its first section,
the loader, is compiled into this module the first time something happens (an error, a clean exit
after a failure, a command, or any use of its names), and loads the rest.
"""
import sys

__version__ = "0.5.0"

_APP = "corp_error_agent"

###############################################################################
# Start-up: hooks #############################################################
###############################################################################
# Every Python process runs this part, so it holds only what every start needs: the hooks, the
# finder that patches modules at their first import, the patch of logging (most programs import
# it, and compiling it then would cost more than loading it always), the pending check, and the
# way into the rest of the file (__getattr__). All of them are one function, _entry, told apart by
# the arguments it is called with. Each function a start keeps is four objects (itself, its
# constants, its names, its locals), and the garbage collector counts objects: on CPython 3.12 the
# third object beyond what an empty module on a .pth line keeps costs every `python -c pass` one
# collection, half of the agent's allowance (bench/startup.py counts the instructions). For the
# same reason nothing here keeps a tuple, dict or function made at start: state is in strings and
# module globals, and no call takes keywords (their names would be a tuple of constants). And
# activate() drops the two objects the import system keeps for this module, its spec and loader;
# __getattr__ makes them again once asked (python -m, importlib.reload, inspect, a later `import`
# of the module, which reads the spec: a venv runs its .pth lines twice, so its first run keeps them).
# Installing costs a few attribute assignments and one access(): has a script of this name a
# failure waiting for its first clean run? Only then is an exit hook needed. Each hook calls the
# hook that was installed before it first, so the user sees the traceback at once and unchanged,
# and only then loads the agent. No global here is `os`: the hooks live as long as the
# interpreter, and a global of theirs would keep it alive into finalization, which then clears it
# the slow way (~1% of a `python -c pass`).

# Errors that never reach a hook: asyncio task exceptions nobody retrieved, multiprocessing
# children, whose bootstrap prints the traceback itself, cells of IPython and Jupyter, which print
# their own tracebacks, and errors a program logs and carries on. The agent patches those modules
# when they are imported, so that processes which never use them never pay for it. (Patching
# multiprocessing adds traceback, for the same reason.) Entries are "module=patch function"; an
# entry goes once its module is patched.
_PATCHES = "asyncio.base_events=_patch_asyncio multiprocessing.process=_patch_multiprocessing " \
           "IPython.core.interactiveshell=_patch_ipython logging=_patch_logging"
_API = "activate capture main group_key scrub snapshot error_signature format_trace __version__"
# When activate() ran, where this script's failures wait (_pending_path), and the hooks that were
# there before ours; a reload of this module keeps them, as the hooks it installed still use them.
_started = globals().get("_started")
_pending_dir = globals().get("_pending_dir")
_excepthook = globals().get("_excepthook")
_thread_excepthook = globals().get("_thread_excepthook")
_call_handlers = globals().get("_call_handlers")


def _entry(*args):
    # Called as:
    #   activate()                    by the .pth line: install the hooks (idempotent)
    #   sys.excepthook(type, value, traceback), and _thread._excepthook(args), which threading
    #                                 copies when it is first imported: threads are covered without
    #                                 paying for threading in processes that never use it
    #   find_spec(name, path[, target])  the module itself is on sys.meta_path, after the builtin
    #                                 and frozen importers: None ("not mine") unless the module is
    #                                 in _PATCHES; then its spec, found by the finders after this
    #                                 one, with this function bound to its loader as exec_module
    #   exec_module(loader, module)   a patched module's loader: run the module, then patch it. The
    #                                 loader comes bound, not from module.__spec__: a finder in
    #                                 front may have wrapped it there (ddtrace's ModuleWatchdog)
    #   (module)                      a module imported before activate(): patch it
    #   Logger.callHandlers(logger, record)  report records at ERROR or above with an exception
    #   __getattr__(name)             PEP 562: the first use of a name that the start-up part lacks
    #                                 compiles the loader, the first section of the agent proper
    #                                 (read from this file, at its line numbers); the loader's
    #                                 _attribute() answers from then on
    #                                 (__spec__ and __loader__, dropped by activate(), are made again)
    #   (None, platform, environ)     the agent's directory (the loader's _cache_dir)
    global _PATCHES, _started, _pending_dir, _excepthook, _thread_excepthook, _call_handlers
    first = args[0] if args else _entry
    if isinstance(first, str) and len(args) == 1:  # __getattr__ (a name may be a str subclass)
        if first == "__all__":
            return tuple(_API.split())
        if first == "__spec__" or first == "__loader__":  # dropped by activate(): made again when asked
            spec = sys.modules["_frozen_importlib_external"].spec_from_file_location(__name__, __file__)
            globals()["__spec__"], globals()["__loader__"] = spec, spec.loader
            return globals()[first]
        if first[:2] == "__" or first in "find_distributions invalidate_caches find_module iter_modules".split():
            # what is asked of every finder on sys.meta_path (importlib.metadata, pkgutil) loads nothing
            raise AttributeError("module %r has no attribute %r" % (__name__, first))
        if "_attribute" not in globals():
            try:
                with open(__file__, "rb") as f:
                    text = f.read().decode("utf-8").replace("\r\n", "\n")  # a copy checked out with CRLF
                start = text.index("\nr'''\n") + 5
                if '\n__version__ = "%s"\n' % __version__ not in text[:start]:
                    raise ImportError("%s is another version than this process started with" % __file__)
                exec(compile("\n" * text.count("\n", 0, start) + text[start:text.index("\n# (the loader ends", start)],
                             __file__, "exec"), globals())
            except Exception as error:
                raise AttributeError("module %r has no attribute %r (%s)" % (__name__, first, error)) from None
        return globals()["_attribute"](first)
    import os
    if first is None and isinstance(args[1], str):  # the cache directory: ERROR_AGENT_CACHE_DIR, else the
        # per-user cache directory, where platformdirs would put it (the loader's _user_dir has the config one)
        platform, environ = args[1], os.environ if args[2] is None else args[2]
        chosen = environ.get("ERROR_AGENT_CACHE_DIR", "").strip()
        if chosen:
            return chosen
        home = os.path.expanduser("~")
        if platform == "win32":
            local = environ.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local")
            return os.path.join(local, _APP, _APP, "Cache")
        if platform == "darwin":
            return os.path.join(home, "Library", "Caches", _APP)
        xdg = environ.get("XDG_CACHE_HOME", "").strip()
        return os.path.join(xdg if os.path.isabs(xdg) else os.path.join(home, ".cache"), _APP)
    if isinstance(first, str):  # find_spec
        if " %s=" % first not in " " + _PATCHES:
            return None
        spec = None
        for finder in sys.meta_path:
            if getattr(finder, "find_spec", _entry) is not _entry:  # (this one, and finders without it)
                spec = finder.find_spec(*args)
                if spec is not None:
                    break
        loader = getattr(spec, "loader", None)
        if loader is not None and hasattr(loader, "exec_module"):
            try:
                loader.exec_module = _entry.__get__(loader)
            except Exception:  # a loader that takes no attributes: the module stays unpatched
                pass
        return spec
    if first is _entry:  # activate()
        try:
            # site runs a venv's .pth lines twice: first in venv(), before it adds the venv to PREFIXES
            if sys.prefix in getattr(sys.modules.get("site"), "PREFIXES", [sys.prefix]) and \
                    "_frozen_importlib_external" in sys.modules:  # the last run, and they can be made again
                globals().pop("__spec__", None), globals().pop("__loader__", None)  # (its import has read them)
            if getattr(sys.excepthook, "__qualname__", "") == "_entry" or \
                    os.environ.get("ERROR_AGENT_ENABLED", "1").strip().lower() in "0 false no off".split():
                return None
            import _thread
            import time  # (both imported by Python's own start-up already)
            # (before 3.8 _thread has no _excepthook: nothing is installed there, as the agent needs 3.8)
            if _thread._excepthook is not _entry:  # (activated again, after sys.excepthook was replaced:
                _thread_excepthook, _thread._excepthook = _thread._excepthook, _entry  # no loop to itself)
            _excepthook, sys.excepthook = sys.excepthook, _entry
            if "threading" in sys.modules:
                sys.modules["threading"].excepthook = _entry
            for entry in _PATCHES.split():
                if entry.split("=")[0] in sys.modules:
                    _entry(sys.modules[entry.split("=")[0]])
            if sys.modules[__name__] not in sys.meta_path:
                sys.meta_path.insert(2, sys.modules[__name__])
            _started = time.time()
            # where failures of scripts of this file name wait for their first clean run
            name = os.path.basename(sys.argv[0] if sys.argv else "") or "-"  # "-c", "-m", a script
            _pending_dir = os.path.join(_entry(None, sys.platform, None), "pending", name.strip(".") or "-")
            if os.access(_pending_dir, os.F_OK) or \
                    os.environ.get("ERROR_AGENT_SUCCESS", "").strip().lower() == "always":
                import atexit
                agent = sys.modules[__name__]
                agent._watch_exit()  # (the loader's: the rest waits for the exit)
                atexit.register(agent._call_agent, "_at_exit")
        except Exception:
            pass
        return None
    previous = handler = None
    if isinstance(args[-1], type(sys)) and len(args) <= 2:  # a patched module (lazy ones are subclasses)
        if len(args) == 2:  # its loader's exec_module: run it first
            del first.exec_module  # nothing of the agent stays referenced by the loader
            first.exec_module(args[1])  # (an error in the module fails its import as without the agent)
            first, args = args[1], args[1:]
        for entry in _PATCHES.split():
            if entry.split("=")[0] == first.__name__:
                _PATCHES = (" %s " % _PATCHES).replace(" %s " % entry, " ").strip()
                handler = entry.split("=")[1]
    elif len(args) == 2:
        previous, handler = _call_handlers, "_on_logged_error"
    elif len(args) == 3:
        previous, handler = _excepthook, "_on_exception"
    else:
        previous, handler = _thread_excepthook, "_on_thread_exception"
    if handler == "_on_exception" or handler == "_on_thread_exception":
        # Called from within the chain this function started: a hook installed after ours calls ours,
        # and activate() ran again and put ours in front of it. Python's own hook ends the chain
        # (not the hook ours calls, which is that one) and the outer call reports.
        caller = sys._getframe(0).f_back
        while caller is not None and caller.f_code is not _entry.__code__:
            caller = caller.f_back
        if caller is not None:
            handler = None
            previous = sys.__excepthook__ if len(args) == 3 else sys.modules["threading"].__excepthook__
    try:
        if previous is not None:
            previous(*args)
    finally:
        try:
            if handler == "_patch_logging":  # most programs import logging: its patch loads nothing
                handler = None
                if os.environ.get("ERROR_AGENT_LOGGING", "1").strip().lower() not in "0 false no off".split():
                    _call_handlers = first.Logger.callHandlers
                    first.Logger.callHandlers = _entry
            elif handler == "_on_logged_error":
                args = args[1:]  # the record
                if not (args[0].levelno >= 40 and args[0].exc_info and args[0].exc_info[0] is not None):
                    handler = None
            elif isinstance(first, type) and issubclass(first, (KeyboardInterrupt, SystemExit)):
                handler = None
            if handler is not None:
                sys.modules[__name__]._call_agent(handler, *args)
        except Exception:  # an agent that cannot be loaded stays out of the way
            pass
    return None


activate = find_spec = __getattr__ = _entry  # (what the .pth line, importlib and PEP 562 call)


###############################################################################
# The agent proper: compiled by _load() on first use, never at start-up #######
###############################################################################
# A string statement that is not assigned: the compiler drops it, so the byte code that every
# Python start loads holds none of it. _agent_source() reads it from this file; its first section,
# the loader, is compiled on its own when the agent is first needed.

r'''
###############################################################################
# The loader: compiled when the agent is first needed #########################
###############################################################################
# The first use of a name that the start-up part lacks (a hook reaching _call_agent, a command,
# an import of group_key) compiles this section alone (see __getattr__); it then loads the rest
# from the code cache, or by compiling it. Compiling this section costs the first error of a
# process ~19 M instructions (12.7 M of them compile() making the ast module's types); as byte
# code it would cost every Python start ~0.4% (bench/startup.py --instructions).
import os  # noqa: E402  (imported by Python's own start-up already)

# Per-process state: the loader's keys and the hooks'. The agent proper declares the others when it
# is loaded; its source holds this section again, which then keeps what the loader has noted.
_process = globals().get("_process") or {"error_seen": False, "loaded": False, "pending": None}  # type: dict


def _cache_dir(platform=sys.platform, environ=None):
    """The agent's directory: ERROR_AGENT_CACHE_DIR, else the per-user cache directory, where
    platformdirs would put it (the start-up part's, which its pending check needs)."""
    return _entry(None, platform, environ)


def _user_dir(kind, platform=sys.platform, environ=None):
    """The per-user ``config`` or ``cache`` directory, where platformdirs would put it."""
    environ = os.environ if environ is None else environ
    if kind == "cache":  # (the start-up part's, which ERROR_AGENT_CACHE_DIR overrides)
        return _cache_dir(platform, {k: v for k, v in environ.items() if k != "ERROR_AGENT_CACHE_DIR"})
    home = os.path.expanduser("~")
    if platform == "win32":
        return os.path.join(environ.get("LOCALAPPDATA") or os.path.join(home, "AppData", "Local"), _APP, _APP)
    if platform == "darwin":
        return os.path.join(home, "Library", "Application Support", _APP)
    xdg = environ.get("XDG_CONFIG_HOME", "").strip()
    return os.path.join(xdg if os.path.isabs(xdg) else os.path.join(home, ".config"), _APP)


def _watch_exit():
    """Note the status sys.exit() is given, while a clean run would be reported at exit (activate):
    sys.exit(4) ends no clean run (_at_exit). Made before the agent proper is loaded, so the key
    is not one of its _process keys."""
    exit = sys.exit

    def watched_exit(status=None):
        _process["exit_status"] = status
        exit(status)
    sys.exit = watched_exit


def _call_agent(name, *args):
    """Run an agent function; whatever goes wrong inside the agent stays inside it."""
    try:
        _load(cache_code=True)
        return globals()[name](*args)
    except BaseException as error:  # Ctrl-C while the agent waits ends the wait, nothing else
        if _process["loaded"]:
            _debug(error)  # (defined by the agent proper)
        return None


def _load(cache_code=False):
    """Compile and run the agent proper (the source text below) in this module, once. Hooks firing
    in a host process reuse its compiled code from the cache dir while this file is unchanged
    (compiling costs ~10 ms, which every error would pay again); other uses (the command line, a
    server importing group_key) leave no trace on disk."""
    if _process["loaded"]:
        return
    import _thread
    import marshal
    with _process.setdefault("lock", _thread.allocate_lock()):
        if _process["loaded"]:
            return
        cached = None
        if cache_code:  # agent-<install and interpreter>-<version of the file>.code
            import zlib
            stat = os.stat(__file__)
            install = "%s\0%s" % (os.path.abspath(__file__), sys.implementation.cache_tag)
            cached = os.path.join(_cache_dir(), "agent-%08x-%s-%d-%d.code" % (
                zlib.crc32(install.encode("utf-8", "surrogateescape")), __version__, stat.st_mtime_ns,
                stat.st_size))
        try:
            with open(cached or "", "rb") as f:
                code, cached = marshal.loads(f.read()), None
        except (OSError, ValueError, EOFError, TypeError):
            import __future__
            code = compile(_agent_source(), __file__, "exec", __future__.annotations.compiler_flag, True)
        exec(code, globals())
        _process["loaded"] = True
    if cached:
        _write_code_cache(code, cached)  # (defined by the agent proper)


def _agent_source():
    """The agent proper, read from this file, with blank lines in front so that tracebacks and
    debuggers show this file's line numbers."""
    with open(__file__, "rb") as f:
        text = f.read().decode("utf-8").replace("\r\n", "\n")  # a copy checked out with CRLF
    quotes = "'" * 3  # (written out, they would end this text)
    opening, closing = "\nr" + quotes + "\n", "\n" + quotes + "\n"
    start = text.index(opening) + len(opening)
    end = text.index(closing, start) + 1
    if '\n__version__ = "%s"\n' % __version__ not in text[:start]:
        # upgraded under a running process: its start-up part and the new agent proper may not fit
        raise ImportError("%s is another version than this process started with" % __file__)
    return "\n" * text.count("\n", 0, start) + text[start:end]


def _attribute(name):
    """A name of the loader, or of the agent proper, which it loads first (see __getattr__)."""
    error = ""
    if name not in globals() and not _process["loaded"]:
        try:
            _load()
        except Exception as failure:  # the agent proper could not be loaded
            error = " (%s)" % failure
    if name in globals():
        return globals()[name]
    raise AttributeError("module %r has no attribute %r%s" % (__name__, name, error))


# (the loader ends here)
###############################################################################
# Constants and configuration #################################################
###############################################################################

# The rest of the per-process state (see _process at start-up). Made on first use, by setdefault:
# the lock of _load, the deliveries still running, the backend each worker is contacting, and the
# threads that are reporting.
_process.update({"state_dir": None, "pid_space": None, "script": None, "cell": None, "ipython": False,
                 "bootstrap_code": None, "child_failure": None, "multiprocessing_child": False})

_USER_AGENT = "corp-error-agent/" + __version__
_DEFAULT_URL = "http://127.0.0.1:8000"
_DEFAULTS = {"url": _DEFAULT_URL, "token": "", "enabled": True, "hints": True, "min_confidence": 0.6}
# Environment variable and config-file key for each setting; the file keys are those the published
# 0.4.2 client reads (``backend_url``), so both clients share one configuration.
_ENV_NAMES = {"url": "ERROR_AGENT_URL", "token": "ERROR_AGENT_TOKEN", "enabled": "ERROR_AGENT_ENABLED",
              "hints": "ERROR_AGENT_HINT", "min_confidence": "ERROR_AGENT_MIN_CONFIDENCE"}
_FILE_KEYS = {"url": "backend_url", "token": "token", "enabled": "enabled", "hints": "hints",
              "min_confidence": "min_confidence"}

# The effective settings by name (settings.url), and where each came from (settings.sources["url"]).
import collections  # noqa: E402  (imported by re and functools already)

_Settings = collections.namedtuple("_Settings", list(_DEFAULTS) + ["sources"])
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
_STATUS_TIMEOUT = 5.0          # `status` outwaits a server's wait for its database (3 s), to show its 503


def _debug(error: BaseException) -> None:
    """ERROR_AGENT_DEBUG=1 shows the agent's own errors, which are otherwise swallowed."""
    if os.environ.get("ERROR_AGENT_DEBUG", "") not in ("", "0") and sys.stderr is not None:
        try:
            import traceback
            sys.stderr.write("corp-error-agent debug: " + "".join(
                traceback.format_exception(type(error), error, error.__traceback__)))
        except Exception:
            pass


def _truthy(value: str) -> bool:
    return value.strip().lower() not in ("0", "false", "no", "off", "")


def _float(value, default: float) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return default


def _config_files() -> dict:
    return {"user": os.path.join(_user_dir("config"), "config.json"),
            "system": os.path.join(sys.prefix, "etc", _APP, "config.json")}


def _read_json(path: str):
    import json
    try:
        with open(path, "rb") as f:
            return json.loads(f.read(_RESPONSE_LIMIT).decode("utf-8"))
    except (OSError, ValueError):
        return None


def _coerce(name: str, value):
    if name in ("enabled", "hints"):
        return _truthy(value) if isinstance(value, str) else bool(value)
    if name == "min_confidence":
        return _float(value, _DEFAULTS["min_confidence"])
    return str(value).rstrip("/") if name == "url" else str(value)


def _settings() -> _Settings:
    """The effective settings: env vars win, then the user file, the system file, defaults."""
    files = {scope: _read_json(path) for scope, path in _config_files().items()}
    values, sources = {}, {}
    for name, default in _DEFAULTS.items():
        value, source = default, "default"
        env_value = os.environ.get(_ENV_NAMES[name], "")
        if env_value.strip():
            value, source = env_value.strip(), "env " + _ENV_NAMES[name]
        else:
            for scope in ("user", "system"):
                data = files[scope]
                if isinstance(data, dict) and data.get(_FILE_KEYS[name]) not in (None, ""):
                    value, source = data[_FILE_KEYS[name]], scope + " file"
                    break
        if name == "min_confidence" and _float(value, None) is None:
            source = "default: %r from %s is not a number" % (value, source)
        values[name], sources[name] = _coerce(name, value), source
    return _Settings(sources=sources, **values)


def _suggest_timeout() -> float:
    return max(0.0, _float(os.environ.get("ERROR_AGENT_SUGGEST_TIMEOUT"), 5.0))


_CODE_MAX_AGE = 30 * 86400  # seconds: compiled code of an install not written since is removed


def _write_code_cache(code, path: str) -> None:
    """Keep the agent proper's compiled code for the next error of this install (see _load)."""
    import marshal
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        tmp = "%s.%d.tmp" % (path, os.getpid())
        with open(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
            f.write(marshal.dumps(code))
        os.replace(tmp, path)
        name = os.path.basename(path)
        _remove_stale_code(os.path.dirname(path), name[:len("agent-12345678-")], name)
    except OSError:
        pass


def _remove_stale_code(directory: str, install: str, current: str) -> None:
    """Written once per install and version of the file, so this is when old ones go: this install's
    other versions and files named as before 0.5 at once, another install's when it is old (a deleted
    venv; one still in use compiles again once)."""
    import time
    for name in os.listdir(directory):
        if not name.startswith("agent-") or not name.endswith((".code", ".tmp")) or name == current:
            continue
        path = os.path.join(directory, name)
        named_by_install = name[14:15] == "-" and all(c in "0123456789abcdef" for c in name[6:14])
        try:
            if name.endswith(".code") and (name.startswith(install) or not named_by_install) or \
                    time.time() - os.stat(path).st_mtime > (_CODE_MAX_AGE if name.endswith(".code") else 300):
                os.unlink(path)
        except OSError:
            continue



def _success_always() -> bool:
    return os.environ.get("ERROR_AGENT_SUCCESS", "").strip().lower() == "always"


###############################################################################
# Which script runs ###########################################################
###############################################################################

def _script_source():
    """What is running: ("-m", module), ("-c", code), ("file", path), ("stdin", ""), what a launcher
    runs (see _launched), or None while it cannot be known yet (``-m`` at start-up before Python
    3.10, which has no sys.orig_argv)."""
    if _process["script"] is not None:  # a notebook's kernel, once it knows (_on_cell_start)
        return _process["script"]
    argv0 = sys.argv[0] if sys.argv and sys.argv[0] else "-"
    orig_argv = getattr(sys, "orig_argv", [])
    if argv0 == "-c":
        return "-c", orig_argv[orig_argv.index("-c") + 1] if "-c" in orig_argv[:-1] else ""
    module = getattr(getattr(sys.modules.get("__main__"), "__spec__", None), "name", None)
    if argv0 == "-m" or module not in (None, "__main__"):  # at start-up, runpy has not run yet
        module = module or (orig_argv[orig_argv.index("-m") + 1] if "-m" in orig_argv[:-1] else None)
        if not module:
            return None
        module = module[:-len(".__main__")] if module.endswith(".__main__") else module
        return (_launched(module, sys.argv[1:]) if len(sys.argv) > 1 else None) or ("-m", module)
    if argv0 == "-":
        return "stdin", ""
    tool = os.path.basename(argv0)
    return (_launched(tool, sys.argv[1:]) if tool in _LAUNCHERS else None) or ("file", os.path.abspath(argv0))


# A tool that runs other code is not the script: the run is what it runs (the notebook, the test
# files, the app), so that a clean run of one never counts as the fix of another. Any other
# ``python -m tool ARGS`` is told apart by the files and directories its arguments name.
_LAUNCHERS = {"pytest": "paths", "py.test": "paths", "ipython": "script", "flask": "app", "celery": "app",
              "jupyter-nbconvert": "notebook", "jupyter-execute": "notebook", "nbconvert": "notebook",
              "nbclient": "notebook", "papermill": "notebook"}


def _launched(tool: str, args: list):
    kind = _LAUNCHERS.get(tool)
    if kind == "notebook":
        notebooks = [arg for arg in args if arg.endswith(".ipynb")]
        if not notebooks:
            return None
        return "notebook", os.path.abspath(notebooks[0])
    if kind == "app":
        app = os.environ.get("FLASK_APP", "") if tool == "flask" else ""
        for i, arg in enumerate(args):
            if arg in ("-A", "--app") and i + 1 < len(args):
                app = args[i + 1]
            elif arg.startswith(("--app=", "-A")) and arg not in ("-A", "--app"):
                app = arg.split("=", 1)[1] if arg.startswith("--app=") else arg[2:]
        return "run", " ".join((tool, os.getcwd(), app))
    paths = [os.path.abspath(arg.split("::")[0]) for arg in args
             if not arg.startswith("-") and os.path.exists(arg.split("::")[0])]
    if kind == "script":
        return ("file", paths[0]) if paths else None
    if kind == "paths":
        return "run", " ".join([tool] + (paths or [os.getcwd()]))
    return ("-m", " ".join([tool] + paths)) if paths else None


def _pending_path():
    """Where a failure of this script waits for its first clean run, named without hashing; "" where
    none is tracked."""
    if _process["pending"] is None and _pending_dir is not None:  # (set by activate)
        source = _script_source()
        if source is None:
            return None
        key = "".join(c if c.isalnum() or c in "._-" else "_" for c in " ".join(source))
        key = key if len(key) <= 120 else key[:60] + key[-60:]
        # a notebook's kernel and its launcher (nbconvert) share where the notebook's failure waits
        directory = _pending_dir if source[0] != "notebook" else os.path.join(os.path.dirname(_pending_dir), "notebook")
        _process["pending"] = os.path.join(directory, key + ".json")
    return _process["pending"]


###############################################################################
# Hooks: what happens when one fires ##########################################
###############################################################################


def _hooks_active() -> bool:
    import _thread
    return any(getattr(hook, "__qualname__", "") == "_entry" for hook in (sys.excepthook, _thread._excepthook))


def _on_exception(exc_type, exc, tb) -> None:
    _on_error(exc_type, exc, tb, wait_for_hint=True)


def _on_thread_exception(args) -> None:
    # A dying thread does not wait for a hint: that would delay the host's join().
    _on_error(args.exc_type, args.exc_value, args.exc_traceback, wait_for_hint=False)


def _patch_asyncio(base_events) -> None:
    """Report task exceptions nobody retrieved: they never reach sys.excepthook.

    The original handler logs them (logger.error with exc_info): that record is asyncio's report
    of an error nobody handled, so the logging patch leaves it to this one (_on_logged_error)."""
    original = base_events.BaseEventLoop.default_exception_handler

    def default_exception_handler(self, context):
        error = context.get("exception")
        if not (isinstance(error, Exception) and type(error).__name__ != "CancelledError"):
            return original(self, context)
        logging_now = _process.setdefault("asyncio_logging", set())  # ids: an exception may be unhashable
        logging_now.add(id(error))
        try:
            original(self, context)
        finally:
            logging_now.discard(id(error))
        _call_agent("_on_error", type(error), error, error.__traceback__, False)
    base_events.BaseEventLoop.default_exception_handler = default_exception_handler


def _patch_multiprocessing(process) -> None:
    """Report errors of multiprocessing children, which BaseProcess._bootstrap prints itself.

    _bootstrap prints the error with traceback.print_exc(): the exception is recorded there, where
    no frame of ours can show in the traceback the child prints."""
    global _PATCHES
    bootstrap = process.BaseProcess._bootstrap
    _process["bootstrap_code"] = bootstrap.__code__
    if "traceback" in sys.modules:
        _patch_traceback(sys.modules["traceback"])
    else:  # import it only when a child fails, as _bootstrap does: _PATCHES patches it then
        _PATCHES += " traceback=_patch_traceback"

    def reporting_bootstrap(self, *args, **kwargs):
        # A child is not a script of its own: its failures and clean exits take no part in the
        # success tracking of the script that started it (nor of spawn's generated -c command).
        _process["multiprocessing_child"] = True
        exitcode = bootstrap(self, *args, **kwargs)
        failure, _process["child_failure"] = _process["child_failure"], None
        if failure:  # the traceback is printed by now: the hint comes under it, as in the parent
            _call_agent("_on_error", failure[0], failure[1], failure[2], True)
        return exitcode
    process.BaseProcess._bootstrap = reporting_bootstrap


def _patch_traceback(traceback) -> None:
    print_exc = traceback.print_exc

    def recording_print_exc(*args, **kwargs):
        caller = sys._getframe().f_back  # None when called straight from C (atexit, a new thread)
        if caller is not None and caller.f_code is _process["bootstrap_code"]:
            _process["child_failure"] = sys.exc_info()
        return print_exc(*args, **kwargs)
    traceback.print_exc = recording_print_exc


def _interactive() -> bool:
    # IPython sets sys.ps1 in kernels and for `ipython script.py` too: there only its prompt counts
    at_prompt = _at_ipython_prompt() if _process["ipython"] else hasattr(sys, "ps1") or sys.flags.interactive
    return bool(at_prompt) and os.environ.get("ERROR_AGENT_INTERACTIVE", "") in ("", "0")


def _on_error(exc_type, exc, tb, wait_for_hint: bool, handled: bool = False) -> None:
    if exc_type is None or issubclass(exc_type, (KeyboardInterrupt, SystemExit)) or _interactive():
        return
    _process["error_seen"] = True
    settings = _settings()
    if not settings.enabled:
        return
    with _Reporting():
        if _exception_type_name(exc_type) in _CELL_ERRORS:
            _on_cell_execution_error(exc, settings)
        else:
            _report_error(exc_type, exc, tb, settings, wait_for_hint, handled)


# Logged errors and capture(): handled errors. The program carried on, so nobody waits at its
# terminal for a hint: the report goes out in the background, and the failure waits on the server.
# An exception reported twice (logged, then raised uncaught; logged at two levels) is one report.

class _Reporting:
    """Marks the thread as reporting: what it logs meanwhile is the agent's doing, not an error."""

    def __enter__(self):
        import _thread
        self.ident = _thread.get_ident()
        _process.setdefault("reporting", set()).add(self.ident)

    def __exit__(self, *exc_info):
        _process["reporting"].discard(self.ident)


def _on_logged_error(record) -> None:
    """A log record at ERROR or above with exception info (the start-up part patches logging)."""
    import threading
    if threading.current_thread().name.startswith(_APP) or threading.get_ident() in _process.get("reporting", ()):
        return  # logged by the agent's own threads, or while the agent reports
    exc_type, exc, tb = record.exc_info
    if id(exc) in _process.get("asyncio_logging", ()):
        return  # asyncio logging a task's error nobody retrieved: reported as unhandled (_patch_asyncio)
    _on_error(exc_type, exc, tb, wait_for_hint=False, handled=True)


def capture(error: BaseException | None = None) -> str | None:
    """Report the exception being handled (or ``error``) as a handled error, as logging it would;
    call it in an ``except`` block. Returns the report's event id, or None when nothing was sent:
    no exception, the agent disabled, or this exception reported already."""
    exc = error if error is not None else sys.exc_info()[1]
    if exc is None or _reported_as(exc) is not None:
        return None
    settings = _settings()
    if settings.enabled:
        _process["error_seen"] = True
        with _Reporting():
            _call_agent("_report_error", type(exc), exc, exc.__traceback__, settings, False, True)
    event = _reported_as(exc)
    return event[0] if event else None


_REPORTED = "__corp_error_agent_event__"  # (event_id, handled) on an exception once reported


def _reported_as(exc):
    event = getattr(exc, _REPORTED, None)
    return event if isinstance(event, tuple) else None


def _mark_reported(exc, event_id: str, handled: bool) -> None:
    try:
        setattr(exc, _REPORTED, (event_id, handled))
    except Exception:  # an exception type with __slots__ and no __dict__
        pass


# IPython and Jupyter print the tracebacks of cells themselves, and never call sys.excepthook.
# The agent wraps InteractiveShell.showtraceback and showsyntaxerror, which everything that shows
# a user's error goes through (cells, `ipython script.py`, %run): the hint then comes right under
# the traceback, in the cell's output in a notebook. A notebook is the script (see
# _notebook_source); a cell that failed and later runs cleanly is the first clean run.

def _patch_ipython(interactiveshell) -> None:
    import functools
    _process["ipython"] = True
    shell_class = interactiveshell.InteractiveShell

    def reporting(show):
        @functools.wraps(show)
        def show_and_report(self, *args, **kwargs):
            show(self, *args, **kwargs)
            _call_agent("_on_shown_error", self, args[0] if show.__name__ == "showtraceback" and args else
                        kwargs.get("exc_tuple"))
        return show_and_report
    shell_class.showtraceback = reporting(shell_class.showtraceback)
    shell_class.showsyntaxerror = reporting(shell_class.showsyntaxerror)
    init_events = shell_class.init_events

    @functools.wraps(init_events)
    def init_events_and_ours(self):
        init_events(self)
        _call_agent("_watch_cells", self)
    shell_class.init_events = init_events_and_ours
    if shell_class.initialized():
        _watch_cells(shell_class.instance())


def _watch_cells(shell) -> None:
    def pre_run_cell(info=None):
        _call_agent("_on_cell_start", shell, info)

    def post_run_cell(result=None):
        if getattr(result, "success", False):
            _call_agent("_on_cell_success", result)
    shell.events.register("pre_run_cell", pre_run_cell)
    shell.events.register("post_run_cell", post_run_cell)


def _on_cell_start(shell, info) -> None:
    raw_cell = getattr(info, "raw_cell", None)
    _process["cell"] = _hash12(raw_cell) if isinstance(raw_cell, str) else None
    if _process["script"] is None and type(shell).__module__.startswith("ipykernel"):
        source = _process["script"] = _notebook_source(shell)
        # not the launcher's, computed at start-up; none for a kernel not told its notebook, or the
        # clean run of any such notebook would count as the fix of another's failure
        _process["pending"] = "" if os.path.basename(source[1]) == "<kernel>" else None


def _on_cell_success(result) -> None:
    path = _pending_path()
    failure = _read_json(path) if path and _process["cell"] and os.path.exists(path) else None
    if isinstance(failure, dict) and failure.get("cell") == _process["cell"]:
        _report_clean_exit()


def _on_shown_error(shell, exc_tuple) -> None:
    try:
        exc_type, exc, tb = shell._get_exc_info(exc_tuple)
    except Exception:
        return
    while tb is not None and str(tb.tb_frame.f_globals.get("__name__", "")).startswith("IPython."):
        tb = tb.tb_next  # IPython's own frames, which it leaves out of what it shows too
    if _reported_as(exc) is None:
        _on_error(exc_type, exc, tb, wait_for_hint=True)


def _at_ipython_prompt() -> bool:
    """Whether this runs under the prompt of terminal IPython (not `ipython script.py`, not a kernel)."""
    frame = sys._getframe()
    while frame is not None:
        if frame.f_code.co_name in ("interact", "mainloop") and \
                frame.f_globals.get("__name__") == "IPython.terminal.interactiveshell":
            return True
        frame = frame.f_back
    return False


def _notebook_source(shell):
    """The notebook a kernel runs: its path where the kernel is told it (Jupyter server, VS Code) or
    its launcher's command line names it (nbconvert, papermill, nbclient scripts), else the kernel's
    working directory, which Jupyter and nbconvert set to the notebook's."""
    user_ns = getattr(shell, "user_ns", {})
    for named in (os.environ.get("JPY_SESSION_NAME"), user_ns.get("__vsc_ipynb_file__")):
        if isinstance(named, str) and named.endswith(".ipynb"):
            path = named if os.path.isabs(named) else os.path.join(os.getcwd(), os.path.basename(named))
            return "notebook", path
    try:
        with open("/proc/%d/cmdline" % os.getppid(), "rb") as f:
            args = f.read().decode("utf-8", "surrogateescape").split("\0")
        notebooks = [a for a in args if a.endswith(".ipynb")]
        if notebooks:
            cwd = os.readlink("/proc/%d/cwd" % os.getppid())
            return "notebook", os.path.normpath(os.path.join(cwd, notebooks[0]))
    except (OSError, ValueError):
        pass
    return "notebook", os.path.join(os.getcwd(), "<kernel>")


# A notebook launcher (nbconvert --execute, nbclient) raises CellExecutionError for a failing cell,
# with the cell's traceback as its message. The kernel, with the agent in it, has reported the cell's
# own exception already: the launcher then only shows its hint. A kernel without the agent leaves
# it to the launcher, which reports the cell's exception from what the kernel sent.
_CELL_ERRORS = ("nbclient.exceptions.CellExecutionError", "nbconvert.preprocessors.execute.CellExecutionError")


def _on_cell_execution_error(exc, settings: _Settings) -> None:
    import time
    path = _pending_path()
    failure = _read_json(path) if path else None
    started = _started or time.time()
    if isinstance(failure, dict) and _float(failure.get("ts"), 0.0) >= started and failure.get("cell"):
        _ask_hint_only(settings, failure["env_hash"], failure["error_sig"])
        return
    ename = _sanitize(getattr(exc, "ename", "") or "CellExecutionError", 100) or "CellExecutionError"
    evalue = _safe_str(getattr(exc, "evalue", ""))
    message = _normalise_message(scrub(evalue[:_TRACE_LIMIT]))
    error_sig = (ename + (": " + message if message else "") + " @ __main__.<module>")[:_SIG_LIMIT]
    trace = scrub(_strip_escapes(str(getattr(exc, "traceback", "") or ename + ": " + evalue)))[-_TRACE_LIMIT:]
    _report_error(type(exc), exc, None, settings, True, trace=trace, error_sig=error_sig)


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
# (a path does not end in ")": ImportError's "from 'mod' (/path/mod.py)" keeps its parenthesis)
_PATH = r"(?<![\w.<>])(?:[A-Za-z]:[\\/]|~[\\/]|/)[^\s'\"]*[^\s'\")]"
_MESSAGE_PATTERNS = (
    (_PATH, "<path>"),
    (r"(?i)\b0x[0-9a-f]+\b", "<hex>"),
    (r"(?i)\b[0-9a-f]{8}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{4}-?[0-9a-f]{12}\b", "<hex>"),
    (r"(?i)\b(?=[a-f]*\d)[0-9a-f]{10,}\b", "<hex>"),
    (r"(?<![\w<])\d+(?:\.\d+)*", "<n>"),
)
_DID_YOU_MEAN = r"\.?\s*did you mean:? .*$"


# Terminal escape sequences (CSI, OSC, lone ESC), as in IPython's coloured tracebacks: stripped from
# everything sent, and, with the other control characters, from every hint printed (_ESCAPES).
_TERMINAL_ESCAPES = r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]?"


def _strip_escapes(text: str) -> str:
    import re
    return re.sub(_TERMINAL_ESCAPES, "", text) if "\x1b" in text else text


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
    text = _sub_all(_strip_escapes(text), _SECRET_PATTERNS)
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
        module = str(frame.f_globals.get("__name__", "?"))
        # multiprocessing's spawn runs the main script as __mp_main__: the same code, the same bug.
        frames.append(("__main__" if module == "__mp_main__" else module) + "." + name)
        tb = tb.tb_next
    return frames[::-1][:count]


def error_signature(exc_type, exc, tb) -> str:
    """Same for the same bug across runs, users and machines; readable; bounded."""
    message = _normalise_message(scrub(_safe_str(exc)[:_TRACE_LIMIT]))
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

def _hash12(data: str) -> str:
    import hashlib
    return hashlib.sha256(data.encode("utf-8", "surrogateescape")).hexdigest()[:12]


def _script_identity():
    """(script_id, display name): the same script content gives the same id on any machine."""
    kind, what = _script_source() or ("-m", "")  # (``-m`` before 3.10, importing its module's package)
    if kind == "file":
        try:
            with open(what, "rb") as f:
                content = f.read(1 << 20)
            import hashlib
            return hashlib.sha256(content).hexdigest()[:12], os.path.basename(what)
        except OSError:
            pass
    if kind in ("notebook", "run"):  # a notebook's content changes as it runs: its path is the id
        words = what.split(" ")
        name = os.path.basename(what) if kind == "notebook" else " ".join(_relative(word) for word in words)
        return _hash12(kind + " " + scrub(what)), _strip_escapes(scrub(name))[:200]
    # (a file gone or unreadable by now is still named by its file name)
    name = {"-m": " ".join(["-m"] + [_relative(word) for word in what.split(" ") if word]), "-c": "-c",
            "file": os.path.basename(what)}.get(kind, "<stdin>")
    return _hash12(kind + " " + what), _strip_escapes(scrub(name))[:200]


def _relative(word: str) -> str:
    try:
        return os.path.relpath(word) if os.path.isabs(word) else word
    except ValueError:  # another drive
        return word


def _beacon(kind: str, env_hash: str, **fields) -> dict:
    import time
    script_id, script_name = _script_identity()
    beacon = {"kind": kind, "env_hash": env_hash, "script_id": script_id, "script_name": script_name,
              "ts": time.time(), "event_id": os.urandom(16).hex(), "agent": _USER_AGENT}
    host = _host_name()
    if host:
        beacon["host"] = host
    beacon.update(fields)
    return beacon


def _host_name() -> str:
    """The machine's name, for the team's view of which machines fail (ERROR_AGENT_SEND_HOST=0: "")."""
    if os.environ.get("ERROR_AGENT_SEND_HOST", "").strip().lower() in ("0", "false", "no", "off"):
        return ""
    import socket
    try:
        return _sanitize(scrub(socket.gethostname()), 255)
    except Exception:
        return ""

###############################################################################
# Environment snapshot ########################################################
###############################################################################
# Distribution names and versions come from the *.dist-info / *.egg-info directory names on
# sys.path, which costs one listdir per path entry; the result is cached on disk, keyed on the path
# entries and their mtimes (installing or removing a package changes the directory's mtime).


def _canonical(name: str) -> str:
    import re
    return re.sub(r"[-_.]+", "-", name).lower()


def _parse_dist_entry(entry: str):
    """(name, version) from a metadata directory name, or None when the name does not carry both."""
    stem = entry.rsplit(".", 1)[0]
    parts = stem.split("-")
    if len(parts) < 2 or not parts[0] or not parts[1][:1].isdigit():
        return None
    return _canonical(parts[0]), parts[1]


def _metadata_fallback(path: str):
    try:
        from importlib.metadata import Distribution
        dist = Distribution.at(path)
        name, version = dist.metadata["Name"], dist.version
        return (_canonical(name), version) if name and version else None
    except Exception:
        return None


def _scan_distributions(paths) -> dict:
    packages = {}
    for directory in paths:
        try:
            entries = sorted(os.listdir(directory or "."))
        except OSError:
            continue
        for entry in entries:
            if not entry.endswith((".dist-info", ".egg-info")):
                continue
            parsed = _parse_dist_entry(entry) or _metadata_fallback(os.path.join(directory, entry))
            if parsed and parsed[0] not in packages:  # the first on sys.path is the one imported
                packages[parsed[0]] = parsed[1]
    return packages


def _path_key(paths) -> str:
    stamps = []
    for directory in paths:
        try:
            stamps.append("%s:%d" % (directory, os.stat(directory or ".").st_mtime_ns))
        except OSError:
            stamps.append(directory + ":-")
    uname = os.uname().release if hasattr(os, "uname") else ""
    return _hash12("\n".join([sys.executable, sys.version, uname] + stamps))


def _platform_facts() -> dict:
    import platform
    # Not platform.platform(): it asks `uname -p` in a subprocess and scans the interpreter binary.
    os_info = "-".join(p for p in (platform.system(), platform.release(), platform.machine()) if p)
    return {"python_ver": platform.python_version()[:20], "python_impl": platform.python_implementation(),
            "os_info": os_info[:120], "machine_arch": (platform.machine() or "unknown")[:20]}


def _installed(cache: str | None) -> dict:
    """Packages and platform facts, from the on-disk cache when nothing on sys.path changed."""
    paths = [p for p in sys.path if isinstance(p, str)]
    key = _path_key(paths)
    # One file per interpreter, so that the cache stays as small as the number of interpreters.
    cache_file = os.path.join(cache, "snapshot-%s.json" % _hash12(sys.executable)) if cache else None
    cached = _read_json(cache_file) if cache_file else None
    if isinstance(cached, dict) and cached.get("key") == key and isinstance(cached.get("packages"), dict):
        return cached
    facts = dict(_platform_facts(), packages=_scan_distributions(paths), key=key)
    if cache_file:
        _write_atomic(cache_file, facts)
    return facts


def _allowed_env_names() -> list:
    extra = os.environ.get("ERROR_AGENT_ENV_ALLOW", "")
    names = list(ENV_ALLOW) + [n.strip() for n in extra.split(",") if n.strip()]
    return sorted(set(names))


def snapshot(cache: str | None = None) -> dict:
    """Exactly the environment payload an error sends (``POST /env``), scrubbed, with its env_hash."""
    import json
    facts = _installed(cache)
    env_vars = {name: scrub(os.environ[name]) if name in os.environ else "MISSING"
                for name in _allowed_env_names()}
    body = {"packages": facts["packages"], "python_ver": facts["python_ver"],
            "python_impl": facts["python_impl"], "os_info": facts["os_info"],
            "machine_arch": facts["machine_arch"], "env_vars": env_vars}
    env_hash = _hash12(json.dumps(body, sort_keys=True))
    body["packages"] = ["%s==%s" % item for item in sorted(facts["packages"].items())]
    return dict(body, env_hash=env_hash)

###############################################################################
# Transport and spool #########################################################
###############################################################################
# Every beacon is written to the spool before it is sent and removed once the backend took it, so
# a dead backend, a slow one, or the process ending mid-request never loses it; the server drops
# duplicates by event_id. Retry policy: connection failures, 5xx and 429 keep the entry (and open
# the circuit breaker); any other 4xx means the backend will never take it: dropped and counted.

def _write_atomic(path: str, data) -> None:
    import json
    tmp = "%s.%d.%s.tmp" % (path, os.getpid(), os.urandom(4).hex())
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def _state_dir() -> str:
    """The cache dir (0700), or a per-user temp dir when it cannot be written."""
    if _process["state_dir"] is None:
        for candidate in (_cache_dir(), None):
            if candidate is None:  # tempfile costs 3 ms to import: only when it is needed
                import tempfile
                uid = os.getuid() if hasattr(os, "getuid") else os.environ.get("USERNAME", "user")
                candidate = os.path.join(tempfile.gettempdir(), "%s-%s" % (_APP, uid))
            try:
                os.makedirs(candidate, mode=0o700, exist_ok=True)
                os.makedirs(os.path.join(candidate, "spool"), mode=0o700, exist_ok=True)
                if os.access(candidate, os.W_OK):
                    _process["state_dir"] = candidate
                    break
            except OSError:
                continue
        else:
            raise OSError("no writable state directory")
    return _process["state_dir"]


def _count_dropped(state_dir: str, reason: str, beacon: dict) -> None:
    import time
    line = "%.3f %s %s\n" % (time.time(), reason, beacon.get("event_id", "-"))
    fd = os.open(os.path.join(state_dir, "dropped.log"), os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a") as f:
        f.write(line)


def _spool_entries(state_dir: str) -> list:
    spool = os.path.join(state_dir, "spool")
    try:
        return [os.path.join(spool, n) for n in sorted(os.listdir(spool)) if n.endswith(".json")]
    except OSError:
        return []


def _spool_put(state_dir: str, entry: dict) -> str:
    import time
    beacon = entry["beacon"]
    name = "%020d-%s.json" % (int(beacon["ts"] * 1e6), beacon["event_id"])
    path = os.path.join(state_dir, "spool", name)
    _write_atomic(path, entry)
    for oldest in _spool_entries(state_dir)[:-_SPOOL_MAX_FILES]:
        _spool_drop(state_dir, oldest, "spool-full")
    cutoff = "%020d" % int((time.time() - _SPOOL_MAX_AGE) * 1e6)
    for expired in (p for p in _spool_entries(state_dir) if os.path.basename(p) < cutoff):
        _spool_drop(state_dir, expired, "expired")
    return path


def _spool_drop(state_dir: str, path: str, reason: str) -> None:
    claimed = _spool_claim(path)
    if claimed:
        entry = _read_json(claimed) or {}
        _spool_release(claimed, keep=False)
        _count_dropped(state_dir, reason, entry.get("beacon", {}))


def _spool_claim(path: str):
    """Rename the entry so that exactly one process delivers it; None when another got it first."""
    claimed = "%s.%d.%s.claimed" % (path, os.getpid(), _pid_space())
    try:
        os.rename(path, claimed)
    except OSError:
        return None
    try:
        os.utime(claimed)  # a rename keeps the entry's mtime: staleness is the claim's age
    except OSError:
        pass
    return claimed


def _pid_space() -> str:
    """Which processes a pid in a claim refers to: the cache dir may be shared by containers and
    machines (a bind-mounted or NFS home), whose pids this process cannot see."""
    if _process["pid_space"] is None:
        uname = getattr(os, "uname", None)
        try:
            namespace = os.readlink("/proc/self/ns/pid")
        except OSError:  # no /proc: not Linux
            namespace = ""
        space = (uname().nodename if uname else "") + namespace
        _process["pid_space"] = "".join(c if c.isalnum() else "-" for c in space)[:80] or "-"
    return _process["pid_space"]


def _spool_release(claimed: str, keep: bool) -> None:
    """Remove a claimed entry, or put it back. Gone already: a recovery judged this process dead
    (it waited past the stale age) and handed the entry on; the server drops the duplicate."""
    try:
        if keep:
            os.rename(claimed, claimed.rsplit(".", 3)[0])
        else:
            os.unlink(claimed)
    except FileNotFoundError:
        pass


def _claimant_gone(name: str) -> bool:
    """Whether the process named in a claim has ended (a host exits while its delivery still waits).
    Only a process of this pid space can tell; elsewhere the claim's age decides."""
    try:
        _, pid, space, _ = name.rsplit(".", 3)
        pid = int(pid)
    except ValueError:
        return True
    if os.name == "nt" or space != _pid_space() or pid == os.getpid():  # os.kill terminates on Windows
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # alive, owned by someone else
        return False
    return False


def _recover_stale_claims(state_dir: str) -> None:
    """Entries claimed by a process that ended mid-delivery go back into the spool."""
    import time
    spool = os.path.join(state_dir, "spool")
    for name in os.listdir(spool):
        path = os.path.join(spool, name)
        try:
            if name.endswith(".claimed") and (_claimant_gone(name) or time.time() - os.stat(path).st_mtime > 300):
                _spool_release(path, keep=True)
            elif name.endswith(".tmp") and time.time() - os.stat(path).st_mtime > 300:
                os.unlink(path)
        except OSError:
            continue


class _Unreachable(Exception):
    """The backend could not be reached or failed to answer: keep the beacon, open the breaker."""

    def __init__(self, reason: str, retry_after: float = _BREAKER_SECONDS, status=None, cause=None):
        super().__init__(reason)
        self.retry_after = retry_after
        self.status = status  # the HTTP status of a 5xx or 429 answer
        self.cause = cause    # the exception that ended the request


def _bounded_opener(seconds: float):
    """A urllib opener whose request ends within ``seconds`` in all. A socket timeout bounds each read
    only: a backend trickling its answer a byte at a time would hold the process as long as it likes,
    and at exit on 3.12 (no threads at shutdown) the delivery runs in the host's main thread."""
    import http.client
    import socket
    import ssl
    import time
    import urllib.request
    deadline = time.monotonic() + seconds

    def remaining() -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("no answer within %gs" % seconds)
        return left

    def within(sock, operation, *args):
        sock.settimeout(remaining())
        try:
            return operation(*args)
        except socket.timeout:
            raise socket.timeout("no answer within %gs" % seconds) from None

    class Bounded:  # each operation of the socket gets what is left of the time
        def recv_into(self, *args):
            return within(self, super().recv_into, *args)

        def sendall(self, *args):
            return within(self, super().sendall, *args)

    class Plain(Bounded, socket.socket):
        pass

    class Secure(Bounded, ssl.SSLSocket):
        def do_handshake(self, *args):
            return within(self, super().do_handshake, *args)

    def connect(address, timeout, *args):
        made = socket.create_connection(address, min(timeout, remaining()), *args)
        return Plain(made.family, made.type, made.proto, made.detach())

    def bounded(connection_class):
        def make(host, **kwargs):
            connection = connection_class(host, **kwargs)
            connection._create_connection = connect  # (how http.client opens its socket, 3.8-3.13)
            return connection
        return make

    class Http(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(bounded(http.client.HTTPConnection), req)

    class Https(urllib.request.HTTPSHandler):
        def https_open(self, req):
            # urllib's own context (a host's PEP 476 opt-out included), with bounded sockets
            context = ssl._create_default_https_context()
            context.sslsocket_class = Secure
            return self.do_open(bounded(http.client.HTTPSConnection), req, context=context)
    return urllib.request.build_opener(Http, Https)


def _post(settings: _Settings, path: str, payload: dict, timeout: float):
    """POST JSON; returns (status, body bytes). Raises _Unreachable for what is worth retrying."""
    import json
    import urllib.error
    import urllib.request
    headers = {"Content-Type": "application/json", "User-Agent": _USER_AGENT}
    if settings.token:
        headers["Authorization"] = "Bearer " + settings.token
    body = json.dumps(payload)
    if "\\ud" in body:  # a surrogate escape: maybe a lone one, which strict servers refuse
        body = json.dumps(_wire_safe(payload))
    import _thread
    contacting = _process.setdefault("contacting", {})  # see _wait
    contacting[_thread.get_ident()] = settings
    try:  # (a URL urllib cannot use, "errors.example" without its scheme, fails as the backend does)
        request = urllib.request.Request(settings.url + path, data=body.encode("utf-8"), headers=headers,
                                         method="POST")
        with _bounded_opener(timeout).open(request, timeout=timeout) as response:
            return response.status, response.read(_RESPONSE_LIMIT + 1)
    except urllib.error.HTTPError as error:
        if error.code == 429 or error.code >= 500 or error.code < 400:
            retry_after = _float(error.headers.get("Retry-After"), _BREAKER_SECONDS)
            raise _Unreachable("HTTP %d" % error.code, min(max(retry_after, 1.0), 3600.0), error.code) from None
        return error.code, _error_body(error)
    except Exception as error:  # refused, reset, timeout, DNS, TLS, malformed answer
        raise _Unreachable(type(error).__name__ + ": " + str(error), cause=error) from None
    finally:
        contacting.pop(_thread.get_ident(), None)


def _error_body(error) -> bytes:
    """The body of a 4xx answer (the server's reason), bounded; b"" when it cannot be read."""
    try:
        return error.read(_RESPONSE_LIMIT + 1)
    except Exception:
        return b""


def _wire_safe(value):
    """Valid Unicode throughout: lone surrogates (undecodable bytes in a file or package name, a
    message, an env value) escaped, or a strict server refuses the report and it is lost."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    if isinstance(value, dict):
        return {_wire_safe(key): _wire_safe(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_wire_safe(item) for item in value]
    return value


def _breaker_path(state_dir: str, settings: _Settings) -> str:
    """One breaker per backend: another URL is tried at once."""
    return os.path.join(state_dir, "breaker-" + _hash12(settings.url) + ".json")


def _breaker_open(state_dir: str, settings: _Settings) -> bool:
    import time
    data = _read_json(_breaker_path(state_dir, settings))
    return isinstance(data, dict) and _float(data.get("until"), 0.0) > time.time()


def _trip_breaker(state_dir: str, settings: _Settings, error: _Unreachable) -> None:
    import time
    _write_atomic(_breaker_path(state_dir, settings),
                  {"until": time.time() + error.retry_after, "reason": str(error), "url": settings.url})


def _close_breaker(state_dir: str, settings: _Settings) -> None:
    """The backend answered: the next error is sent and asks for its hint again."""
    try:
        os.unlink(_breaker_path(state_dir, settings))
    except FileNotFoundError:
        pass


def _deliver(settings: _Settings, state_dir: str, claimed: str, timeout: float) -> str:
    """Send one claimed spool entry: ``delivered``, ``rejected`` (4xx, dropped) or ``kept``."""
    entry = _read_json(claimed)
    if not isinstance(entry, dict) or not isinstance(entry.get("beacon"), dict):
        _spool_release(claimed, keep=False)  # a torn entry cannot be written by _write_atomic; be safe anyway
        return "rejected"
    try:
        status, _ = _post(settings, "/beacon", entry["beacon"], timeout)
        if status == 204 and isinstance(entry.get("env"), dict):
            _post(settings, "/env", entry["env"], timeout)
    except _Unreachable as error:
        _spool_release(claimed, keep=True)
        _trip_breaker(state_dir, settings, error)
        raise
    if status >= 400:
        _spool_release(claimed, keep=False)
        _count_dropped(state_dir, "rejected-%d" % status, entry["beacon"])
        return "rejected"
    _spool_release(claimed, keep=False)
    _note_delivery(state_dir, settings, status)
    return "delivered"


def _note_delivery(state_dir: str, settings: _Settings, status: int) -> None:
    """A beacon the backend took: ``status`` shows it, and the breaker closes (the backend is back)."""
    import time
    _write_atomic(os.path.join(state_dir, "last_delivery.json"),
                  {"ts": time.time(), "url": settings.url, "status": status})
    _close_breaker(state_dir, settings)


def _drain(settings: _Settings, state_dir: str, first=None, limit: int = _SPOOL_DRAIN_BATCH,
           timeout: float = _CONNECT_TIMEOUT) -> dict:
    """Deliver ``first`` (this event's entry), then the oldest spooled entries, up to ``limit``."""
    counts = {"delivered": 0, "rejected": 0, "kept": 0}
    _recover_stale_claims(state_dir)
    queue = ([first] if first else []) + [p for p in _spool_entries(state_dir) if p != first]
    try:
        for path in queue[:limit]:
            claimed = _spool_claim(path)
            if claimed:
                counts[_deliver(settings, state_dir, claimed, timeout)] += 1
    except _Unreachable:
        pass
    counts["kept"] = len(_spool_entries(state_dir))
    return counts


def _suggest(settings: _Settings, request: dict, timeout: float):
    import json
    try:
        status, body = _post(settings, "/suggest", request, timeout)
        answer = json.loads(body.decode("utf-8")) if status == 200 and len(body) <= _RESPONSE_LIMIT else None
    except (_Unreachable, ValueError):
        return None
    return answer if isinstance(answer, dict) else None


def _send_env_once(settings: _Settings, state_dir: str, env: dict, timeout: float) -> None:
    """Make sure the backend knows this environment before it is asked about it."""
    marker = os.path.join(state_dir, "known-" + _hash12(settings.url + env["env_hash"]))
    if os.path.exists(marker):
        return
    try:
        status, _ = _post(settings, "/env", env, timeout)
    except _Unreachable:
        return
    if status < 300:
        open(marker, "a").close()


def _wait(thread, timeout: float, what: str) -> None:
    """Join a worker; tell a person at a terminal what we wait for. Ctrl-C ends the wait."""
    import time
    deadline = time.monotonic() + timeout
    thread.join(min(1.0, timeout))
    if thread.is_alive() and _stderr_is_tty():
        sys.stderr.write("corp-error-agent: waiting up to %.0fs for %s (Ctrl-C skips)\n"
                         % (deadline - time.monotonic(), what))
        sys.stderr.flush()
    thread.join(max(0.0, deadline - time.monotonic()))
    # The host leaves now, before the worker's request times out on its own: a wait that ends without
    # an answer is a failure of the backend, or every later error would wait the full time again.
    settings = _process.get("contacting", {}).get(thread.ident)
    if thread.is_alive() and settings is not None:
        _trip_breaker(_state_dir(), settings, _Unreachable("no answer within the %gs wait (ERROR_AGENT_SUGGEST_TIMEOUT)"
                                                               % _suggest_timeout()))


def _report_error(exc_type, exc, tb, settings: _Settings, wait_for_hint: bool, handled: bool = False,
                  trace: str | None = None, error_sig: str | None = None) -> None:
    """Spool and send an error report; then, unless it was handled, wait a bounded time for a hint."""
    import threading
    import time
    started = time.monotonic()
    reported = _reported_as(exc)
    if reported is not None and (handled or not reported[1]):
        return  # one exception, one report; logged, then raised uncaught, it still gets its hint
    state_dir = _state_dir()
    env = snapshot(state_dir)
    error_sig = error_sig or error_signature(exc_type, exc, tb)
    spooled = None
    if reported is None:
        beacon = _beacon("error", env["env_hash"], trace=trace or format_trace(exc_type, exc, tb),
                         error_sig=error_sig, **({"handled": True} if handled else {}))
        _mark_reported(exc, beacon["event_id"], handled)
        spooled = _spool_put(state_dir, {"beacon": beacon, "env": env})
    try:  # success tracking needs the cache dir itself, not the temp-dir fallback
        if not (handled or _process["multiprocessing_child"]):
            _write_pending({"ts": time.time(), "env_hash": env["env_hash"], "error_sig": error_sig,
                            "cell": _process["cell"]})
    except OSError:
        pass
    if _breaker_open(state_dir, settings):
        return
    timeout = _suggest_timeout()
    # _call_agent as the target: nothing a worker meets (a full disk, say) reaches the host's stderr
    delivery = None
    if spooled is not None:
        delivery = threading.Thread(target=_call_agent, args=("_drain", settings, state_dir, spooled), daemon=True,
                                    name=_APP + "-delivery")
        delivery.start()
    if not wait_for_hint or handled:
        if delivery is not None:
            if not _process.get("deliveries"):
                import atexit
                atexit.register(_finish_background_deliveries)
            _process["deliveries"] = [d for d in _process.get("deliveries", []) if d.is_alive()] + [delivery]
        return
    if settings.hints and timeout > 0:
        _ask_hint(settings, state_dir, env, {"error_sig": error_sig, "env_hash": env["env_hash"],
                                         "script_id": _script_identity()[0]}, timeout)
    if delivery is not None:
        _wait(delivery, max(0.0, timeout - (time.monotonic() - started)), "the error report to be delivered")


def _ask_hint(settings: _Settings, state_dir: str, env, request: dict, timeout: float) -> None:
    """Ask for a hint in a worker, wait for it (bounded), print it under the traceback."""
    import threading
    answer = {}
    suggestion = threading.Thread(target=_call_agent, daemon=True, name=_APP + "-suggest",
                                  args=("_ask_for_hint", settings, state_dir, env, request, timeout, answer))
    suggestion.start()
    _wait(suggestion, timeout, "a fix suggestion from " + settings.url)
    if answer.get("hint"):
        _print_hint(answer["hint"], settings)


def _ask_hint_only(settings: _Settings, env_hash: str, error_sig: str) -> None:
    """The hint for an error another process (a notebook's kernel) reported."""
    timeout = _suggest_timeout()
    if settings.hints and timeout > 0 and not _breaker_open(_state_dir(), settings):
        _ask_hint(settings, _state_dir(), None, {"error_sig": error_sig, "env_hash": env_hash,
                                                 "script_id": _script_identity()[0]}, timeout)


def _ask_for_hint(settings: _Settings, state_dir: str, env, request: dict, timeout: float, answer: dict) -> None:
    if env is not None:
        _send_env_once(settings, state_dir, env, timeout)
    answer["hint"] = _suggest(settings, request, timeout)


def _finish_background_deliveries() -> None:
    """At exit, give reports of thread and asyncio errors the usual bounded time to arrive."""
    import time
    deadline = time.monotonic() + _suggest_timeout()
    for delivery in _process.get("deliveries", []):
        _wait(delivery, max(0.0, deadline - time.monotonic()), "error reports to be delivered")


# <cache dir>/pending/<script file name> exists only while a failure of a script of that name
# waits in it, so that a start checks one directory, not what its script is (see activate).

def _write_pending(failure: dict) -> None:
    import time
    path = _pending_path()
    if not path:
        return
    for _ in range(2):  # a clean exit elsewhere may remove the emptied directory in between
        os.makedirs(os.path.dirname(os.path.dirname(path)), mode=0o700, exist_ok=True)
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        try:
            _write_atomic(path, failure)
            break
        except FileNotFoundError:
            continue
    for name in os.listdir(os.path.dirname(path)):  # failures never followed by a clean run
        other = os.path.join(os.path.dirname(path), name)
        try:
            if time.time() - os.stat(other).st_mtime > _PENDING_MAX_AGE:
                os.unlink(other)
        except OSError:
            continue


def _pending_failure():
    import time
    path = _pending_path()
    failure = _read_json(path) if path else None
    if not isinstance(failure, dict):
        return None
    os.unlink(path)
    try:
        os.rmdir(os.path.dirname(path))  # only when it was the last one
    except OSError:
        pass
    return failure if time.time() - _float(failure.get("ts"), 0.0) < _PENDING_MAX_AGE else None


def _at_exit() -> None:
    # sys.last_type: an uncaught exception shown by a hook that is not ours (a replaced sys.excepthook)
    if not _process["error_seen"] and getattr(sys, "last_type", None) is None and \
            _process.get("exit_status") in (None, 0):  # (set by _watch_exit)
        _report_clean_exit()


def _report_clean_exit() -> None:
    """Report the first clean run after a failure (or every run, with ERROR_AGENT_SUCCESS=always)."""
    always = _success_always()
    settings = _settings()
    if not settings.enabled or _process["multiprocessing_child"]:
        return
    state_dir = _state_dir()
    failure = _pending_failure()
    if failure is None and not always:
        return
    env = snapshot(state_dir)
    previous = {"prev_env_hash": failure["env_hash"], "prev_error_sig": failure["error_sig"]} if failure else {}
    spooled = _spool_put(state_dir, {"beacon": _beacon("success", env["env_hash"], **previous), "env": env})
    if failure is None and len(_spool_entries(state_dir)) < _SPOOL_DRAIN_BATCH:
        return  # routine successes travel in batches
    if not _breaker_open(state_dir, settings):
        # The socket timeout bounds each read, not a backend trickling its answer: the host's exit
        # waits for the whole delivery at most this long, and a wait without an answer trips the breaker.
        import threading
        bound = min(_CONNECT_TIMEOUT, _suggest_timeout() or _CONNECT_TIMEOUT)
        drain = ("_drain", settings, state_dir, spooled, _SPOOL_DRAIN_BATCH, bound)
        delivery = threading.Thread(target=_call_agent, daemon=True, name=_APP + "-delivery", args=drain)
        try:
            delivery.start()
        except RuntimeError:  # 3.12 refuses new threads at shutdown: this report only, here, in the bound
            _call_agent("_drain", settings, state_dir, spooled, 1, bound / 2)  # (and /env after a 204)
            return
        _wait(delivery, bound, "the success report to be delivered")

###############################################################################
# Hints #######################################################################
###############################################################################

# CSI and OSC sequences, lone ESC, C0/C1 controls, and the invisible format characters that can
# make a command read differently from what it does (bidi overrides, zero-width characters)
_ESCAPES = (_TERMINAL_ESCAPES + r"|[\x00-\x1f\x7f-\x9f]"
            r"|[\u00ad\u061c\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff\U000e0000-\U000e007f]")


def _sanitize(text, limit: int = 500) -> str:
    """Server text made safe for a terminal: no escape sequences, no control characters, one line."""
    import re
    text = text if isinstance(text, str) else ("" if text is None else str(text))
    return " ".join(re.sub(_ESCAPES, " ", text).split())[:limit]


def _stderr_is_tty() -> bool:
    try:
        return sys.stderr is not None and sys.stderr.isatty()
    except Exception:
        return False


def _with_this_pip(command: str, python: str = sys.executable) -> str:
    """The fix's pip commands addressed to the interpreter that failed: a bare ``pip`` is whichever
    one the shell finds first, often another Python's when the venv is not activated."""
    import shlex
    if not python:
        return command
    this_pip = ('"%s"' % python if os.name == "nt" else shlex.quote(python)) + " -m pip "
    return "; ".join(this_pip + part[4:] if part.startswith("pip ") else part
                     for part in (part.strip() for part in command.split(";")))


def _format_hint(answer: dict, min_confidence: float, colour: bool) -> str:
    """The block printed under the traceback, or "" when the answer is not worth showing."""
    confidence = _float(answer.get("confidence"), 0.0)
    if answer.get("match") is not True or confidence < min_confidence:
        return ""
    hint = _sanitize(answer.get("hint") or answer.get("recommendation") or answer.get("formatted_text"))
    solution = _sanitize(answer.get("solution"))
    docs = _sanitize(answer.get("docs"))
    if not (hint or solution):
        return ""
    tag = "\x1b[1;33m[corp-error-agent]\x1b[0m" if colour else "[corp-error-agent]"
    lines = ["", "%s %s" % (tag, hint or "a fix that worked elsewhere:")]
    if solution:
        lines.append("  fix:        " + _with_this_pip(solution))
    if docs:
        lines.append("  docs:       " + docs)
    lines.append("  confidence: %d%%" % round(min(confidence, 1.0) * 100))
    return "\n".join(lines) + "\n"


def _print_hint(answer: dict, settings: _Settings) -> None:
    if sys.stderr is None:
        return
    colour = _stderr_is_tty() and "NO_COLOR" not in os.environ
    block = _format_hint(answer, settings.min_confidence, colour)
    if block:
        encoding = getattr(sys.stderr, "encoding", None) or "ascii"
        sys.stderr.write(block.encode(encoding, "replace").decode(encoding, "replace"))
        sys.stderr.flush()

###############################################################################
# Command line ################################################################
###############################################################################
# ``python -m corp_error_agent``, the ``corp-error-agent`` script and ``python corp_error_agent.py``
# all end here. Usage errors are one line on stderr and exit status 2; no command prints a traceback.

_PTH_LINE = "import corp_error_agent; corp_error_agent.activate()\n"
_START_LINE = "corp_error_agent:activate\n"
_INSTALLED_FILES = ("corp_error_agent.py", "corp_error_agent.pth", "corp_error_agent.start")


class _UsageError(Exception):
    """Bad arguments or values: one line on stderr, exit status 2."""


class _Failure(Exception):
    """The command could not do its job (exit status 1), with a one-line reason."""


def _parser():
    import argparse

    class Parser(argparse.ArgumentParser):
        def error(self, message):
            raise _UsageError(message)

    parser = Parser(prog="corp-error-agent", description="Error agent for Python: configure, inspect, install.")
    parser.add_argument("--version", action="version", version="corp-error-agent " + __version__)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    def command(name, help, json=False):
        sub = commands.add_parser(name, help=help, description=help)
        if json:
            sub.add_argument("--json", action="store_true", help="machine-readable output")
        return sub

    configure = command("configure", "write the persistent configuration")
    configure.add_argument("--url", help="backend URL, http:// or https://")
    configure.add_argument("--token", help="bearer token sent to the backend")
    hints = configure.add_mutually_exclusive_group()  # both given is a typo away from switching off
    hints.add_argument("--hints", dest="hints", action="store_true", default=None, help="print fix hints")
    hints.add_argument("--no-hints", dest="hints", action="store_false", help="do not print fix hints")
    enabled = configure.add_mutually_exclusive_group()
    enabled.add_argument("--enable", dest="enabled", action="store_true", default=None, help="enable the agent")
    enabled.add_argument("--disable", dest="enabled", action="store_false", help="disable the agent")
    configure.add_argument("--min-confidence", type=float, help="smallest confidence a hint needs (0..1)")
    configure.add_argument("--scope", default="user", help="user (default) or system (this interpreter)")
    command("status", "effective settings, hook, spool and backend state", json=True)
    command("test", "send a synthetic error and a suggestion request to the backend", json=True)
    command("flush", "deliver spooled beacons now", json=True)
    command("snapshot", "print exactly the environment data an error sends", json=True)
    for name, verb in (("install", "copy the agent into"), ("uninstall", "remove the agent from")):
        sub = command(name, verb + " this interpreter's site-packages")
        where = sub.add_mutually_exclusive_group()
        where.add_argument("--target", help="a site-packages directory")
        where.add_argument("--user", action="store_true", help="the user site-packages")
    return parser


def main(argv=None) -> int:
    """Entry point of the command line; returns the exit status."""
    try:
        args = _parser().parse_args(argv)
        return _COMMANDS[args.command](args) or 0
    except _UsageError as error:
        sys.stderr.write("corp-error-agent: error: %s\n" % error)
        return 2
    except _Failure as error:
        sys.stderr.write("corp-error-agent: %s\n" % error)
        return 1
    except KeyboardInterrupt:
        return 130
    except Exception as error:
        _debug(error)
        sys.stderr.write("corp-error-agent: unexpected error: %s: %s\n" % (type(error).__name__, error))
        return 1


def _emit(args, data, text: str) -> None:
    import json
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True) + "\n" if getattr(args, "json", False) else text)


def _url_problem(url: str) -> str:
    """Why ``url`` cannot be a backend's address ("" when it can)."""
    from urllib.parse import urlsplit
    url = url.strip()
    if any(c.isspace() or not c.isprintable() for c in url):
        return "a URL has no spaces or control characters"
    try:
        parts = urlsplit(url)  # an unclosed [IPv6 bracket: ValueError
    except ValueError:
        return "expected http(s)://host[:port]"
    try:
        port = parts.port  # out of 0-65535, or not a number: ValueError
    except ValueError:
        port = 0
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return "expected http(s)://host[:port]"
    return "the port must be a number from 1 to 65535" if port == 0 else ""


def _validate_url(url: str) -> str:
    problem = _url_problem(url)
    if problem:
        raise _UsageError("invalid --url %r: %s" % (url, problem))
    return url.strip().rstrip("/")


def _cmd_configure(args) -> int:
    if args.scope not in ("user", "system"):
        raise _UsageError("invalid --scope %r: choose user or system" % args.scope)
    updates = {}
    if args.url is not None:
        updates["backend_url"] = _validate_url(args.url)
    if args.min_confidence is not None:
        if not 0.0 <= args.min_confidence <= 1.0:
            raise _UsageError("invalid --min-confidence %r: expected a number from 0 to 1" % args.min_confidence)
        updates["min_confidence"] = args.min_confidence
    for key in ("token", "hints", "enabled"):
        if getattr(args, key) is not None:
            updates[key] = getattr(args, key)
    if not updates:
        raise _UsageError("nothing to configure: give --url, --token, --hints/--no-hints, "
                          "--enable/--disable or --min-confidence")
    path = _config_files()[args.scope]
    existing = _read_json(path) if os.path.exists(path) else {}
    if not isinstance(existing, dict):
        raise _Failure(_unreadable_config(path) + "; fix or remove it first")
    config = dict(existing, **updates)
    if updates.get("token") == "":  # --token "": no token from this file (a key kept empty would still override)
        del config["token"]
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        _write_atomic(path, config)
        os.chmod(path, 0o600 if config.get("token") else 0o644)
    except OSError as error:
        raise _Failure("cannot write %s: %s" % (path, error.strerror or error)) from error
    shown = ", ".join("token removed" if (k, v) == ("token", "") else "%s=%s" % (k, "***" if k == "token" else v)
                      for k, v in sorted(updates.items()))
    sys.stdout.write("wrote %s configuration %s (%s)\n" % (args.scope, path, shown))
    return 0


def _site_dirs() -> list:
    import site
    dirs = list(getattr(site, "getsitepackages", lambda: [])())
    if getattr(site, "ENABLE_USER_SITE", False):
        dirs.append(site.getusersitepackages())
    return dirs


def _spool_summary(state_dir: str) -> dict:
    entries = _spool_entries(state_dir)
    oldest = os.path.basename(entries[0]).split("-")[0] if entries else None
    dropped = {}
    try:
        with open(os.path.join(state_dir, "dropped.log"), encoding="utf-8") as f:
            for line in f:
                reason = line.split()[1] if len(line.split()) > 1 else "?"
                dropped[reason] = dropped.get(reason, 0) + 1
    except OSError:
        pass
    return {"dir": state_dir, "count": len(entries), "oldest_ts": int(oldest) / 1e6 if oldest else None,
            "dropped": dropped}


_PROBE = {"error_sig": "CorpErrorAgentStatus: probe from corp-error-agent status", "env_hash": "000000000000",
          "script_id": "000000000000"}


def _backend_health(settings: _Settings, timeout: float = _STATUS_TIMEOUT) -> dict:
    """What answers at the URL, with the problem in words (None when there is none).

    ``GET /healthz`` says whether it is our server (it needs no token); then a valid suggestion
    request, which every backend takes (the published Django server too), which needs the token
    and stores nothing: whether the backend would take this agent's reports at all."""
    import time
    import urllib.error
    import urllib.request
    url = settings.url
    health = {"reachable": False, "token_refused": False, "server": None, "problem": None}
    started = time.monotonic()
    try:
        request = urllib.request.Request(url + "/healthz", headers={"User-Agent": _USER_AGENT})
        with _bounded_opener(timeout).open(request, timeout=timeout) as response:
            status, body = response.status, response.read(_RESPONSE_LIMIT + 1)
    except urllib.error.HTTPError as error:
        status, body = error.code, _error_body(error)  # an HTTP answer: something listens there
    except Exception as error:
        health["problem"] = "unreachable: " + _unreachable_words(_Unreachable(str(error), cause=error), url, timeout)
        return health
    health.update(reachable=True, status=status, ms=round((time.monotonic() - started) * 1000, 1))
    answer = _json_object(body) if status == 200 else None
    if answer is not None and answer.get("ok") is True:
        health["server"] = "corp-error-server (schema %s)" % _sanitize(answer.get("schema_version"), 20)
    try:
        status, body = _post(settings, "/suggest", _PROBE, timeout)
    except _Unreachable as error:
        if error.status is None or health["server"] is not None:
            health["problem"] = _unreachable_words(error, url, timeout, "POST /suggest")
            return health
        status, body = error.status, b""  # a 5xx from some other server (501: it has no POST at all)
    answer = _json_object(body) if status == 200 else None
    if status in (401, 403):
        health["token_refused"] = True
        health["problem"] = _status_words(status, "POST /suggest", bool(settings.token))
    elif answer is None or "match" not in answer:
        health["problem"] = "not a corp-error-agent backend: GET /healthz answered HTTP %s and POST /suggest %s " \
            "(check the URL)" % (health["status"], "HTTP %d" % status if answer is None else "no suggestion")
    elif health["server"] is None:
        health["server"] = "a backend without /healthz (the published 0.4.2 Django server?)"
    return health


def _json_object(body: bytes):
    import json
    try:
        value = json.loads(body.decode("utf-8")) if body and len(body) <= _RESPONSE_LIMIT else None
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _status_words(status: int, request: str, token: bool) -> str:
    """An HTTP status a backend answered, said in words."""
    if status in (401, 403):
        return ("HTTP %d: the backend refuses the token: every report would be dropped" if token else
                "HTTP %d: the backend wants a token: every report would be dropped") % status + \
            " (ERROR_AGENT_TOKEN, configure --token)"
    words = {404: "%s does not exist there: not a corp-error-agent backend (check the URL)",
             405: "the server does not take %s: not a corp-error-agent backend (check the URL)",
             501: "the server does not implement %s: not a corp-error-agent backend (check the URL)",
             400: "the backend refused %s as malformed",
             413: "%s is over the backend's size limit",
             415: "the backend does not take %s as JSON",
             429: "the backend is busy and asks to slow down (%s): reports wait in the spool"}
    if status in words:
        return "HTTP %d: " % status + words[status] % request
    if status >= 500:
        return "HTTP %d: the backend failed to answer %s: reports wait in the spool" % (status, request)
    return "HTTP %d" % status


def _unreachable_words(error: _Unreachable, url: str, timeout: float, request: str = "the request") -> str:
    """Why a request got no answer, in words."""
    import socket
    import ssl
    from urllib.parse import urlsplit
    if error.status is not None:
        return _status_words(error.status, request, False)
    problem = _url_problem(url)  # set by hand, in ERROR_AGENT_URL or a config file (configure checks its own)
    if problem:
        return "%s is not a backend URL: %s" % (_sanitize(url, 200), problem)
    where = urlsplit(url).netloc or url
    cause = getattr(error.cause, "reason", error.cause)  # URLError wraps what the socket raised
    if isinstance(cause, ConnectionRefusedError):
        return "nothing listens at %s (connection refused)" % where
    if isinstance(cause, (socket.timeout, TimeoutError)):
        return "no answer from %s within %gs" % (where, timeout)
    if isinstance(cause, socket.gaierror):
        return "the host name in %s does not resolve" % where
    if isinstance(cause, ssl.SSLError):
        return "TLS with %s failed: %s" % (where, _sanitize(cause, 200))
    if isinstance(cause, ConnectionResetError):
        return "%s reset the connection" % where
    if isinstance(cause, OSError) and cause.strerror:
        return "cannot reach %s: %s" % (where, cause.strerror)
    # (every _Unreachable without a status has its cause) a malformed or missing HTTP answer
    return "%s did not answer in HTTP (%s)" % (where, _sanitize(type(cause).__name__, 100))


def _local_time(ts) -> str:
    import time
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(_float(ts, 0.0)))


def _unreadable_config(path: str) -> str:
    """What is wrong with the config file at ``path``, which the agent cannot use."""
    import json
    try:
        with open(path, "rb") as f:
            json.loads(f.read(_RESPONSE_LIMIT).decode("utf-8"))
    except OSError as error:
        return "cannot read %s: %s" % (path, error.strerror or error)
    except json.JSONDecodeError as error:
        return "%s is not valid JSON (line %d, column %d: %s)" % (path, error.lineno, error.colno, error.msg)
    except ValueError:
        return "%s is not UTF-8 text" % path
    return "%s is not a JSON object" % path


def _config_problems() -> list:
    """Config files that exist but are ignored, which would otherwise go unnoticed: the agent reads
    them at every event and falls back to the next source."""
    return [_unreadable_config(path) + " (ignored)" for path in _config_files().values()
            if os.path.exists(path) and not isinstance(_read_json(path), dict)]


def _cmd_status(args) -> int:
    settings = _settings()
    state_dir = _state_dir()
    hook_files = [os.path.join(d, n) for d in _site_dirs() for n in _INSTALLED_FILES[1:]
                  if os.path.exists(os.path.join(d, n))]
    data = {
        "version": __version__,
        "settings": {name: {"value": "***" if name == "token" and value else value, "source": settings.sources[name]}
                     for name, value in zip(_DEFAULTS, settings)},
        "config_files": _config_files(),
        "hook": {"installed": hook_files, "active": _hooks_active()},
        "spool": _spool_summary(state_dir),
        "last_delivery": _read_json(os.path.join(state_dir, "last_delivery.json")),
        "breaker_open": _breaker_open(state_dir, settings),
        "backend": _backend_health(settings),
    }
    lines = ["corp-error-agent %s" % __version__]
    lines += ["  %-15s %-40s (%s)" % (n, v["value"], v["source"]) for n, v in data["settings"].items()]
    lines.append("  hook:           %s; %s in this process" % (
        ", ".join(hook_files) or "not installed for " + sys.executable,
        "active" if data["hook"]["active"] else "not active"))
    spool = data["spool"]
    lines.append("  spool:          %d beacon(s) in %s%s" % (spool["count"], spool["dir"], "; dropped: " + ", ".join(
        "%s %d" % item for item in sorted(spool["dropped"].items())) if spool["dropped"] else ""))
    last = data["last_delivery"]
    lines.append("  last delivery:  %s" % ("%s at %s (HTTP %s)" % (last.get("url"), _local_time(last.get("ts")),
                                                                  last.get("status")) if last else "never"))
    backend = data["backend"]
    if data["breaker_open"]:
        breaker = _read_json(_breaker_path(state_dir, settings)) or {}
        if backend["problem"] is None:  # the backend answered the probe: it is back
            _close_breaker(state_dir, settings)
            data["breaker_open"] = False
            lines.append("  breaker:        closed: the backend answers again (it opened after %s)"
                         % breaker.get("reason"))
        else:
            lines.append("  breaker:        open until %s after %s: errors are spooled, not sent" % (
                _local_time(breaker.get("until")), breaker.get("reason")))
    lines.append("  backend:        %s" % ("answers: %s, %s ms" % (backend["server"], backend["ms"])
                                          if backend["problem"] is None else "PROBLEM: " + backend["problem"]))
    data["config_problems"] = _config_problems()
    lines += ["  config:         PROBLEM: " + problem for problem in data["config_problems"]]
    data["ok"] = backend["problem"] is None and not data["config_problems"]
    _emit(args, data, "\n".join(lines) + "\n")
    return 0 if data["ok"] else 1


def _cmd_test(args) -> int:
    import json
    import time
    settings = _settings()
    env = snapshot(_state_dir())
    error_sig = "CorpErrorAgentTest: synthetic error from corp-error-agent test"
    beacon = _beacon("error", env["env_hash"], trace="Traceback (most recent call last):\n" + error_sig + "\n",
                     error_sig=error_sig, test=True)
    results = {"url": settings.url}
    for step, path, payload in (("beacon", "/beacon", beacon), ("suggest", "/suggest", {
            "error_sig": error_sig, "env_hash": env["env_hash"], "script_id": beacon["script_id"]})):
        started = time.monotonic()
        timeout = _suggest_timeout() or _CONNECT_TIMEOUT
        try:
            status, body = _post(settings, path, payload, timeout)
            if step == "beacon" and status == 204:
                _post(settings, "/env", env, _CONNECT_TIMEOUT)
            if step == "beacon" and 200 <= status < 300:
                _note_delivery(_state_dir(), settings, status)
            try:
                answer = json.loads(body.decode("utf-8")) if body else None
            except ValueError:
                answer = _sanitize(body.decode("utf-8", "replace"), 200)
            results[step] = {"ok": 200 <= status < 300, "status": status, "answer": answer}
            if not results[step]["ok"]:
                results[step]["error"] = _status_words(status, "POST " + path, bool(settings.token))
        except _Unreachable as error:
            results[step] = {"ok": False, "status": error.status,
                             "error": _unreachable_words(error, settings.url, timeout, "POST " + path)}
        results[step]["ms"] = round((time.monotonic() - started) * 1000, 1)
    ok = results["beacon"]["ok"] and results["suggest"]["ok"]
    text = "".join("%-8s %s %s ms  %s\n" % (step, "ok  " if r["ok"] else "FAIL", r["ms"], _sanitize(
        r["error"] + (" %s" % json.dumps(r["answer"]) if r.get("answer") else "") if "error" in r else
        "HTTP %s %s" % (r["status"], json.dumps(r["answer"]) if r["answer"] else ""), 300))
        for step, r in ((s, results[s]) for s in ("beacon", "suggest")))
    _emit(args, dict(results, ok=ok), "backend %s\n%s" % (settings.url, text))
    return 0 if ok else 1


def _cmd_flush(args) -> int:
    settings = _settings()
    state_dir = _state_dir()
    total = {"delivered": 0, "rejected": 0}
    while True:
        counts = _drain(settings, state_dir)
        total["delivered"] += counts["delivered"]
        total["rejected"] += counts["rejected"]
        if not counts["delivered"] + counts["rejected"] or not counts["kept"]:
            break
    total["remaining"] = counts["kept"]
    _emit(args, total, "delivered %(delivered)d, rejected %(rejected)d, remaining %(remaining)d\n" % total)
    return 1 if total["remaining"] else 0


def _cmd_snapshot(args) -> int:
    env = _wire_safe(snapshot(_state_dir()))
    lines = ["env_hash:     " + env["env_hash"], "python:       %s %s" % (env["python_impl"], env["python_ver"]),
             "os:           " + env["os_info"], "arch:         " + env["machine_arch"], "env vars:"]
    lines += ["  %s=%s" % item for item in sorted(env["env_vars"].items())]
    lines.append("packages (%d):" % len(env["packages"]))
    lines += ["  " + p for p in env["packages"]]
    _emit(args, env, "\n".join(lines) + "\n")
    return 0


def _install_target(args) -> str:
    import site
    import sysconfig
    if args.user:
        if not getattr(site, "ENABLE_USER_SITE", False):
            raise _Failure("the user site-packages is disabled for this interpreter (a venv?); use --target")
        target = site.getusersitepackages()
        os.makedirs(target, exist_ok=True)
        return target
    target = args.target or sysconfig.get_paths()["purelib"]
    if not os.path.isdir(target):
        raise _UsageError("invalid --target %r: not a directory" % target)
    return os.path.abspath(target)


def _pip_owned(target: str) -> bool:
    return any(n.lower().startswith(("corp_error_agent-", "corp-error-agent-")) and n.endswith(".dist-info")
               for n in os.listdir(target))


def _cmd_install(args) -> int:
    import importlib.util
    import py_compile
    import shutil
    target = _install_target(args)
    source = os.path.abspath(sys.modules[__name__].__file__)
    module = os.path.join(target, _INSTALLED_FILES[0])
    try:
        if not (os.path.exists(module) and os.path.samefile(source, module)):
            shutil.copyfile(source, module)
        for name, content in zip(_INSTALLED_FILES[1:], (_PTH_LINE, _START_LINE)):
            with open(os.path.join(target, name), "w", encoding="utf-8") as f:
                f.write(content)
        # Without a .pyc every interpreter start would compile the module (PYTHONDONTWRITEBYTECODE).
        py_compile.compile(module, cfile=importlib.util.cache_from_source(module), doraise=True)
    except (OSError, py_compile.PyCompileError) as error:
        raise _Failure("cannot install into %s: %s" % (target, getattr(error, "strerror", None) or error)) from error
    sys.stdout.write("installed corp-error-agent %s into %s (%s, byte-compiled)\n"
                     % (__version__, target, ", ".join(_INSTALLED_FILES)))
    return 0


def _cmd_uninstall(args) -> int:
    import glob
    target = _install_target(args)
    if _pip_owned(target):
        raise _Failure("corp-error-agent in %s was installed by pip: run pip uninstall corp-error-agent" % target)
    cache = os.path.join(target, "__pycache__")
    paths = [os.path.join(target, n) for n in _INSTALLED_FILES]
    paths += glob.glob(os.path.join(cache, "corp_error_agent.*.pyc"))
    removed = []
    try:
        for path in paths:
            if os.path.exists(path):
                os.unlink(path)
                removed.append(path)
        if os.path.isdir(cache) and not os.listdir(cache):
            os.rmdir(cache)
    except OSError as error:
        raise _Failure("cannot uninstall from %s: %s" % (target, error.strerror or error)) from error
    sys.stdout.write("removed %s\n" % (", ".join(removed) if removed else "nothing: not installed in " + target))
    return 0


_COMMANDS = {"configure": _cmd_configure, "status": _cmd_status, "test": _cmd_test, "flush": _cmd_flush,
             "snapshot": _cmd_snapshot, "install": _cmd_install, "uninstall": _cmd_uninstall}
'''


if __name__ == "__main__":  # the command line: main is in the agent proper, which needs 3.8
    if sys.version_info < (3, 8):  # noqa: UP036 -- the bare file reaches older Pythons, which pip would refuse
        sys.stderr.write("corp-error-agent: error: the agent needs Python 3.8 or newer; this is %s\n"
                         % sys.version.split()[0])
        sys.exit(2)
    sys.exit(__getattr__("main")())
