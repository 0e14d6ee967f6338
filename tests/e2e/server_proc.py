"""The reference server as a real subprocess (``python -m corp_error_server --port 0``) for e2e tests."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from typing import Callable, Optional

from support import ROOT, WAIT_TIMEOUT, clean_env


class ServerProcess:
    def __init__(self, db: Path, *args: str) -> None:
        env = clean_env({"PYTHONPATH": str(ROOT), "ERROR_AGENT_ENABLED": "0"})
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "corp_error_server", "--port", "0", "--db", str(db), *args],
            cwd=str(ROOT),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.log: list = []
        self._lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        self.url = self._address()

    def _pump(self) -> None:
        for line in self.proc.stderr:
            self.log.append(line)
            self._lines.put(line)
        self._lines.put("")

    def _address(self) -> str:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                line = self._lines.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            if line.startswith("listening on "):
                return line.split()[-1]
            if line == "":
                break
        self.stop()
        raise RuntimeError("the server did not start:\n" + "".join(self.log))

    def get(self, path: str):
        with self._opener.open(self.url + path, timeout=20) as response:
            return json.loads(response.read().decode("utf-8"))

    def group(self, needle: str) -> Optional[dict]:
        for group in self.get("/api/errors")["groups"]:
            if needle in group["group_key"]:
                return group
        return None

    def wait_group(self, needle: str, ready: Callable[[dict], bool], timeout: float = WAIT_TIMEOUT) -> dict:
        """Poll GET /api/errors (bounded) until the group whose key contains ``needle`` is ``ready``."""
        deadline = time.monotonic() + timeout
        delay = 0.02
        while True:
            group = self.group(needle)
            if group is not None and ready(group):
                return group
            if time.monotonic() > deadline:
                raise AssertionError(
                    "group %r not ready within %.0f s: %s\nserver log:\n%s"
                    % (needle, timeout, json.dumps(group, indent=1), "".join(self.log))
                )
            time.sleep(delay)  # poll interval of a bounded wait
            delay = min(delay * 2, 0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=20)
