"""At a terminal: the agent says what it waits for, and Ctrl-C ends the wait at once.

The failing script runs on a real pseudo-terminal against a backend that accepts connections and
never answers, with a suggestion timeout far longer than the test waits.
"""

from __future__ import annotations

import json
import os
import pty
import select
import signal
import subprocess

from support import failing_source, run, wait_error

WAIT_LIMIT = 60  # seconds the test waits for anything; the agent would wait 600


def _read_until(fd: int, marker: bytes, output: bytes = b"") -> bytes:
    while marker not in output:
        ready, _, _ = select.select([fd], [], [], WAIT_LIMIT)
        assert ready, output
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the other side of the terminal is closed
            chunk = b""
        if not chunk:
            break
        output += chunk
    return output


def test_wait_notice_on_a_terminal_and_ctrl_c_ends_the_wait(agent_venv, backend, sandbox):
    backend.set_fault("silent")
    script = sandbox.script("app.py", failing_source("boom-tty"))
    # PYTHON_COLORS: 3.13 colours tracebacks
    env = sandbox.env(backend.url, {"ERROR_AGENT_SUGGEST_TIMEOUT": "600", "PYTHON_COLORS": "0"})
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        [str(agent_venv.python), str(script)],
        stdin=subprocess.DEVNULL,
        stdout=slave,
        stderr=slave,
        env=env,
        cwd=str(sandbox.work),
    )
    os.close(slave)
    try:
        output = _read_until(master, b"(Ctrl-C skips)")
        assert b"ValueError: boom-tty" in output
        assert output.index(b"ValueError: boom-tty") < output.index(b"corp-error-agent: waiting up to")
        assert b"for a fix suggestion from " + backend.url.encode() in output

        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=WAIT_LIMIT) == 1  # the exit status of the uncaught ValueError
        rest = _read_until(master, b"\0")  # everything until the terminal closes
        assert b"KeyboardInterrupt" not in rest and b"Traceback" not in rest, rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    # the report is not lost: the next contact delivers it, though the process that held it is gone
    backend.set_fault(None)
    flush = run(
        agent_venv.python, ["-m", "corp_error_agent", "flush", "--json"], sandbox.env(backend.url), cwd=sandbox.work
    )
    assert json.loads(flush.stdout) == {"delivered": 1, "rejected": 0, "remaining": 0}, flush.stdout + flush.stderr
    assert wait_error(backend, "boom-tty")
