#!/usr/bin/env bash
# The one test command (README names it; .ci/run calls it).
#
# From nothing but pyenv's CPythons and PyPI: builds a tooling venv under .cache/ with the 3.11
# interpreter, installs pytest (+ hypothesis, build, hatchling, ruff, mypy, coverage, schemathesis), builds
# this repo's wheel once into .cache/dist, reports which CPython 3.8-3.13 the agent tests will drive,
# runs ruff and mypy, then pytest under coverage, and prints the coverage of the agent and the server
# (a full run fails under 90% of lines of either).
# Extra arguments go to pytest:  bash tests/run_tests.sh -k hint -x
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
CACHE="$ROOT/.cache"
mkdir -p "$CACHE"

if command -v pyenv >/dev/null 2>&1; then
    PYENV_ROOT_DIR="$(pyenv root)"
else
    PYENV_ROOT_DIR="${PYENV_ROOT:-$HOME/.pyenv}"
fi
export CEA_PYENV_ROOT="$PYENV_ROOT_DIR"

# Highest installed patch release of CPython 3.<minor> under pyenv, or nothing.
find_python() {
    local minor="$1" best="" v
    [ -d "$PYENV_ROOT_DIR/versions" ] || return 0
    for v in $(ls "$PYENV_ROOT_DIR/versions" 2>/dev/null | grep -E "^3\.${minor}\.[0-9]+$" | sort -t. -k3,3n); do
        [ -x "$PYENV_ROOT_DIR/versions/$v/bin/python" ] && best="$PYENV_ROOT_DIR/versions/$v/bin/python"
    done
    echo "$best"
}

TOOL_PY="$(find_python 11)"
if [ -z "$TOOL_PY" ]; then
    TOOL_PY="$(command -v python3 || true)"
fi
if [ -z "$TOOL_PY" ]; then
    echo "run_tests.sh: no Python 3.11 under $PYENV_ROOT_DIR/versions and no python3 on PATH" >&2
    exit 2
fi

VENV="$CACHE/tools-venv"
STAMP="$VENV/.requirements-installed"
REQS="pytest>=7 hypothesis>=6 build>=1 hatchling>=1.18 pyflakes>=3 psycopg[binary]>=3.1 psycopg_pool>=3.2 ruff==0.17.6 mypy==2.4.1 coverage>=7.10,<8 schemathesis>=4 playwright>=1.40"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$REQS" ]; then
    echo "== creating tooling venv with $TOOL_PY"
    rm -rf "$VENV"
    "$TOOL_PY" -m venv "$VENV" || exit 2
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --upgrade pip || exit 2
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check $REQS || exit 2
    echo "$REQS" > "$STAMP"
fi
PY="$VENV/bin/python"
echo "== tooling: $("$PY" -c 'import sys, pytest; print("Python", sys.version.split()[0], "/ pytest", pytest.__version__)')"

# Build the wheel once per run (the agent tests install it into their venvs).
DIST="$CACHE/dist"
if [ -n "${CEA_PREBUILT_WHEEL:-}" ]; then   # development only: use a wheel built elsewhere
    rm -rf "$DIST"; mkdir -p "$DIST"; cp "$CEA_PREBUILT_WHEEL" "$DIST/"
else
rm -rf "$DIST"
mkdir -p "$DIST"
if ! "$PY" -m build --wheel --no-isolation --outdir "$DIST" . >"$CACHE/build.log" 2>&1; then
    cat "$CACHE/build.log" >&2
    echo "run_tests.sh: building the wheel failed" >&2
    exit 2
fi
rm -rf "$ROOT/build"
fi
export CEA_WHEEL="$(ls "$DIST"/*.whl | head -n1)"
echo "== wheel: ${CEA_WHEEL#$ROOT/}"

# The interpreters the agent tests are parametrised over (tests/support.py finds the same ones).
for minor in 8 9 10 11 12 13; do
    p="$(find_python "$minor")"
    if [ -n "$p" ]; then
        echo "   3.$minor: $p"
    else
        echo "   SKIP 3.$minor: not installed (no $PYENV_ROOT_DIR/versions/3.$minor.*/bin/python)"
    fi
done

export CEA_CACHE="$CACHE"
export HYPOTHESIS_STORAGE_DIRECTORY="$CACHE/hypothesis"
export PYTHONDONTWRITEBYTECODE=1

# Lint and types before the tests; a finding fails the run (after the tests, so they run all the same).
lint_failed=()
echo "== ruff check"
"$PY" -m ruff check --quiet . || lint_failed+=("ruff check")
echo "== ruff format --check"
"$PY" -m ruff format --check --quiet . || lint_failed+=("ruff format --check (run: ruff format .)")
echo "== ruff check, agent file whole (start-up part + agent proper)"
"$PY" tests/agent_whole.py --quiet || lint_failed+=("ruff check of the whole agent file (tests/agent_whole.py)")
echo "== mypy"
"$PY" -m mypy || lint_failed+=("mypy")

# Coverage of the agent (agent proper included) and the server, in this process and in every
# subprocess of the interpreters the tests drive, each with its own coverage.py
# (tests/coverage_agent.py). CEA_COVERAGE=0: none.
SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ "${CEA_COVERAGE:-1}" != "0" ]; then
    rm -rf "$CACHE/coverage"
    mkdir -p "$CACHE/coverage"
    pythons=()
    for minor in 8 9 10 11 12 13; do
        p="$(find_python "$minor")"
        [ -z "$p" ] || pythons+=("$p")
    done
    "$PY" -m tests.coverage_agent hook "$SITE" "${pythons[@]}" || exit 2
    export COVERAGE_PROCESS_START="$ROOT/pyproject.toml"
    export COVERAGE_FILE="$CACHE/coverage/data"
else
    rm -f "$SITE/a0_corp_error_agent_coverage.pth"
fi

# no path given: pytest runs testpaths (tests/); a path given: only that
"$PY" -m pytest -q -rsfE -p no:cacheprovider "$@"
rc=$?

if [ -n "${COVERAGE_PROCESS_START:-}" ]; then
    unset COVERAGE_PROCESS_START
    echo "== coverage of lines, agent proper and subprocesses of every interpreter included"
    "$PY" -m coverage combine --quiet >/dev/null 2>&1
    # The bar (issue 13): 90% of the lines of the agent and of the server each. A full run under it
    # fails; a run of some tests only cannot reach it, so there the figures are only printed.
    if [ $# -gt 0 ]; then
        "$PY" -m tests.coverage_agent report
    elif ! "$PY" -m tests.coverage_agent report --fail-under=90; then
        echo "run_tests.sh: FAILED: coverage under the 90% bar" >&2
        [ $rc -ne 0 ] || rc=1
    fi
fi
if [ ${#lint_failed[@]} -gt 0 ]; then
    printf 'run_tests.sh: FAILED: %s\n' "${lint_failed[@]}" >&2
    [ $rc -ne 0 ] || rc=1
fi
exit $rc
