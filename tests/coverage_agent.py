"""Coverage of the agent file whole, measured in every test process: a start-up hook and a plugin.

The agent proper runs compiled with the agent file's name and line numbers, so coverage.py records
its lines as for any module; but coverage.py finds a file's statements by compiling the file, where
the agent proper is one string. So the report marks the agent file as this plugin's, whose file
reporter reads it as tests/agent_whole.py sees it: start-up part and agent proper as one module.
(Measuring needs no plugin: the C tracer records the lines at full speed.)

Most agent tests run the agent in real interpreters of every version 3.8-3.13, in venvs the tests
create. ``install_hook`` puts a .pth file there (ahead of the agent's own, so that activate() is
measured too) that starts coverage.py when COVERAGE_PROCESS_START is set, as run_tests.sh sets it,
and leaves sys.path as it found it. The tooling venv's coverage.py loads only in an interpreter of
its version, so every other version gets its own, installed from the registry by that interpreter's
pip into .cache/coverage-py/3.X (``provide``); the data files of all versions are combined at the
end, which reads them whatever coverage.py version wrote them (one SQLite schema).

    python -m tests.coverage_agent hook SITE_PACKAGES PYTHON...  installs the hook (run_tests.sh: the
                                                   tooling venv's) and coverage.py for each PYTHON
    python -m tests.coverage_agent report [--fail-under=N] the combined data, agent and server each
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import coverage

HOOK_NAME = "a0_corp_error_agent_coverage.pth"  # .pth files run in name order: before corp_error_agent.pth


class _AgentPlugin(coverage.CoveragePlugin):
    def file_tracer(self, filename: str):
        return None  # measured as any module; report() hands the agent file to file_reporter

    def file_reporter(self, filename: str):
        from coverage.config import DEFAULT_EXCLUDE
        from coverage.misc import join_regex
        from coverage.parser import PythonParser
        from coverage.python import PythonFileReporter

        from tests.agent_whole import whole_source

        class AgentReporter(PythonFileReporter):
            def source(self) -> str:
                if self._source is None:
                    self._source = whole_source(super().source())
                return self._source

            @property
            def parser(self) -> PythonParser:
                if self._parser is None:
                    self._parser = PythonParser(
                        text=self.source(), filename=self.filename, exclude=join_regex(DEFAULT_EXCLUDE)
                    )
                    self._parser.parse_source()
                return self._parser

        return AgentReporter(filename)


def coverage_init(reg, options) -> None:
    reg.add_file_tracer(_AgentPlugin())


TOOLING_VERSION = "%d.%d" % sys.version_info[:2]
CACHE = Path(os.environ.get("CEA_CACHE") or Path(__file__).resolve().parent.parent / ".cache")
# The newest coverage.py each interpreter's pip finds for its version (3.8's stops at 7.6); before
# 3.11, reading pyproject.toml (COVERAGE_PROCESS_START) takes tomli: the "toml" extra.
REQUIREMENT = "coverage[toml]>=7.6,<8"


def coverage_dir(version: str) -> Path:
    """Where an interpreter of `version` finds coverage.py: the tooling venv's, or its own."""
    if version == TOOLING_VERSION:
        return Path(coverage.__file__).resolve().parent.parent
    return CACHE / "coverage-py" / version


def provide(python: str) -> Optional[str]:
    """Install coverage.py for `python`'s version once (a stamp holds the requirement); None, or why not."""
    version = subprocess.run(
        [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"], capture_output=True, text=True, timeout=60
    ).stdout.strip()
    target = coverage_dir(version)
    stamp = target / ".installed"
    if version == TOOLING_VERSION or (stamp.exists() and stamp.read_text() == REQUIREMENT):
        return None
    proc = subprocess.run(
        [
            python,
            "-m",
            "pip",
            "install",
            "-q",
            "--disable-pip-version-check",
            "--no-warn-script-location",
            "--upgrade",
            "--target",
            str(target),
            REQUIREMENT,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        return "CPython %s not measured: pip install %s failed:\n%s" % (version, REQUIREMENT, proc.stderr)
    stamp.write_text(REQUIREMENT)
    return None


def hook_line(version: str) -> str:
    """The .pth line: start coverage.py from `version`'s directory, put sys.path back."""
    code = (
        "import os\n"
        "if os.environ.get('COVERAGE_PROCESS_START'):\n"
        "    added = %r\n"
        "    sys.path[:0] = added\n"
        "    try:\n"
        "        import coverage\n"
        "        coverage.process_startup()\n"
        "    except Exception:\n"
        "        pass\n"
        "    finally:\n"
        "        del sys.path[:len(added)]\n" % [str(coverage_dir(version))]
    )
    return "import sys; exec(%r)\n" % code


def install_hook(site_packages, version: str) -> None:
    """Measure the interpreter of this site-packages, if coverage.py was provided for its version."""
    if version == TOOLING_VERSION or (coverage_dir(version) / ".installed").exists():
        (Path(site_packages) / HOOK_NAME).write_text(hook_line(version), encoding="utf-8")


def remove_hook(site_packages) -> None:
    (Path(site_packages) / HOOK_NAME).unlink(missing_ok=True)


def setup(site_packages, pythons) -> None:
    """The tooling venv's hook, and coverage.py for every interpreter the tests drive."""
    install_hook(site_packages, TOOLING_VERSION)
    for python in pythons:
        failure = provide(python)
        if failure:
            print("coverage: " + failure, file=sys.stderr)


PARTS = {"agent": ["corp_error_agent.py"], "server": ["corp_error_server/*"]}


def report(fail_under: float = 0.0) -> int:
    """The combined data's report, file by file, then one line per part; 1 if a part is under the bar."""
    cov = coverage.Coverage()
    cov.set_option("run:plugins", [__spec__.name if __spec__ else __name__])
    cov.load()
    data = cov.get_data()
    plugin = "%s.%s" % (cov.get_option("run:plugins")[0], _AgentPlugin.__name__)
    data.add_file_tracers(
        {
            path: plugin
            for path in data.measured_files()
            if os.path.basename(path) == "corp_error_agent.py" and not data.file_tracer(path)
        }
    )
    cov.report(file=sys.stdout, skip_empty=True)
    status = 0
    for part, include in PARTS.items():
        try:
            percent = cov.report(include=include, file=open(os.devnull, "w"))
        except coverage.CoverageException as error:  # nothing of it measured
            print("coverage of the %s: none (%s)" % (part, error))
            continue
        below = percent < fail_under
        status |= below
        print(
            "coverage of the %s: %.1f%% of lines%s"
            % (part, percent, " -- under the bar of %.0f%%" % fail_under if below else "")
        )
    return status


if __name__ == "__main__":
    if sys.argv[1:2] == ["hook"] and len(sys.argv) >= 3:
        setup(sys.argv[2], sys.argv[3:])
    elif sys.argv[1:2] == ["report"] and len(sys.argv) <= 3:
        bar = sys.argv[2].split("=", 1)[1] if len(sys.argv) == 3 and sys.argv[2].startswith("--fail-under=") else "0"
        sys.exit(report(float(bar)))
    else:
        sys.exit("usage: python -m tests.coverage_agent hook SITE_PACKAGES PYTHON... | report [--fail-under=PERCENT]")
