"""gunicorn (and the server's PostgreSQL extra) from PyPI in a venv cached under $CEA_CACHE, and a
gunicorn server on a free port."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from support import ROOT

REQUIREMENTS = ["gunicorn>=22,<24", "psycopg[binary]>=3.1", "psycopg-pool>=3.2"]


def gunicorn_python() -> Path:
    """The Python of a venv holding gunicorn and psycopg (made once, kept while what is in it stays)."""
    cache = Path(os.environ.get("CEA_CACHE") or ROOT / ".cache")
    venv = cache / ("gunicorn-venv-py%d%d" % sys.version_info[:2])
    python = venv / "bin" / "python"
    stamp = venv / ".requirements"
    wanted = " ".join(REQUIREMENTS)
    if not stamp.exists() or stamp.read_text() != wanted:
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(venv)], check=True)
        install = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", *REQUIREMENTS],
            capture_output=True,
            text=True,
        )
        if install.returncode != 0:
            pytest.skip("gunicorn could not be installed from PyPI: %s" % install.stderr.strip()[-300:])
        stamp.write_text(wanted)
    return python


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Gunicorn:
    """`gunicorn ARGS corp_error_server:app` on 127.0.0.1:<free port>, started and waited for."""

    def __init__(self, args: List[str], env: Dict[str, str], log: Path) -> None:
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.log = log
        environ = dict(os.environ, PYTHONPATH=str(ROOT), ERROR_AGENT_ENABLED="0", **env)
        environ.pop("CORP_ERROR_SERVER_TOKEN", None)
        with open(str(log), "ab") as errors:
            command = [
                str(gunicorn_python()),
                "-m",
                "gunicorn",
                "--bind",
                "127.0.0.1:%d" % self.port,
                "--graceful-timeout",
                "5",
                *args,
                "corp_error_server:app",
            ]
            self.proc = subprocess.Popen(command, cwd=str(ROOT), env=environ, stdout=subprocess.DEVNULL, stderr=errors)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError("gunicorn did not start:\n" + log.read_text(errors="replace")[-3000:]) from None
                time.sleep(0.05)  # polling a bounded start-up

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=30)
