"""``corp-error-server demo``: the whole loop on this machine, offline, in a throw-away directory.

A reference server on a free loopback port with its own SQLite file, two wheels of a made-up library
(``tinylib`` 1.0 has ``frobnicate()``, 2.0 removed it) written directly as zip files, two venvs that
differ only in that library, the agent installed into both, and one script run three times:
fails in the new env, runs clean in the old one (the agent reports that success because the same
script failed here before), fails again in the new env -- and now the hint under the traceback says
``pip install "tinylib==1.0"``. Nothing here needs the network or touches the user's own agent
configuration or spool: every agent setting comes from environment variables pointing into the
temporary directory.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import traceback
import urllib.error
import urllib.request
import zipfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

LIB = "tinylib"
OLD, NEW = "1.0", "2.0"
FIX = 'pip install "%s==%s"' % (LIB, OLD)
RUN_TIMEOUT = 120.0  # seconds any child process may take (a bound, not an expectation)
WAIT_TIMEOUT = 30.0  # seconds to wait for the server to have counted what an agent sent

_SOURCES = {
    OLD: '''"""tinylib 1.0: a made-up library for the corp-error-agent demo."""
__version__ = "1.0"


def frobnicate(what="widgets"):
    return "frobnicated %s" % what
''',
    NEW: '''"""tinylib 2.0: frobnicate() is gone (renamed to twiddle()), as breaking releases do."""
__version__ = "2.0"


def twiddle(what="widgets"):
    return "twiddled %s" % what
''',
}

SCRIPT = '''import tinylib


def main():
    print(tinylib.frobnicate("the quarterly report"))


main()
'''


class DemoFailure(Exception):
    """A step did not do what the demo needs; the message says which and why."""


###############################################################################
# Output ######################################################################
###############################################################################


class _Out:
    def __init__(self) -> None:
        self.step = 0

    def say(self, text: str = "") -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def head(self, text: str) -> None:
        self.step += 1
        self.say("")
        self.say("%d. %s" % (self.step, text))

    def note(self, text: str) -> None:
        for line in textwrap.wrap(text, 96, break_on_hyphens=False, break_long_words=False) or [""]:
            self.say("   " + line)

    def block(self, text: str) -> None:
        for line in text.rstrip("\n").splitlines() or [""]:
            self.say("   | " + line)


###############################################################################
# Wheels, venvs, runs #########################################################
###############################################################################


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode("ascii")


def build_wheel(directory: Path, version: str) -> Path:
    """A valid pure-Python wheel of tinylib ``version``, written directly (no build backend)."""
    dist_info = "%s-%s.dist-info" % (LIB, version)
    files = [
        ("%s/__init__.py" % LIB, _SOURCES[version]),
        (
            "%s/METADATA" % dist_info,
            "Metadata-Version: 2.1\nName: %s\nVersion: %s\n"
            "Summary: A made-up library for the corp-error-agent demo\n" % (LIB, version),
        ),
        (
            "%s/WHEEL" % dist_info,
            "Wheel-Version: 1.0\nGenerator: corp-error-server demo\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
        ),
    ]
    record = "".join("%s,%s,%d\n" % (name, _record_hash(text.encode()), len(text.encode())) for name, text in files)
    record += "%s/RECORD,,\n" % dist_info
    path = directory / ("%s-%s-py3-none-any.whl" % (LIB, version))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, text in files + [("%s/RECORD" % dist_info, record)]:
            wheel.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), text)
    return path


def child_env(base: Path, url: str) -> Dict[str, str]:
    """The environment of every child: the agent configured by env vars only, state under ``base``."""
    drop = ("ERROR_AGENT_", "PYTHON", "PIP_", "VIRTUAL_ENV", "CONDA_", "XDG_", "CORP_ERROR_SERVER_")
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.upper().startswith(drop) and k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
    }
    home = base / "home"
    env.update(
        {
            "ERROR_AGENT_URL": url,
            "ERROR_AGENT_CACHE_DIR": str(base / "agent-cache"),
            "ERROR_AGENT_ENABLED": "1",
            "ERROR_AGENT_HINT": "1",
            "ERROR_AGENT_MIN_CONFIDENCE": "0.6",
            # the config file lookups land in the throw-away home, never in the user's own
            "HOME": str(home),
            "USERPROFILE": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "XDG_CACHE_HOME": str(home / ".cache"),
            "APPDATA": str(home / "AppData" / "Roaming"),
            "LOCALAPPDATA": str(home / "AppData" / "Local"),
            "PIP_NO_CACHE_DIR": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PIP_NO_INPUT": "1",
            "PYTHONIOENCODING": "utf-8",
            "PYTHONDONTWRITEBYTECODE": "1",
        }
    )
    return env


def run(cmd: List, env: Dict[str, str], cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            [str(c) for c in cmd],
            env=env,
            cwd=str(cwd) if cwd else None,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            timeout=RUN_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        raise DemoFailure("%s did not finish within %.0f s" % (" ".join(map(str, cmd)), RUN_TIMEOUT)) from None


def _checked(cmd: List, env: Dict[str, str], what: str) -> subprocess.CompletedProcess:
    proc = run(cmd, env)
    if proc.returncode != 0:
        raise DemoFailure("%s failed (exit %d):\n%s%s" % (what, proc.returncode, proc.stdout, proc.stderr))
    return proc


class Venv:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.python = path / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
        self.has_pip = False
        self.site_packages: Optional[Path] = None


def make_venv(python: str, path: Path, env: Dict[str, str], with_pip: bool) -> Venv:
    venv = Venv(path)
    if with_pip:
        # ensurepip installs the pip wheel bundled with the interpreter: no network
        proc = run([python, "-m", "venv", path], env)
        venv.has_pip = proc.returncode == 0
    if not venv.has_pip:
        shutil.rmtree(str(path), ignore_errors=True)
        _checked([python, "-m", "venv", "--without-pip", path], env, "python -m venv --without-pip")
    out = _checked(
        [venv.python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        env,
        "asking the venv for its site-packages",
    ).stdout
    venv.site_packages = Path(out.strip())
    return venv


def install_wheel(venv: Venv, wheel: Path, version: str, env: Dict[str, str]) -> str:
    """Install with the venv's pip (offline); without pip, unpack it (a pure wheel is just a zip)."""
    if venv.has_pip:
        cmd = [
            venv.python,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-index",
            "--find-links",
            wheel.parent,
            "%s==%s" % (LIB, version),
        ]
        _checked(cmd, env, "pip install %s" % wheel.name)
        return "python -m pip install --no-index --find-links %s \"%s==%s\"" % (wheel.parent.name, LIB, version)
    assert venv.site_packages is not None
    for old in list(venv.site_packages.glob(LIB)) + list(venv.site_packages.glob(LIB + "-*.dist-info")):
        shutil.rmtree(str(old))
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(str(venv.site_packages))
    return "unpacked %s into site-packages (a venv without pip)" % wheel.name


def agent_file() -> Path:
    import corp_error_agent  # the same distribution as this package: next to it, or installed with it

    return Path(corp_error_agent.__file__).resolve()


###############################################################################
# The server ##################################################################
###############################################################################


class EmbeddedServer:
    """The reference server in this process, on a free loopback port, logging to a file."""

    def __init__(self, db: Path, log: Path) -> None:
        from . import create_app
        from .app import INLINE_PATHS
        from .server import make_server

        self.app = create_app(str(db))
        self._log = open(str(log), "a", encoding="utf-8")
        self.server = make_server(self.app, "127.0.0.1", 0, log_stream=self._log, inline=INLINE_PATHS)
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def get(self, path: str):
        with self._opener.open(self.url + path, timeout=20) as response:
            return json.loads(response.read().decode("utf-8"))

    def group(self) -> Optional[dict]:
        for group in self.get("/api/errors").get("groups", []):
            if LIB in group.get("group_key", ""):
                return group
        return None

    def wait_group(self, what: str, ready: Callable[[dict], bool]) -> dict:
        """Poll GET /api/errors until the tinylib group satisfies ``ready`` (bounded)."""
        deadline = time.monotonic() + WAIT_TIMEOUT
        delay = 0.02
        while True:
            group = self.group()
            if group is not None and ready(group):
                return group
            if time.monotonic() > deadline:
                raise DemoFailure(
                    "the server did not receive %s within %.0f s (group now: %s)"
                    % (what, WAIT_TIMEOUT, json.dumps(group)[:600])
                )
            time.sleep(delay)  # polling interval of a bounded wait, not synchronisation
            delay = min(delay * 2, 0.25)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=10)
        self.app.close()  # its suggest-ahead thread too: it would open the database again after it is removed
        self._log.close()


###############################################################################
# The demo ####################################################################
###############################################################################


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="corp-error-server demo",
        description="Show the whole loop offline: a traceback, the beacon, a success elsewhere, and the hint "
        "with the command that fixes it. Uses a throw-away server, database and venvs.",
    )
    parser.add_argument("--keep", action="store_true", help="keep the venvs, database and logs, and say where")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="venvs without pip (the wheels are unpacked instead of pip-installed): faster",
    )
    parser.add_argument(
        "--python", default=sys.executable, help="interpreter for the two venvs (default: this one, %(default)s)"
    )
    return parser


def _summary(group: dict) -> str:
    return "error group #%s %r: %d error beacon(s), %d failing run(s), %d succeeding run(s), %d env(s) affected" % (
        group.get("id"),
        group.get("group_key"),
        group.get("count", 0),
        group.get("failing_runs", 0),
        group.get("succeeding_runs", 0),
        group.get("envs_affected", 0),
    )


def _hint_lines(stderr: str) -> List[str]:
    lines = stderr.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("[corp-error-agent]"):
            return lines[i:]
    return []


def _snapshot(venv: Venv, env: Dict[str, str]) -> Tuple[str, List[str]]:
    proc = run([venv.python, "-m", "corp_error_agent", "snapshot", "--json"], env)
    try:
        data = json.loads(proc.stdout)
        return data.get("env_hash", "?"), list(data.get("packages", []))
    except ValueError:
        return "?", []


def demo(args: argparse.Namespace, base: Path, out: _Out) -> None:
    server = EmbeddedServer(base / "errors.db", base / "server.log")
    try:
        _steps(args, base, out, server)
    finally:
        server.stop()


def _steps(args: argparse.Namespace, base: Path, out: _Out, server: EmbeddedServer) -> None:
    env = child_env(base, server.url)
    out.head("Started the reference server on %s (throw-away SQLite database %s)." % (server.url, base / "errors.db"))

    wheels = base / "wheels"
    wheels.mkdir()
    old_wheel, new_wheel = build_wheel(wheels, OLD), build_wheel(wheels, NEW)
    out.head("Built two wheels of a made-up library, %s (no network, no build backend):" % LIB)
    out.note("%s  has %s.frobnicate()" % (old_wheel.name, LIB))
    out.note("%s  removed it (renamed to %s.twiddle()) -- a breaking release" % (new_wheel.name, LIB))

    source = agent_file()
    envs = {}
    for name, version, wheel in (("env-new", NEW, new_wheel), ("env-old", OLD, old_wheel)):
        venv = make_venv(args.python, base / name, env, with_pip=not args.quick)
        how = install_wheel(venv, wheel, version, env)
        _checked([venv.python, source, "install"], env, "installing the agent into %s" % name)
        envs[name] = (venv, how)
    out.head("Created two venvs that differ only in %s, and installed the agent into each:" % LIB)
    for name, (_, how) in envs.items():
        out.note("%s: %s %s -- %s" % (name, LIB, NEW if name == "env-new" else OLD, how))
    out.note("agent: python %s install (copies the module, the .pth start-up line and byte-compiles it)" % source)
    out.note(
        "Every run below gets its agent settings from environment variables only: ERROR_AGENT_URL=%s, "
        "ERROR_AGENT_CACHE_DIR=%s, and a throw-away HOME -- your own agent configuration and spool are "
        "not read or written." % (server.url, base / "agent-cache")
    )
    new, old = envs["env-new"][0], envs["env-old"][0]

    script = base / "work" / "report.py"
    script.parent.mkdir()
    script.write_text(SCRIPT, encoding="utf-8")
    out.head("The script, %s, uses %s.frobnicate():" % (script.name, LIB))
    out.block(SCRIPT)

    # -- run 1: the failure ------------------------------------------------------------------
    out.head("Run it in env-new (%s %s):  $ env-new/bin/python report.py" % (LIB, NEW))
    first = run([new.python, script], env, cwd=script.parent)
    out.block(first.stdout + first.stderr)
    if first.returncode == 0 or "frobnicate" not in first.stderr:
        raise DemoFailure("the script was expected to fail in env-new, but it exited %d" % first.returncode)
    group = server.wait_group("the error beacon", lambda g: g.get("failing_runs", 0) >= 1)
    env_hash, packages = _snapshot(new, env)
    out.note(
        "Exit status %d. The traceback is Python's own, unchanged. The agent sent an error beacon (the "
        "scrubbed traceback and its signature) and, for an environment the server did not know yet, the "
        "snapshot of env-new (env_hash %s: %s)." % (first.returncode, env_hash, ", ".join(packages) or "?")
    )
    out.note("Server now: " + _summary(group))
    out.note("No hint yet: the server has only ever seen this error fail; it needs a run that worked.")

    # -- run 2: the success elsewhere --------------------------------------------------------
    out.head("Run the same script in env-old (%s %s):  $ env-old/bin/python report.py" % (LIB, OLD))
    second = run([old.python, script], env, cwd=script.parent)
    out.block(second.stdout + second.stderr)
    if second.returncode != 0:
        raise DemoFailure("the script was expected to run clean in env-old, but it exited %d" % second.returncode)
    group = server.wait_group("the success beacon", lambda g: g.get("succeeding_runs", 0) >= 1)
    out.note(
        "Exit status 0. This script failed on this machine before (the agent left a note in "
        "agent-cache/pending/), so at exit the agent sent a success beacon with prev_env_hash=%s: an "
        "observed fix, from the failing environment to this one." % env_hash
    )
    out.note("Server now: " + _summary(group))

    # -- run 3: the hint ---------------------------------------------------------------------
    out.head("Run it in env-new again:  $ env-new/bin/python report.py")
    third = run([new.python, script], env, cwd=script.parent)
    out.block(third.stdout + third.stderr)
    hint = _hint_lines(third.stderr)
    fix_line = next((line for line in hint if line.strip().startswith("fix:")), "")
    if third.returncode == 0 or not hint or LIB not in fix_line or OLD not in fix_line:
        suggestion = (server.group() or {}).get("suggestion")
        raise DemoFailure(
            "the hint with the fixing command (%s) did not appear under the traceback.\n"
            "The server's suggestion for this group: %s" % (FIX, json.dumps(suggestion))
        )
    out.note(
        "The same traceback, and under it the agent's hint: what differs between the runs that failed "
        "and the one that worked, the evidence, and the command that fixes it: %s" % fix_line.split(":", 1)[1].strip()
    )

    # -- apply the fix -----------------------------------------------------------------------
    how = install_wheel(new, old_wheel, OLD, env)
    fourth = run([new.python, script], env, cwd=script.parent)
    out.head("Apply the fix in env-new (%s) and run again:" % how)
    out.block(fourth.stdout + fourth.stderr)
    if fourth.returncode != 0:
        raise DemoFailure("after the fix the script still failed (exit %d)" % fourth.returncode)
    out.note("Exit status 0: fixed.")


def main(argv: Optional[List[str]] = None) -> int:
    args = _parser().parse_args(sys.argv[1:] if argv is None else list(argv))
    python = shutil.which(args.python)  # a path, or a name on PATH such as python3.12
    if python is None:
        sys.stderr.write("corp-error-server demo: error: --python %s: no such interpreter\n" % args.python)
        return 2
    args.python = python
    out = _Out()
    base = Path(tempfile.mkdtemp(prefix="corp-error-demo-")).resolve()
    out.say("corp-error-agent demo: a throw-away server, two venvs and a made-up library, all in %s" % base)
    status = 1
    try:
        demo(args, base, out)
        status = 0
    except DemoFailure as error:
        out.say("")
        out.say("demo FAILED: %s" % error)
    except KeyboardInterrupt:
        out.say("")
        out.say("demo interrupted")
        status = 130
    except Exception:
        # printed here, not left to sys.excepthook: an installed agent must not report the demo itself
        out.say("")
        out.say("demo FAILED with an unexpected error:")
        out.say(traceback.format_exc().rstrip())
    finally:
        if args.keep:
            out.say("")
            out.say("Kept everything in %s:" % base)
            out.say("  venvs       %s, %s" % (base / "env-new", base / "env-old"))
            out.say(
                "  database    %s   (look at it: python -m corp_error_server --db %s, then GET /api/errors)"
                % (base / "errors.db", base / "errors.db")
            )
            out.say("  server log  %s" % (base / "server.log"))
            out.say("  agent state %s" % (base / "agent-cache"))
        else:
            shutil.rmtree(str(base), ignore_errors=True)
    if status == 0:
        out.say("")
        out.say("Done: the server is stopped%s." % ("" if args.keep else " and the temporary directory removed"))
    return status


if __name__ == "__main__":
    sys.exit(main())
