"""The host program cannot tell the agent is there: exit status and stderr unchanged, hooks chained,
KeyboardInterrupt/SystemExit ignored, a broken backend harmless, nothing heavy imported at start."""

from __future__ import annotations

import pytest

from support import ROOT, closed_port_url, failing_source, run, same_outcome, wait_error

FAST = {"ERROR_AGENT_SUGGEST_TIMEOUT": "1"}


def test_exit_status_and_stderr_identical_without_hint(agent_venv, plain_venv, backend, sandbox):
    script = sandbox.script("app.py", failing_source("boom-identical"))
    with_agent = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    wait_error(backend, "boom-identical")  # the agent did run
    without = run(plain_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    disabled = run(
        agent_venv.python, [script], sandbox.env(backend.url, {"ERROR_AGENT_ENABLED": "0"}), cwd=sandbox.work
    )
    assert without.returncode == 1
    same_outcome(with_agent, without)
    same_outcome(disabled, without)


@pytest.mark.parametrize(
    "body, name",
    [
        ("raise KeyboardInterrupt", "keyboard-interrupt"),
        ("raise SystemExit(3)", "system-exit-3"),
        ("import sys; sys.exit('fatal: bad config')", "system-exit-message"),
    ],
)
def test_keyboard_interrupt_and_system_exit_untouched(agent_venv, plain_venv, backend, sandbox, body, name):
    script = sandbox.script(name + ".py", "def main():\n    %s\nmain()\n" % body)
    with_agent = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    without = run(plain_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    same_outcome(with_agent, without)
    if name == "system-exit-3":
        assert with_agent.returncode == 3
    assert [r for r in backend.settle() if r.path == "/beacon"] == []
    assert sandbox.spool() == []


def test_disabled_agent_sends_nothing(agent_venv, plain_venv, backend, sandbox):
    script = sandbox.script("app.py", failing_source("boom-disabled"))
    proc = run(agent_venv.python, [script], sandbox.env(backend.url, {"ERROR_AGENT_ENABLED": "0"}), cwd=sandbox.work)
    without = run(plain_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    same_outcome(proc, without)
    assert backend.settle() == []
    assert sandbox.spool() == []
    assert not (sandbox.cache / "pending").exists() or not list((sandbox.cache / "pending").iterdir())


def test_importing_installs_nothing_and_activate_is_idempotent(plain_venv, backend, sandbox):
    script = sandbox.script(
        "twice.py",
        (
            "import sys\n"
            "import corp_error_agent\n"
            "assert sys.excepthook is sys.__excepthook__, 'import alone must not install hooks'\n"
            "corp_error_agent.activate()\n"
            "corp_error_agent.activate()\n"
            "assert sys.excepthook is not sys.__excepthook__\n"
            "raise ValueError('boom-twice')\n"
        ),
    )
    env = sandbox.env(backend.url, {"PYTHONPATH": str(ROOT)})
    proc = run(plain_venv.python, [script], env, cwd=sandbox.work)
    assert proc.returncode == 1
    assert proc.stderr.count(b"Traceback (most recent call last)") == 1
    wait_error(backend, "boom-twice")
    assert len([r for r in backend.settle() if r.path == "/beacon"]) == 1


def test_previous_hook_runs_first(fresh_venv, backend, sandbox):
    """A hook installed before ours (by a .pth that sorts first) still prints; we report after it."""
    venv = fresh_venv("copy")
    (venv.site_packages / "aaa_hook.pth").write_text(
        "import sys; sys.excepthook = lambda t, v, tb, _s=sys: "
        "_s.stderr.write('AAA-HOOK %s: %s\\n' % (t.__name__, v))\n"
    )
    script = sandbox.script("app.py", failing_source("boom-prev"))
    proc = run(venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    assert proc.returncode == 1
    assert proc.stderr == b"AAA-HOOK ValueError: boom-prev\n"
    wait_error(backend, "boom-prev")


def test_hook_installed_after_us_still_works(agent_venv, plain_venv, backend, sandbox):
    script = sandbox.script(
        "later.py",
        (
            "import sys\n"
            "previous = sys.excepthook\n"
            "def mine(t, v, tb):\n"
            "    sys.stderr.write('LATER-HOOK %s\\n' % t.__name__)\n"
            "    previous(t, v, tb)\n"
            "sys.excepthook = mine\n"
            "raise ValueError('boom-later')\n"
        ),
    )
    with_agent = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    without = run(plain_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    assert with_agent.stderr.startswith(b"LATER-HOOK ValueError\nTraceback")
    same_outcome(with_agent, without)
    wait_error(backend, "boom-later")  # the later hook chained to ours


def test_hook_replacing_ours_is_respected(agent_venv, backend, sandbox):
    script = sandbox.script(
        "replace.py",
        (
            "import sys\n"
            "sys.excepthook = lambda *a: sys.stderr.write('ONLY-MINE\\n')\n"
            "raise ValueError('boom-replaced')\n"
        ),
    )
    proc = run(agent_venv.python, [script], sandbox.env(backend.url), cwd=sandbox.work)
    assert (proc.returncode, proc.stderr) == (1, b"ONLY-MINE\n")


@pytest.mark.parametrize("fault", ["refused", "silent", "slow", "500", "429", "garbage", "huge", "reset"])
def test_broken_backend_changes_nothing(agent_venv, plain_venv, backend, sandbox, fault):
    """Whatever the backend does, the process ends (subprocess timeout is the bound) with the
    exit status and stderr it has without the agent."""
    script = sandbox.script("app.py", failing_source("boom-fault"))
    if fault == "refused":
        url = closed_port_url()
    else:
        url = backend.url
        backend.set_fault(fault)
        backend.slow_seconds = 5
    with_agent = run(agent_venv.python, [script], sandbox.env(url, FAST), cwd=sandbox.work)
    without = run(plain_venv.python, [script], sandbox.env(url, FAST), cwd=sandbox.work)
    same_outcome(with_agent, without)
    if fault == "refused":
        assert len(sandbox.spool()) == 1  # kept for later, not lost
    else:
        assert backend.wait_for("/beacon") or backend.wait_for("/suggest")  # the agent did talk to it


def test_interactive_prompt_errors_not_reported(agent_venv, backend, sandbox):
    typed = b"raise ValueError('typed-at-prompt')\n"
    proc = run(agent_venv.python, ["-i", "-c", "pass"], sandbox.env(backend.url), cwd=sandbox.work, input=typed)
    assert b"ValueError: typed-at-prompt" in proc.stderr
    assert [r for r in backend.settle() if r.path == "/beacon"] == []
    assert sandbox.spool() == []

    proc = run(
        agent_venv.python,
        ["-i", "-c", "pass"],
        sandbox.env(backend.url, {"ERROR_AGENT_INTERACTIVE": "1"}),
        cwd=sandbox.work,
        input=typed,
    )
    assert b"ValueError: typed-at-prompt" in proc.stderr
    wait_error(backend, "typed-at-prompt")


HEAVY = {
    "json",
    "urllib",
    "urllib.request",
    "http",
    "http.client",
    "hashlib",
    "importlib.metadata",
    "threading",
    "traceback",
    "socket",
    "ssl",
    "re",
    "asyncio",
    "email",
    "tempfile",
    "platform",
    "argparse",
    "subprocess",
    "logging",
    "zipfile",
    "inspect",
}


def test_no_heavy_imports_at_start(agent_venv, plain_venv, sandbox):
    code = "import sys; print(sys.excepthook is not sys.__excepthook__); print('\\n'.join(sorted(sys.modules)))"
    env = sandbox.env("http://127.0.0.1:9")
    env.pop("COVERAGE_PROCESS_START", None)  # coverage.py imports threading and more itself
    active, *with_agent = run(agent_venv.python, ["-c", code], env).stdout.decode().split()
    inactive, *without = run(plain_venv.python, ["-c", code], env).stdout.decode().split()
    assert (active, inactive) == ("True", "False")  # the .pth did install the agent's hook
    with_agent, without = set(with_agent), set(without)
    added = with_agent - without
    assert not (added & HEAVY), sorted(added)
    assert not {m for m in added if m.split(".")[0] in HEAVY}, sorted(added)


UPGRADE_UNDER_IT = """import pathlib, re
import corp_error_agent as agent
path = pathlib.Path(agent.__file__)
path.write_text(re.sub(r'__version__ = ".*"', '__version__ = "9.9.9"', path.read_text(), count=1))
try:
    agent.scrub
except AttributeError as error:
    print(error)
raise ValueError("boom-upgraded")
"""


def test_an_agent_upgraded_under_a_running_process_stays_out_of_it(fresh_venv, plain_venv, backend, sandbox):
    """The start-up part of one version never runs the agent proper of another: the process goes
    on as without the agent, and says why only when asked for the agent's names."""
    venv = fresh_venv("copy")
    script = sandbox.script("app.py", UPGRADE_UNDER_IT)
    env = sandbox.env(backend.url)
    # coverage.py imports multiprocessing, whose patch loads the agent proper at start-up: unmeasured
    env.pop("COVERAGE_PROCESS_START", None)
    upgraded = run(venv.python, [script], env, cwd=sandbox.work)
    assert upgraded.returncode == 1, upgraded.stderr
    assert "is another version than this process started with" in upgraded.stdout.decode()
    assert upgraded.stderr.endswith(b"ValueError: boom-upgraded\n")
    assert b"corp-error-agent" not in upgraded.stderr
    assert backend.settle() == [] and sandbox.spool() == []


def _printed_unmeasured(venv, sandbox, code: str) -> str:
    """What `python -c CODE` prints in the venv, with coverage.py off: measuring the agent loads it."""
    env = sandbox.env("http://127.0.0.1:9")
    env.pop("COVERAGE_PROCESS_START", None)
    proc = run(venv.python, ["-c", code], env)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode().strip()


def test_what_importlib_asks_every_finder_loads_nothing(agent_venv, sandbox):
    # The agent's module is itself on sys.meta_path (its finder): importlib.metadata, pkgutil and
    # invalidate_caches() ask each finder for more than find_spec, and must not load the agent.
    code = (
        "import sys, importlib, importlib.metadata, pkgutil, json; agent = sys.modules['corp_error_agent'];"
        "dists = len(list(importlib.metadata.distributions())); importlib.invalidate_caches();"
        "modules = len(list(pkgutil.iter_modules()));"
        "print(json.dumps([agent in sys.meta_path, dists > 0, modules > 0, '_attribute' in vars(agent),"
        " hasattr(agent, 'find_distributions'), 'capture' in agent.__all__]))"
    )
    assert _printed_unmeasured(agent_venv, sandbox, code) == "[true, true, true, false, false, true]"


def test_the_agents_module_spec_is_made_when_asked_and_works(agent_venv, sandbox):
    # activate() drops the import system's spec and loader of the agent's own module (two objects
    # every start would keep, bench/startup.py), and __getattr__ makes them again (and keeps them)
    # for who asks: a later import, find_spec (python -m), reload, inspect.
    code = (
        "import sys, importlib, importlib.util, inspect, json; agent = sys.modules['corp_error_agent'];"
        "kept = '__spec__' in vars(agent) or '__loader__' in vars(agent);"
        "spec = importlib.util.find_spec('corp_error_agent');"
        "print(json.dumps([kept, spec is agent.__spec__, spec.origin == agent.__file__, spec.has_location,"
        " spec.cached == agent.__cached__,"
        " agent.__loader__.get_filename('corp_error_agent') == agent.__file__,"
        " inspect.getsourcefile(agent) == agent.__file__, '_attribute' in vars(agent),"
        " importlib.reload(agent).__spec__.origin == agent.__file__]))"
    )
    assert _printed_unmeasured(agent_venv, sandbox, code) == "[false, true, true, true, true, true, true, false, true]"
    version = run(agent_venv.python, ["-m", "corp_error_agent", "--version"], sandbox.env("http://127.0.0.1:9"))
    assert version.returncode == 0 and version.stdout.startswith(b"corp-error-agent "), version.stderr


# A finder in front that wraps the loader of the spec the finders behind it found, as ddtrace's
# ModuleWatchdog does (ddtrace-run, and its pytest plugin once installed); LazyLoader, which on
# 3.13 runs the module while it is still of a ModuleType subclass; a name that is a str subclass.
_IMPORTERS = """
import importlib.util, sys

class Chained:
    def __init__(self, loader):
        self.loader = loader
    def create_module(self, spec):
        return self.loader.create_module(spec)
    def exec_module(self, module):
        self.loader.exec_module(module)

class Watchdog:
    finding = set()
    def find_spec(self, name, path=None, target=None):
        if name in self.finding:
            return None
        self.finding.add(name)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            self.finding.discard(name)
        if spec is not None and spec.loader is not None:
            spec.loader = Chained(spec.loader)
        return spec

class Name(str):
    pass
print(__import__(Name("colorsys")).__name__)
spec = importlib.util.find_spec("logging")
spec.loader = importlib.util.LazyLoader(spec.loader)
logging = sys.modules["logging"] = importlib.util.module_from_spec(spec)
spec.loader.exec_module(logging)
print(logging.getLogger("lazy").name)
sys.meta_path.insert(0, Watchdog())
import multiprocessing
print(multiprocessing.current_process().name)
agent = sys.modules.get("corp_error_agent")
if agent is not None:
    import asyncio.base_events
    patched = [asyncio.base_events.BaseEventLoop.default_exception_handler,
               multiprocessing.process.BaseProcess._bootstrap, logging.Logger.callHandlers]
    assert [f.__qualname__.split(".")[0] for f in patched] == ["_patch_asyncio", "_patch_multiprocessing", "_entry"]
    assert agent._PATCHES == "IPython.core.interactiveshell=_patch_ipython", agent._PATCHES
"""


def test_modules_imported_through_other_importers_run_and_are_patched(agent_venv, plain_venv, sandbox):
    script = sandbox.script("importers.py", _IMPORTERS)
    env = sandbox.env("http://127.0.0.1:9")
    with_agent = run(agent_venv.python, [script], env, cwd=sandbox.work)
    assert with_agent.stdout == b"colorsys\nlazy\nMainProcess\n", with_agent.stderr
    same_outcome(with_agent, run(plain_venv.python, [script], env, cwd=sandbox.work))


def test_activating_again_chains_no_hook_to_itself(agent_venv, plain_venv, backend, sandbox):
    # A program that put its own sys.excepthook in, then activate()s the agent again, so that it
    # reports after that hook: the thread hook, still the agent's, must not become its own previous.
    script = sandbox.script(
        "again.py",
        "import sys, threading\n"
        "try:\n    import corp_error_agent\nexcept ImportError:\n    corp_error_agent = None\n"
        "sys.excepthook = sys.__excepthook__\n"
        "if corp_error_agent:\n    corp_error_agent.activate()\n"
        "def work():\n    raise ValueError('boom-again')\n"
        "thread = threading.Thread(target=work, name='worker')\nthread.start()\nthread.join()\n",
    )
    with_agent = run(agent_venv.python, [script], sandbox.env(backend.url, FAST), cwd=sandbox.work)
    wait_error(backend, "boom-again")
    same_outcome(with_agent, run(plain_venv.python, [script], sandbox.env(backend.url, FAST), cwd=sandbox.work))


def test_thread_errors_after_a_hook_put_in_by_an_earlier_pth(fresh_venv, plain_venv, backend, sandbox):
    # site reads a venv's .pth files twice where lib64 links to lib: the agent is activated again,
    # after the earlier .pth replaced sys.excepthook; the thread hook must stay chained to Python's.
    venv = fresh_venv("copy")
    (venv.site_packages / "aaa_hook.pth").write_text("import sys; sys.excepthook = sys.__excepthook__\n")
    script = sandbox.script(
        "thread.py",
        "import threading\ndef work():\n    raise ValueError('boom-pth-thread')\n"
        "thread = threading.Thread(target=work, name='worker')\nthread.start()\nthread.join()\n",
    )
    proc = run(venv.python, [script], sandbox.env(backend.url, FAST), cwd=sandbox.work)
    wait_error(backend, "boom-pth-thread")
    same_outcome(proc, run(plain_venv.python, [script], sandbox.env(backend.url, FAST), cwd=sandbox.work))


def test_a_hook_calling_ours_then_activate_again_prints_once(agent_venv, plain_venv, backend, sandbox):
    # The program's hook calls the agent's, then activate() puts the agent's in front of it again:
    # the one function on both ends of that chain must not call itself round (RecursionError).
    script = sandbox.script(
        "chain.py",
        "import sys\n"
        "try:\n    import corp_error_agent\nexcept ImportError:\n    corp_error_agent = None\n"
        "ours = sys.excepthook\n"
        "def mine(t, v, tb):\n    sys.stderr.write('MY-HOOK\\n')\n    ours(t, v, tb)\n"
        "sys.excepthook = mine\n"
        "if corp_error_agent:\n    corp_error_agent.activate()\n"
        "raise ValueError('boom-chain')\n",
    )
    with_agent = run(agent_venv.python, [script], sandbox.env(backend.url, FAST), cwd=sandbox.work)
    assert with_agent.stderr.count(b"MY-HOOK") == 1 and b"RecursionError" not in with_agent.stderr
    same_outcome(with_agent, run(plain_venv.python, [script], sandbox.env(backend.url, FAST), cwd=sandbox.work))
    wait_error(backend, "boom-chain")


def test_reloading_the_agent_keeps_the_hooks_working(agent_venv, plain_venv, backend, sandbox):
    # importlib.reload (IPython's %autoreload after an upgrade) runs the module again in its own
    # namespace, where the hooks it installed keep looking up the hooks before them.
    script = sandbox.script(
        "reload.py",
        "import importlib, logging, sys\n"
        "try:\n    import corp_error_agent\n    importlib.reload(corp_error_agent)\nexcept ImportError:\n    pass\n"
        "logging.basicConfig(format='LOG %(message)s')\n"
        "logging.warning('after reload')\n"
        "raise ValueError('boom-reload')\n",
    )
    with_agent = run(agent_venv.python, [script], sandbox.env(backend.url, FAST), cwd=sandbox.work)
    assert b"LOG after reload" in with_agent.stderr and b"ValueError: boom-reload" in with_agent.stderr
    same_outcome(with_agent, run(plain_venv.python, [script], sandbox.env(backend.url, FAST), cwd=sandbox.work))
    wait_error(backend, "boom-reload")
