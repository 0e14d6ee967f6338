"""The agent file seen whole: its start-up part and its agent proper as one module, line for line.

The agent proper is an unassigned string statement (corp_error_agent.py says why), so a linter or
coverage.py reading the file sees one string where most of the code is. Blank the two lines that
open and close that string and the file is one module in which every line keeps its number: what
the tools read is what runs, because the agent compiles the agent proper with the file's name and
line numbers. tests/unit/test_agent_file.py checks that this view and the agent's own
``_agent_source()`` agree.

    python tests/agent_whole.py [RUFF ARGS]   ruff on the whole agent file (run_tests.sh runs it)
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

AGENT_FILE = Path(__file__).resolve().parent.parent / "corp_error_agent.py"
OPENING, CLOSING = "r'''", "'''"  # the lines that open and close the agent proper


def whole_source(text: str) -> str:
    """The agent file's text with the agent proper's opening and closing lines blanked."""
    lines = text.splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.rstrip("\r\n") == OPENING)
    end = next(i for i in range(start + 1, len(lines)) if lines[i].rstrip("\r\n") == CLOSING)
    lines[start] = lines[end] = "\n"
    return "".join(lines)


def lint(ruff_args: list) -> int:
    """ruff on the whole file, findings named by the file's path and line numbers. The ignores that
    pyproject.toml keeps for the file as ruff reads it alone (names of the agent proper in __all__)
    do not apply here: in this view those names are defined."""
    command = (
        [
            sys.executable,
            "-m",
            "ruff",
            "check",
            "--stdin-filename",
            str(AGENT_FILE),
            "--config",
            "lint.per-file-ignores = {}",
        ]
        + ruff_args
        + ["-"]
    )
    source = whole_source(AGENT_FILE.read_text(encoding="utf-8"))
    return subprocess.run(command, input=source, text=True, cwd=str(AGENT_FILE.parent)).returncode


if __name__ == "__main__":
    sys.exit(lint(sys.argv[1:]))
