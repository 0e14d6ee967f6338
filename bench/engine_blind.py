"""Engine quality on populations generated from a written spec alone (issue 14, item 5).

Written without reading the engine or the other quality generator: all it knows is the wire protocol
and what a right answer is. Each seed builds five populations (small, large, python, grouping,
envvars); each bug is one scenario with a ground-truth model `fails(env)`. Everything goes through
HTTP to a real server process (`python -m corp_error_server`, its own SQLite file per population):
error beacons from our agent (error_sig with frames, scrubbed trace, event_id, script_name) and from
the published 0.4.2 client (lower-cased last traceback line, raw trace, no event_id), success beacons
(ours after a failure name the failing env; 0.4.2 ones only follow a failure on the same machine and
post no /env), then the failing run that asks POST /suggest. An answer is right iff `match` is true
and its `solution`, applied to the asking environment, gives one the model says does not fail, with
every version it names seen in the population and every interpreter one the population runs.
(`--fit`, added later for bench/calibration.py, is the one part that knows engine internals: it
starts the server with the engine's threshold at 0 and its calibration the identity.)

    python bench/engine_blind.py [--seeds 1,2,3,4,5] [--quick] [--examples 3]
    python bench/engine_blind.py --fit --dump answers.jsonl    # every bug, for bench/calibration.py

Metrics: correct@1 = right top answers / bugs with an environment cause (an abstention is a miss);
false-suggestion rate = bugs without an environment cause answered with match:true / those bugs;
wrong-answer rate = wrong answers / all answers; ECE = expected calibration error of the answers'
confidence over 10 equal-width bins. Bar (issue 14): >= 95%, <= 2%, ECE <= 10%.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import os
import random
import re
import shlex
import sys
import tempfile
import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Set, Tuple

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import REPO, start, stop  # noqa: E402

sys.path.insert(0, REPO)
import corp_error_agent  # noqa: E402  the client's own normalisation builds our signatures

###############################################################################
# Populations: packages, interpreters, environments ###########################
###############################################################################

_REAL = [
    "requests",
    "urllib3",
    "idna",
    "certifi",
    "charset-normalizer",
    "six",
    "attrs",
    "click",
    "jinja2",
    "markupsafe",
    "pyyaml",
    "pytz",
    "tzdata",
    "python-dateutil",
    "packaging",
    "pyparsing",
    "typing-extensions",
    "filelock",
    "colorama",
    "tqdm",
    "toml",
    "tomli",
    "rich",
    "pygments",
    "cryptography",
    "cffi",
    "pycparser",
    "lxml",
    "pillow",
    "scikit-learn",
    "scipy",
    "joblib",
    "threadpoolctl",
    "sqlalchemy",
    "greenlet",
    "psycopg2",
    "redis",
    "celery",
    "kombu",
    "billiard",
    "vine",
    "amqp",
    "boto3",
    "botocore",
    "s3transfer",
    "jmespath",
    "aiohttp",
    "yarl",
    "multidict",
    "frozenlist",
    "aiosignal",
    "async-timeout",
    "pydantic",
    "pydantic-core",
    "annotated-types",
    "fastapi",
    "starlette",
    "anyio",
    "sniffio",
    "h11",
    "httpx",
    "httpcore",
    "werkzeug",
    "flask",
    "itsdangerous",
    "blinker",
    "protobuf",
    "grpcio",
    "msgpack",
    "orjson",
    "ujson",
    "simplejson",
    "networkx",
    "sympy",
    "mpmath",
    "matplotlib",
    "kiwisolver",
    "cycler",
    "fonttools",
    "contourpy",
]
_MODULE_OF = {
    "pyyaml": "yaml",
    "python-dateutil": "dateutil",
    "pillow": "PIL",
    "scikit-learn": "sklearn",
    "typing-extensions": "typing_extensions",
    "charset-normalizer": "charset_normalizer",
    "pydantic-core": "pydantic_core",
    "annotated-types": "annotated_types",
    "async-timeout": "async_timeout",
    "psycopg2": "psycopg2",
    "protobuf": "google.protobuf",
    "grpcio": "grpc",
}
_SYLLABLES = [
    "ar",
    "bel",
    "cor",
    "dun",
    "el",
    "fax",
    "gri",
    "hol",
    "ix",
    "jun",
    "kel",
    "lum",
    "mor",
    "nix",
    "ost",
    "pra",
    "qua",
    "ris",
    "sol",
    "tav",
    "ul",
    "vex",
    "wen",
    "yor",
    "zed",
]
_TOOLS = ("pip", "setuptools", "wheel")
# What a fresh venv of each interpreter brings (3.12+ venvs come without setuptools and wheel)
_TOOLING = {
    "3.8": ("23.0.1", "56.0.0"),
    "3.9": ("23.0.1", "58.1.0"),
    "3.10": ("23.0.1", "65.5.0"),
    "3.11": ("23.2.1", "68.2.2"),
    "3.12": ("24.0", None),
    "3.13": ("24.2", None),
}
_PATCH = {"3.8": "3.8.18", "3.9": "3.9.18", "3.10": "3.10.13", "3.11": "3.11.7", "3.12": "3.12.1", "3.13": "3.13.0"}
_USERS = ["alice", "bob", "chen", "dana", "eve", "farid", "gwen", "hiro", "ines", "jo", "kai", "lena"]
# The allow-list both clients always send (an unset one as "MISSING"); only ours adds the names of
# ERROR_AGENT_ENV_ALLOW: the published 0.4.2 client's list is fixed (its sitecustomize.py ENV_ALLOW)
_DEFAULT_VARS = (
    "VIRTUAL_ENV",
    "CONDA_PREFIX",
    "PYTHONPATH",
    "LC_ALL",
    "LANG",
    "TZ",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "NO_PROXY",
)


def _minor(python: str) -> str:
    return ".".join(python.split(".")[:2])


def _vkey(version: str) -> Tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", version))


@dataclass
class Env:
    """One environment as it really is (ground truth) plus what its client collects and sends."""

    packages: Dict[str, str]
    python: str
    vars: Dict[str, str]  # really set; a name absent here is unset
    collected: Set[str]  # env var names this run's agent is told to collect (absent = not collected)
    client: str  # "ours" or "042"
    user: str

    def copy(self) -> Env:
        return Env(dict(self.packages), self.python, dict(self.vars), set(self.collected), self.client, self.user)

    def home(self) -> str:
        return "/home/" + self.user

    def site(self) -> str:
        return "%s/venvs/app/lib/python%s/site-packages" % (self.home(), _minor(self.python))

    def sent_vars(self) -> Set[str]:
        """The env var names this run's client really sends."""
        return self.collected if self.client == "ours" else set(_DEFAULT_VARS)

    def body(self) -> dict:
        """The POST /env payload this run's client sends (without env_hash)."""
        env_vars = {name: self.vars.get(name, "MISSING") for name in sorted(self.sent_vars())}
        if self.client == "ours":
            env_vars = {k: v.replace(self.home(), "~") for k, v in env_vars.items()}
        body = {
            "packages": ["%s==%s" % item for item in sorted(self.packages.items())],
            "python_ver": self.python,
            "os_info": "Linux-6.1.0-x86_64",
            "machine_arch": "x86_64",
            "env_vars": env_vars,
        }
        if self.client == "ours":
            body["python_impl"] = "CPython"
        return body

    def env_hash(self) -> str:
        if self.client == "042":  # md5 over the sorted requirement list: the interpreter is not in it
            return hashlib.md5("\n".join(sorted(self.body()["packages"])).encode()).hexdigest()[:12]
        return hashlib.sha256(json.dumps(self.body(), sort_keys=True).encode()).hexdigest()[:12]


class Population:
    """Package ladders, interpreters, pairs of packages that always move together; draws environments."""

    def __init__(self, rng: random.Random, n_packages: int, absent: float, pythons: List[str], coupled: int = 0):
        self.rng = rng
        self.absent = absent
        self.pythons = pythons
        names = list(_REAL)
        rng.shuffle(names)
        while len(names) < n_packages:
            name = "".join(rng.choice(_SYLLABLES) for _ in range(rng.randint(2, 3))) + rng.choice(
                ["", "py", "-io", "-core", "lib"]
            )
            if name not in names and name not in _TOOLS:
                names.append(name)
        self.names = names[:n_packages]
        self.ladders = {name: self._ladder() for name in self.names}
        self.seen: Dict[str, Set[str]] = {}
        # coupled pairs (a, b): a's old versions only import with b's old ones, new with new
        self.coupled: List[Tuple[str, str, int, int]] = []
        for i in range(coupled):
            a, b = self.names[2 * i], self.names[2 * i + 1]
            self.coupled.append((a, b, len(self.ladders[a]) // 2, len(self.ladders[b]) // 2))

    def _ladder(self) -> List[str]:
        major, minor, out = self.rng.randint(0, 3), self.rng.randint(0, 9), []
        for _ in range(self.rng.randint(4, 8)):
            if self.rng.random() < 0.25:
                major, minor = major + 1, 0
            else:
                minor += self.rng.randint(1, 3)
            out.append("%d.%d.%d" % (major, minor, self.rng.randint(0, 9)))
        return out

    def module(self, name: str) -> str:
        return _MODULE_OF.get(name, name.replace("-", "_"))

    def era(self, name: str, version: str) -> Optional[Tuple[int, bool]]:
        """(pair index, new?) when ``name`` is one half of a coupled pair."""
        for i, (a, b, cut_a, cut_b) in enumerate(self.coupled):
            if name in (a, b):
                ladder, cut = (self.ladders[a], cut_a) if name == a else (self.ladders[b], cut_b)
                return i, _vkey(version) >= _vkey(ladder[cut])
        return None

    def broken(self, env: Env) -> bool:
        """True when a coupled pair is mixed across eras: the first import fails whatever the script does."""
        for a, b, _, _ in self.coupled:
            if a in env.packages and b in env.packages:
                if self.era(a, env.packages[a])[1] != self.era(b, env.packages[b])[1]:
                    return True
        return False

    def env(self, python: Optional[str] = None) -> Env:
        rng = self.rng
        packages = {}
        for name in self.names:
            if rng.random() >= self.absent:
                ladder = self.ladders[name]
                packages[name] = ladder[min(len(ladder) - 1, int(len(ladder) * rng.random() ** 0.7))]
        for a, b, cut_a, cut_b in self.coupled:  # move together: one era for both
            if a in packages:
                new = rng.random() < 0.5
                packages[a] = rng.choice(self.ladders[a][cut_a:] if new else self.ladders[a][:cut_a])
                packages[b] = rng.choice(self.ladders[b][cut_b:] if new else self.ladders[b][:cut_b])
        python = python or rng.choice(self.pythons)
        env = Env(packages, python, {}, set(_DEFAULT_VARS), "042" if rng.random() < 0.3 else "ours", rng.choice(_USERS))
        self.retool(env)
        lang = rng.choice(["C.UTF-8", "en_US.UTF-8", None])
        if lang:
            env.vars["LANG"] = lang
        if rng.random() < 0.3:
            env.vars["TZ"] = "UTC"
        if rng.random() < 0.6:
            env.vars["VIRTUAL_ENV"] = env.home() + "/venvs/app"
        return env

    def retool(self, env: Env) -> None:
        """pip/setuptools/wheel as a fresh venv of the env's interpreter has them."""
        pip, setuptools = _TOOLING[_minor(env.python)]
        env.packages["pip"] = pip
        for tool, version in (("setuptools", setuptools), ("wheel", "0.41.2" if setuptools else None)):
            if version and self.rng.random() < 0.9:
                env.packages[tool] = version
            else:
                env.packages.pop(tool, None)

    def note(self, env: Env) -> None:
        for name, version in env.packages.items():
            self.seen.setdefault(name, set()).add(version)


###############################################################################
# Bugs: where they are raised, what the trace says ############################
###############################################################################


@dataclass
class Frame:
    module: str
    qualname: str
    source: str

    def file(self, env: Env, script_name: str) -> str:
        if self.module == "__main__":
            return "%s/jobs/%s" % (env.home(), script_name)
        return "%s/%s.py" % (env.site(), self.module.replace(".", "/"))


@dataclass
class Script:
    name: str
    script_id: str
    frames: List[Frame]  # outermost first; the bug's inner frames are appended per bug


@dataclass
class Scenario:
    difficulty: str
    kind: str
    has_cause: bool
    fails: Callable[[Env], bool]  # ground truth without flakiness
    exc: str
    message: Callable[[Env], str]  # the raw message (may name paths of the env)
    inner: List[Frame]  # innermost frames of the bug, outermost first
    scripts: List[Script]
    runs: List[Tuple[str, Env, Optional[int], int]] = field(default_factory=list)  # (kind, env, pair_of, script)
    ask: Optional[Tuple[Env, int]] = None
    note: str = ""
    oracle: Callable[[Population], Optional[str]] = lambda pop: None  # what a perfect engine would print


def _stack(script: Script, scenario: Scenario, env: Env) -> List[Tuple[str, str]]:
    """(module.qualname as our agent names it, trace line pair), outermost first."""
    out = []
    for frame in script.frames + scenario.inner:
        # co_qualname only exists from 3.11: older interpreters name a method by its bare name
        name = frame.qualname if _vkey(env.python) >= (3, 11) else frame.qualname.split(".")[-1]
        path = frame.file(env, script.name)
        line = 10 + zlib.crc32((frame.module + frame.qualname).encode()) % 400
        func = frame.qualname.split(".")[-1]
        text = '  File "%s", line %d, in %s\n    %s\n' % (path, line, func, frame.source)
        out.append((frame.module + "." + name, text))
    return out


def _trace(script: Script, scenario: Scenario, env: Env) -> Tuple[str, str]:
    """(trace text, error_sig) as this run's client sends them."""
    stack = _stack(script, scenario, env)
    message = scenario.message(env)
    last = scenario.exc + (": " + message if message else "")
    text = "Traceback (most recent call last):\n" + "".join(line for _, line in stack) + last + "\n"
    if env.client == "042":
        return text[-25000:], last.lower()
    text = text.replace(env.home(), "~")
    normal = corp_error_agent._normalise_message(message.replace(env.home(), "~"))
    line = scenario.exc + (": " + normal if normal else "")
    frames = [name for name, _ in stack][::-1][:3]
    return text, (line + " @ " + " < ".join(frames))[:400]


###############################################################################
# Scenario builders ###########################################################
###############################################################################

_WORDS = [
    "orders",
    "users",
    "billing",
    "report",
    "ingest",
    "sync",
    "export",
    "invoices",
    "metrics",
    "alerts",
    "backup",
    "catalog",
    "ledger",
    "payroll",
    "search",
    "thumbnails",
    "emails",
    "audit",
    "forecast",
    "geo",
]
_API = [
    "load_table",
    "read_frame",
    "append",
    "to_records",
    "iter_rows",
    "parse_date",
    "LegacyVersion",
    "soft_unicode",
    "escape_html",
    "as_dict",
    "fetch_all",
    "open_url",
    "get_loader",
    "Mapping",
    "safe_load",
    "json_normalize",
]


class Builder:
    def __init__(
        self,
        rng: random.Random,
        pop: Population,
        difficulty: str,
        runs: Tuple[int, int],
        riders: int = 0,
        pair_share: float = 0.5,
    ):
        self.rng, self.pop, self.difficulty = rng, pop, difficulty
        self.runs, self.riders, self.pair_share = runs, riders, pair_share
        self.n_scripts = 0
        self.functions: Set[str] = set()
        self.messages: Set[tuple] = set()

    def script(self, framework: bool = False) -> Script:
        self.n_scripts += 1
        rng = self.rng
        word = rng.choice(_WORDS)
        name = "%s_%s_%d.py" % (rng.choice(["nightly", "sync", "job", "run", "build"]), word, self.n_scripts)
        func = "%s_%s" % (rng.choice(["load", "build", "sync", "send", "parse", "check"]), word)
        while func in self.functions:  # different scripts, different code
            func = "%s_%s" % (
                rng.choice(["load", "build", "sync", "send", "parse", "check", "fetch", "merge", "clean", "post"]),
                rng.choice(_WORDS) + rng.choice(["", "s", "_all", "_v2"]),
            )
        self.functions.add(func)
        script_id = hashlib.sha256(("%s-%d-%d" % (name, self.n_scripts, rng.random() * 1e9)).encode()).hexdigest()[:12]
        if framework:  # every step of a pipeline raises from the same runner code
            frames = [
                Frame("__main__", "<module>", "main()"),
                Frame("__main__", "main", "run_pipeline(STEPS)"),
                Frame("pipeline.runner", "run_step", "raise RuntimeError(f\"step {i} failed\")"),
            ]
        else:
            frames = [
                Frame("__main__", "<module>", "main()"),
                Frame("__main__", "main", "%s(args)" % func),
                Frame("__main__", func, "result = step(config)"),
            ]
        return Script(name, script_id, frames)

    # -- causes ---------------------------------------------------------------------------

    def pick_package(self, min_versions: int = 3, avoid: Set[str] = frozenset()) -> str:
        coupled = {n for pair in self.pop.coupled for n in pair[:2]}
        while True:
            name = self.rng.choice(self.pop.names)
            if len(self.pop.ladders[name]) >= min_versions and name not in coupled and name not in avoid:
                return name

    def library_bug(self, pkg: str) -> Tuple[str, Callable[[Env], str], List[Frame]]:
        """A breakage of ``pkg``: exception type, message, inner frames (raised in the script or the library)."""
        rng, mod = self.rng, self.pop.module(pkg)
        # outside the grouping population no two bugs share a message: that difficulty is measured there
        for _ in range(100):
            api, form = rng.choice(_API), rng.randrange(5)
            key = (api, mod if form in (0, 1, 3) else form)
            if key not in self.messages:
                break
        self.messages.add(key)
        if form == 0:
            return "AttributeError", lambda env: "module '%s' has no attribute '%s'" % (mod, api), []
        if form == 1:
            sub = rng.choice(["core", "compat", "utils", "version"])
            return (
                "ImportError",
                lambda env: (
                    "cannot import name '%s' from '%s.%s' (%s/%s/%s.py)"
                    % (api, mod, sub, env.site(), mod.replace(".", "/"), sub)
                ),
                [],
            )
        if form == 2:
            kw = rng.choice(["strict", "encoding", "timeout", "verify", "dtype"])
            return "TypeError", lambda env: "%s() got an unexpected keyword argument '%s'" % (api, kw), []
        if form == 3:
            n = rng.randint(2, 9)
            inner = [
                Frame(mod + ".io", "Reader.load", "header = self._read_header(fh)"),
                Frame(mod + ".io", "Reader._read_header", "raise ValueError(msg)"),
            ]
            return "ValueError", lambda env: "unsupported %s format version %d" % (api, n), inner
        cls = rng.choice(["DataFrame", "Session", "Client", "Table", "Model"])
        inner = [Frame(mod + ".core.base", cls + ".__getattr__", "return object.__getattribute__(self, name)")]
        return "AttributeError", lambda env: "'%s' object has no attribute '%s'" % (cls, api), inner

    def versions_cause(self, pkg: str, kind: str):
        ladder = self.pop.ladders[pkg]
        if kind == "range":  # every version from cut on fails
            cut = self.rng.randint(1, len(ladder) - 2)
            bad = set(ladder[cut:])
        else:
            bad = {self.rng.choice(ladder[1:])}
        return bad

    # -- runs -----------------------------------------------------------------------------

    def draw(self, want_fail: Optional[bool], scenario: Scenario, force: Callable[[Env], None]) -> Env:
        """An environment of the population with the scenario's needs forced in, failing or not as asked."""
        for _ in range(500):
            env = self.pop.env()
            force(env)
            if want_fail is None or (scenario.fails(env) == want_fail):
                return env
        raise RuntimeError("cannot draw a %s environment for %s" % (want_fail, scenario.kind))

    def plan(
        self,
        scenario: Scenario,
        fix: Callable[[Env], Env],
        bad: Callable[[], Env],
        good: Callable[[], Env],
        flaky: float = 0.0,
    ) -> None:
        """Failing and succeeding runs, some succeeding runs as fix pairs, then the asking run."""
        rng = self.rng
        n_fail, n_ok = rng.randint(*self.runs), rng.randint(*self.runs)
        runs = scenario.runs
        scripts = len(scenario.scripts)
        for _ in range(n_fail):
            env = good() if flaky and rng.random() < flaky else bad()
            runs.append(("error", env, None, rng.randrange(scripts)))
        pairs = 0
        if rng.random() < self.pair_share:
            pairs = rng.randint(1, min(3, n_fail, n_ok))
        failing = [i for i, run in enumerate(runs) if run[0] == "error"]
        for k in range(n_ok):
            if k < pairs:
                i = failing[k]
                fixed = fix(runs[i][1])
                fixed.client = runs[i][1].client
                self.ride(fixed, scenario)
                runs.append(("success", fixed, i, runs[i][3]))
            else:
                env = good()
                env.client = "ours"  # the 0.4.2 client reports a success only after a failure on its machine
                runs.append(("success", env, None, rng.randrange(scripts)))

    def ride(self, env: Env, scenario: Scenario) -> None:
        """Unrelated upgrades made in the same step as the fix."""
        if not self.riders:
            return
        coupled = {n for pair in self.pop.coupled for n in pair[:2]}
        for _ in range(self.rng.randint(0, self.riders)):
            name = self.rng.choice(self.pop.names)
            if name in coupled or name in scenario.note.split():
                continue
            before = env.copy()
            ladder = self.pop.ladders[name]
            current = env.packages.get(name)
            newer = [v for v in ladder if current is None or _vkey(v) > _vkey(current)]
            if newer:
                env.packages[name] = self.rng.choice(newer)
                if scenario.fails(env):
                    env.packages = before.packages


def _ok(fails, pop):
    return lambda env: pop.broken(env) or fails(env)


def _newest_seen(pop: Population, name: str, allowed) -> str:
    return max((v for v in pop.seen.get(name, ()) if v in allowed), key=_vkey)


def package_scenario(
    b: Builder,
    kind: str,
    n_scripts: int = 1,
    framework: bool = False,
    exc_msg: Optional[Tuple[str, Callable[[Env], str], List[Frame]]] = None,
) -> Scenario:
    """exact | range | missing | extra | coupled | flaky | nocause, raised by ``n_scripts`` scripts."""
    rng, pop = b.rng, b.pop
    scripts = [b.script(framework) for _ in range(n_scripts)]
    if kind == "coupled":
        a, partner, cut_a, cut_b = rng.choice(pop.coupled)
        new_a = set(pop.ladders[a][cut_a:])
        fails = _ok(lambda env: env.packages.get(a) in new_a, pop)
        exc, msg, inner = exc_msg or b.library_bug(a)
        sc = Scenario(b.difficulty, kind, True, fails, exc, msg, inner, scripts, note="%s %s" % (a, partner))

        def force(env):
            if a not in env.packages:
                new = rng.random() < 0.5
                env.packages[a] = rng.choice(pop.ladders[a][cut_a:] if new else pop.ladders[a][:cut_a])
                env.packages[partner] = rng.choice(
                    pop.ladders[partner][cut_b:] if new else pop.ladders[partner][:cut_b]
                )

        def fix(env):
            env = env.copy()
            env.packages[a] = rng.choice(pop.ladders[a][:cut_a])
            env.packages[partner] = rng.choice(pop.ladders[partner][:cut_b])
            return env

        b.plan(sc, fix, lambda: b.draw(True, sc, force), lambda: b.draw(False, sc, force))
        sc.ask = (b.draw(True, sc, force), rng.randrange(n_scripts))
        sc.oracle = lambda pop: (
            'pip install "%s==%s" "%s==%s"'
            % (
                a,
                _newest_seen(pop, a, pop.ladders[a][:cut_a]),
                partner,
                _newest_seen(pop, partner, pop.ladders[partner][:cut_b]),
            )
        )
        return sc

    if kind == "nocause":
        pkg = b.pick_package(2)
        exc, msg, inner = exc_msg or rng.choice(
            [
                ("ConnectionResetError", lambda env: "[Errno 104] Connection reset by peer", []),
                ("TimeoutError", lambda env: "timed out", []),
                ("ValueError", lambda env: "invalid literal for int() with base 10: 'N/A'", []),
                ("json.decoder.JSONDecodeError", lambda env: "Expecting value: line 1 column 1 (char 0)", []),
                ("BrokenPipeError", lambda env: "[Errno 32] Broken pipe", []),
                b.library_bug(pkg),
            ]
        )
        sc = Scenario(b.difficulty, kind, False, lambda env: False, exc, msg, inner, scripts)

        def force(env):
            env.packages.setdefault(pkg, rng.choice(pop.ladders[pkg]))

        def fix(env):  # a rerun in the same environment, or after an upgrade that changed nothing
            env = env.copy()
            if rng.random() < 0.5:
                for name in rng.sample(pop.names, rng.randint(1, 3)):
                    if name not in {n for pair in pop.coupled for n in pair[:2]}:
                        env.packages[name] = rng.choice(pop.ladders[name])
            return env

        b.plan(sc, fix, lambda: b.draw(None, sc, force), lambda: b.draw(None, sc, force))
        sc.ask = (b.draw(None, sc, force), rng.randrange(n_scripts))
        return sc

    pkg = b.pick_package(4 if kind in ("range", "flaky") else 3)
    ladder = pop.ladders[pkg]
    if kind == "missing":
        mod = pop.module(pkg)
        exc, msg, inner = "ModuleNotFoundError", (lambda env: "No module named '%s'" % mod.split(".")[0]), []
        fails = _ok(lambda env: pkg not in env.packages, pop)
        sc = Scenario(b.difficulty, kind, True, fails, exc, msg, inner, scripts, note=pkg)

        def force(env):
            """Nothing to force: whether the package is there decides."""

        def fix(env):
            env = env.copy()
            env.packages[pkg] = rng.choice(ladder)
            return env

        def bad():
            env = b.draw(None, sc, force)
            env.packages.pop(pkg, None)
            return env if not pop.broken(env) else bad()

        def good():
            env = b.draw(None, sc, force)
            env.packages.setdefault(pkg, rng.choice(ladder))
            return env

        b.plan(sc, fix, bad, good)
        sc.ask = (bad(), rng.randrange(n_scripts))
        sc.oracle = lambda pop: "pip install " + pkg
        return sc
    if kind == "extra":  # a package whose mere presence breaks the script (a backport shadowing the stdlib)
        host = pop.module(b.pick_package(2, avoid={pkg}))
        plugin = pop.module(pkg)
        exc, msg, inner = (
            "TypeError",
            (lambda env: "%s: plugin '%s' returned an incompatible hook" % (host, plugin)),
            [Frame(host + ".plugins", "load_entry_points", "hook = ep.load()(registry)")],
        )
        fails = _ok(lambda env: pkg in env.packages, pop)
        sc = Scenario(b.difficulty, kind, True, fails, exc, msg, inner, scripts, note=pkg)

        def fix(env):
            env = env.copy()
            env.packages.pop(pkg, None)
            return env

        def bad():
            env = b.draw(None, sc, lambda e: None)
            env.packages.setdefault(pkg, rng.choice(ladder))
            return env

        def good():
            return fix(b.draw(None, sc, lambda e: None))

        b.plan(sc, fix, bad, good)
        sc.ask = (bad(), rng.randrange(n_scripts))
        sc.oracle = lambda pop: "pip uninstall " + pkg
        return sc

    # exact, range, flaky: a set of bad versions of pkg
    bad_versions = b.versions_cause(pkg, "range" if kind == "range" or rng.random() < 0.4 else "exact")
    good_versions = [v for v in ladder if v not in bad_versions]
    fails = _ok(lambda env: env.packages.get(pkg) in bad_versions, pop)
    exc, msg, inner = exc_msg or b.library_bug(pkg)
    sc = Scenario(b.difficulty, kind, True, fails, exc, msg, inner, scripts, note=pkg)
    observed_bad = sorted(bad_versions, key=_vkey)
    asked_version = None
    if kind == "range":  # the asking env runs a bad version no failing run had
        asked_version = rng.choice(observed_bad[1:]) if len(observed_bad) > 1 else observed_bad[0]
        if len(observed_bad) > 1:
            observed_bad.remove(asked_version)

    def force_to(versions):
        def force(env):
            env.packages[pkg] = rng.choice(versions)

        return force

    def fix(env):
        env = env.copy()
        env.packages[pkg] = rng.choice(good_versions)
        return env

    flaky = rng.uniform(0.15, 0.35) if kind == "flaky" else 0.0
    b.plan(
        sc,
        fix,
        lambda: b.draw(True, sc, force_to(observed_bad)),
        lambda: b.draw(False, sc, force_to(good_versions)),
        flaky=flaky,
    )
    ask_force = force_to([asked_version] if asked_version else sorted(bad_versions))
    sc.ask = (b.draw(True, sc, ask_force), rng.randrange(n_scripts))
    sc.oracle = lambda pop: 'pip install "%s==%s"' % (pkg, _newest_seen(pop, pkg, good_versions))
    return sc


_STDLIB = [  # module, exception line, fails(minor tuple, env)
    ("tomllib", "ModuleNotFoundError", "No module named 'tomllib'", lambda v, env: v < (3, 11)),
    ("zoneinfo", "ModuleNotFoundError", "No module named 'zoneinfo'", lambda v, env: v < (3, 9)),
    ("graphlib", "ModuleNotFoundError", "No module named 'graphlib'", lambda v, env: v < (3, 9)),
    (
        "distutils",
        "ModuleNotFoundError",
        "No module named 'distutils'",
        lambda v, env: v >= (3, 12) and "setuptools" not in env.packages,
    ),
    ("imp", "ModuleNotFoundError", "No module named 'imp'", lambda v, env: v >= (3, 12)),
    ("asynchat", "ModuleNotFoundError", "No module named 'asynchat'", lambda v, env: v >= (3, 12)),
    ("asyncore", "ModuleNotFoundError", "No module named 'asyncore'", lambda v, env: v >= (3, 12)),
    ("smtpd", "ModuleNotFoundError", "No module named 'smtpd'", lambda v, env: v >= (3, 12)),
    ("cgi", "ModuleNotFoundError", "No module named 'cgi'", lambda v, env: v >= (3, 13)),
    ("telnetlib", "ModuleNotFoundError", "No module named 'telnetlib'", lambda v, env: v >= (3, 13)),
    ("crypt", "ModuleNotFoundError", "No module named 'crypt'", lambda v, env: v >= (3, 13)),
    ("imghdr", "ModuleNotFoundError", "No module named 'imghdr'", lambda v, env: v >= (3, 13)),
    ("collections", "ImportError", "cannot import name 'Mapping' from 'collections' (%s)", lambda v, env: v >= (3, 10)),
]


def python_scenario(b: Builder) -> Scenario:
    rng, pop = b.rng, b.pop
    module, exc, text, broken_on = rng.choice(_STDLIB)
    script = b.script()
    if rng.random() < 0.4:  # imported by a library the script uses, not by the script itself
        lib = pop.module(b.pick_package(2))
        inner = [Frame(lib + ".config", "<module>", "import %s" % module)]
    else:
        inner = [Frame("__main__", script.frames[-1].qualname, "import %s" % module)]
        script.frames = script.frames[:-1]

    def message(env):
        if "%s" not in text:
            return text
        return text % (
            "/home/%s/.pyenv/versions/%s/lib/python%s/collections/__init__.py"
            % (env.user, env.python, _minor(env.python))
        )

    fails = _ok(lambda env: broken_on(_vkey(env.python)[:2], env), pop)
    sc = Scenario(b.difficulty, "stdlib-" + module, True, fails, exc, message, inner, [script], note=module)
    bad_py = [p for p in pop.pythons if broken_on(_vkey(p)[:2], Env({}, p, {}, set(), "ours", "x"))]
    good_py = [p for p in pop.pythons if p not in bad_py]

    def on(pythons):
        def draw(want):
            for _ in range(200):
                env = pop.env(rng.choice(pythons))
                if fails(env) == want:
                    return env
            raise RuntimeError("no %s env for %s" % (want, module))

        return draw

    def fix(env):
        env = env.copy()
        env.python = rng.choice(good_py)
        pop.retool(env)
        if fails(env):  # distutils: a 3.12 venv without setuptools, moved to another 3.12+ one
            env.packages["setuptools"] = "69.0.3"
        return env

    b.plan(sc, fix, lambda: on(bad_py)(True), lambda: on(good_py)(False))
    sc.ask = (on(bad_py)(True), 0)
    asked = _vkey(sc.ask[0].python)
    sc.oracle = lambda pop: "use Python " + _minor(min(good_py, key=lambda p: abs(_vkey(p)[1] - asked[1])))
    return sc


_VALUE_ERRORS = {
    "APP_MODE": ("PermissionError", "[Errno 13] Permission denied: '/srv/prod/out.csv'"),
    "DEPLOY_ENV": ("sqlite3.OperationalError", "attempt to write a readonly database"),
    "RUN_MODE": ("botocore.exceptions.NoCredentialsError", "Unable to locate credentials"),
}


def envvar_scenario(b: Builder, kind: str) -> Scenario:
    """value: fails with APP_MODE=prod (dev, staging or unset work); unset: fails while DATA_DIR is unset."""
    rng, pop = b.rng, b.pop
    script = b.script()
    name = (
        rng.choice(["APP_MODE", "DEPLOY_ENV", "RUN_MODE"])
        if kind == "value"
        else rng.choice(["DATA_DIR", "REPORT_BUCKET", "SERVICE_URL"])
    )
    if kind == "value":  # one message per variable: scenarios that share a signature share the cause
        exc, text = _VALUE_ERRORS[name]
        msg, inner = (lambda env: text), []
        fails = _ok(lambda env: env.vars.get(name) == "prod", pop)
        values = ["dev", "staging", None]
    else:
        exc, msg, inner = (
            "KeyError",
            (lambda env: "'%s'" % name),
            [Frame("os", "_Environ.__getitem__", "raise KeyError(key) from None")],
        )
        fails = _ok(lambda env: name not in env.vars, pop)
        values = ["/srv/data", "/mnt/shared/data", "s3://bucket/x"]
    sc = Scenario(b.difficulty, "envvar-" + kind, True, fails, exc, msg, inner, [script], note=name)

    def set_var(env, value):
        if value is None:
            env.vars.pop(name, None)
        else:
            env.vars[name] = value
        if rng.random() < 0.5:  # ERROR_AGENT_ENV_ALLOW names it on some machines only
            env.collected.add(name)

    def bad():
        env = pop.env()
        set_var(env, "prod" if kind == "value" else None)
        return env if fails(env) else bad()

    def good():
        env = pop.env()
        set_var(env, rng.choice(values))
        return env if not fails(env) else good()

    def fix(env):
        env = env.copy()
        set_var(env, rng.choice([v for v in values if v is not None]))
        return env

    b.plan(sc, fix, bad, good)
    ask = bad()
    if rng.random() < 0.7:
        ask.collected.add(name)
    if name not in ask.sent_vars():  # the asking run's own value is unknown to the server: reported apart
        sc.kind += "-uncollected"
    sc.ask = (ask, 0)
    sc.oracle = lambda pop: "export %s=%s" % (name, values[0])
    return sc


###############################################################################
# Difficulties ################################################################
###############################################################################


def build(difficulty: str, rng: random.Random, quick: bool) -> Tuple[Population, List[Scenario]]:
    scale = 3 if quick else 1

    def kinds(weights: Dict[str, int], count: int) -> List[str]:
        names = list(weights)
        return [rng.choices(names, [weights[n] for n in names])[0] for _ in range(count // scale)]

    if difficulty == "small":
        pop = Population(rng, 40, 0.1, ["3.10.13", "3.11.7", "3.12.1"])
        b = Builder(rng, pop, difficulty, (2, 8))
        return pop, [
            package_scenario(b, k) for k in kinds({"exact": 5, "range": 2, "missing": 2, "extra": 1, "nocause": 3}, 60)
        ]
    if difficulty == "large":
        pop = Population(rng, 200, 0.3, ["3.10.13", "3.11.7", "3.11.9", "3.12.1"], coupled=3)
        b = Builder(rng, pop, difficulty, (3, 10), riders=5)
        out = []
        for k in kinds(
            {"exact": 3, "range": 3, "coupled": 3, "flaky": 3, "multiscript": 2, "missing": 1, "nocause": 3}, 60
        ):
            if k == "multiscript":
                sc = package_scenario(b, "exact", n_scripts=rng.randint(2, 4))
                sc.kind = "multiscript"
                if not sc.inner:  # raised inside the library: the same frames whichever script calls it
                    sc.inner = [
                        Frame(pop.module(sc.note) + ".api", "load", "return _impl.load(path, **kw)"),
                        Frame(pop.module(sc.note) + "._impl", "load", "raise err"),
                    ]
                _ask_from_other_script(sc, rng)
                out.append(sc)
            else:
                out.append(package_scenario(b, k))
        return pop, out
    if difficulty == "python":
        pop = Population(rng, 40, 0.1, list(_PATCH.values()))
        b = Builder(rng, pop, difficulty, (2, 8))
        return pop, [python_scenario(b) for _ in range(24 // scale)]
    if difficulty == "grouping":
        pop = Population(rng, 60, 0.15, ["3.10.13", "3.11.7", "3.12.1"])
        b = Builder(rng, pop, difficulty, (2, 8))
        out = []
        for i, k in enumerate(kinds({"exact": 4, "range": 1, "missing": 1, "nocause": 2}, 30)):
            number = rng.randint(1, 150) + 1000 * i  # distinct steps
            framework = rng.random() < 1 / 3
            exc_msg = ("RuntimeError", (lambda n: lambda env: "step %d failed" % n)(number), [])
            sc = package_scenario(b, k, framework=framework, exc_msg=exc_msg if k != "missing" else None)
            if k == "missing":
                sc.exc, sc.message = exc_msg[0], exc_msg[1]
            sc.kind = "numbered-" + k
            out.append(sc)
        generic = [
            ("KeyError", lambda env: "'id'"),
            ("TypeError", lambda env: "'NoneType' object is not subscriptable"),
            ("AttributeError", lambda env: "'NoneType' object has no attribute 'get'"),
        ]
        for exc, msg in generic:
            for k in kinds({"exact": 3, "range": 1, "nocause": 1}, 15):
                sc = package_scenario(b, k, exc_msg=(exc, msg, []))
                sc.kind = "generic-" + k
                out.append(sc)
        return pop, out
    if difficulty == "envvars":
        pop = Population(rng, 40, 0.1, ["3.10.13", "3.11.7", "3.12.1"])
        b = Builder(rng, pop, difficulty, (2, 8))
        out = []
        for k in kinds({"value": 3, "unset": 2, "exact": 1, "nocause": 1}, 21):
            out.append(envvar_scenario(b, k) if k in ("value", "unset") else package_scenario(b, k))
        return pop, out
    raise ValueError(difficulty)


def _ask_from_other_script(sc: Scenario, rng: random.Random) -> None:
    """Fix pairs were seen on the first script only; the question comes from another one."""
    paired = {run[2] for run in sc.runs if run[2] is not None}
    sc.runs = [
        (kind, env, pair, 0 if (pair is not None or i in paired) else script)
        for i, (kind, env, pair, script) in enumerate(sc.runs)
    ]
    sc.ask = (sc.ask[0], rng.randrange(1, len(sc.scripts)))


DIFFICULTIES = ("small", "large", "python", "grouping", "envvars")


###############################################################################
# The wire: what the two clients send #########################################
###############################################################################


class Wire:
    """One keep-alive connection to the server; reconnects when the server closed an idle one."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.conn = http.client.HTTPConnection(host, port, timeout=60)

    def post(self, path: str, body: dict) -> Tuple[int, dict]:
        for _attempt in range(6):
            try:
                self.conn.request("POST", path, json.dumps(body), {"Content-Type": "application/json"})
                response = self.conn.getresponse()
                raw = response.read()
            except (http.client.HTTPException, ConnectionError):
                self.conn.close()
                self.conn = http.client.HTTPConnection(self.host, self.port, timeout=60)
                continue
            if response.status == 503:
                time.sleep(float(response.getheader("Retry-After") or 1))  # the server asked to come back
                continue
            answer = json.loads(raw) if raw else {}
            if response.status >= 400:
                raise RuntimeError("%s answered %d %s to %s" % (path, response.status, answer, json.dumps(body)[:300]))
            return response.status, answer
        raise RuntimeError("%s: no answer after retries" % path)


class Fleet:
    """Sends a population's runs the way each client does, and remembers what the server was told."""

    def __init__(self, wire: Wire, pop: Population) -> None:
        self.wire, self.pop = wire, pop
        self.ts = time.time() - 5 * 86400
        self.gaps = random.Random(0)
        self.machines = 0

    def _stamp(self) -> float:
        self.ts += self.gaps.uniform(1, 90)
        return round(self.ts, 3)

    def _send_env(self, env: Env) -> None:
        self.wire.post("/env", dict(env.body(), env_hash=env.env_hash()))
        self.pop.note(env)

    def _script_id(self, script: Script, env: Env, machine: int) -> str:
        if env.client == "ours":
            return script.script_id
        # 0.4.2: sha1 over the script's start and its mtime, so each machine has its own id
        return hashlib.sha1(("%s:%d" % (script.name, machine)).encode()).hexdigest()[:12]

    def error(self, sc: Scenario, env: Env, script: Script, machine: int) -> Tuple[str, str]:
        trace, sig = _trace(script, sc, env)
        beacon = {
            "kind": "error",
            "env_hash": env.env_hash(),
            "script_id": self._script_id(script, env, machine),
            "ts": self._stamp(),
            "trace": trace,
            "error_sig": sig,
        }
        if env.client == "ours":
            beacon.update(script_name=script.name, event_id=os.urandom(16).hex(), agent="corp-error-agent/0.5.0")
        status, _ = self.wire.post("/beacon", beacon)
        if status == 204:
            self._send_env(env)
        return sig, beacon["script_id"]

    def success(self, env: Env, script: Script, machine: int, prev: Optional[Tuple[Env, str]]) -> None:
        beacon = {
            "kind": "success",
            "env_hash": env.env_hash(),
            "script_id": self._script_id(script, env, machine),
            "ts": self._stamp(),
        }
        if env.client == "ours":
            beacon.update(script_name=script.name, event_id=os.urandom(16).hex(), agent="corp-error-agent/0.5.0")
            if prev is not None:
                beacon.update(prev_env_hash=prev[0].env_hash(), prev_error_sig=prev[1])
        status, _ = self.wire.post("/beacon", beacon)
        if status == 204:  # both clients: the published 0.4.2 posts /env after any /beacon answered 204
            self._send_env(env)

    def history(self, sc: Scenario) -> None:
        sigs: Dict[int, str] = {}
        machines: Dict[int, int] = {}
        for i, (kind, env, pair, script) in enumerate(sc.runs):
            if kind == "error":
                self.machines += 1
                machines[i] = self.machines
                sigs[i] = self.error(sc, env, sc.scripts[script], self.machines)[0]
            else:
                self.machines += 1
                machine = machines[pair] if pair is not None else self.machines
                prev = (sc.runs[pair][1], sigs[pair]) if pair is not None else None
                self.success(env, sc.scripts[script], machine, prev)

    def ask(self, sc: Scenario) -> dict:
        env, script_index = sc.ask
        script = sc.scripts[script_index]
        self.machines += 1
        sig, script_id = self.error(sc, env, script, self.machines)
        request = {"error_sig": sig, "env_hash": env.env_hash()}
        if env.client == "ours":
            request["script_id"] = script_id
        return self.wire.post("/suggest", request)[1]


###############################################################################
# Ground truth: apply the printed command, ask the model ######################
###############################################################################


class Unworkable(Exception):
    """The command cannot be followed: unknown form, a version or interpreter nobody has."""


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _satisfies(version: str, clauses: List[Tuple[str, str]]) -> bool:
    key = _vkey(version)
    ops = {
        "==": key.__eq__,
        "!=": key.__ne__,
        ">=": key.__ge__,
        "<=": key.__le__,
        ">": key.__gt__,
        "<": key.__lt__,
        "~=": key.__ge__,
    }
    return all(ops[op](_vkey(v)) for op, v in clauses)


def _install(env: Env, requirement: str, pop: Population) -> None:
    match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?\s*(.*)", requirement.strip())
    if not match:
        raise Unworkable("not a requirement: %r" % requirement)
    name, spec = _canonical(match.group(1)), match.group(3).strip()
    known = sorted(pop.seen.get(name, ()), key=_vkey)
    if not known:
        raise Unworkable("no environment has %s" % name)
    if not spec:
        if name not in env.packages:
            env.packages[name] = known[-1]
        return
    clauses = re.findall(r"(==|!=|>=|<=|~=|>|<)\s*([0-9][0-9A-Za-z.*+!-]*)", spec)
    if not clauses:
        raise Unworkable("cannot read the specifier %r" % spec)
    exact = [v for op, v in clauses if op == "=="]
    if exact and exact[0] not in known:
        raise Unworkable("%s %s was never seen in the population" % (name, exact[0]))
    candidates = [v for v in known if _satisfies(v, clauses)]
    if not candidates:
        raise Unworkable("no version of %s seen satisfies %s" % (name, spec))
    env.packages[name] = candidates[-1]  # what pip picks: the newest that satisfies


def apply(command: str, env: Env, pop: Population) -> Env:
    """The environment after following ``command`` (the forms of TEAM.md), or Unworkable."""
    env = env.copy()
    parts = [p for p in re.split(r"\s*(?:;|&&|\n)\s*", (command or "").strip()) if p]
    if not parts:
        raise Unworkable("no command")
    for part in parts:
        try:
            words = shlex.split(part)
        except ValueError:
            raise Unworkable("unbalanced quotes: %r" % part) from None
        if words[:3] in (["python", "-m", "pip"], ["python3", "-m", "pip"]):
            words = ["pip"] + words[3:]
        if words[:1] in (["pip"], ["pip3"]) and len(words) > 2 and words[1] in ("install", "uninstall"):
            args = [w for w in words[2:] if not w.startswith("-")]
            if not args:
                raise Unworkable("nothing to %s" % words[1])
            for arg in args:
                if words[1] == "install":
                    _install(env, arg, pop)
                else:
                    env.packages.pop(_canonical(arg), None)
        elif words[:1] == ["export"] and len(words) == 2 and re.fullmatch(r"[A-Za-z_]\w*=.*", words[1]):
            name, value = words[1].split("=", 1)
            env.vars[name] = value
        elif words[:1] == ["unset"] and len(words) == 2:
            env.vars.pop(words[1], None)
        elif words[:2] == ["use", "Python"] and len(words) == 3:
            wanted = words[2]
            pythons = [p for p in pop.pythons if p == wanted or _minor(p) == wanted]
            if not pythons:
                raise Unworkable("no environment runs Python %s" % wanted)
            env.python = pythons[-1]
            pip, setuptools = _TOOLING[_minor(env.python)]  # a fresh venv of that interpreter
            env.packages["pip"] = pip
            if setuptools:
                env.packages["setuptools"] = setuptools
            else:
                env.packages.pop("setuptools", None)
        else:
            raise Unworkable("not a command form the agent prints: %r" % part)
    return env


@dataclass
class Outcome:
    difficulty: str
    kind: str
    has_cause: bool
    answered: bool
    right: bool
    confidence: float
    solution: str
    why: str


def oracle_answer(sc: Scenario, pop: Population) -> dict:
    """The answer of an engine that knows the model: the baseline every figure is measured against."""
    command = sc.oracle(pop) if sc.has_cause else None
    return {"match": True, "confidence": 1.0, "solution": command} if command else {"match": False}


def judge(sc: Scenario, answer: dict, pop: Population) -> Outcome:
    answered = answer.get("match") is True
    confidence = float(answer.get("confidence") or 0.0) if answered else 0.0
    solution = str(answer.get("solution") or "")
    right, why = False, ""
    if answered:
        if not sc.has_cause:
            why = "no environment cause"
        else:
            try:
                after = apply(solution, sc.ask[0], pop)
                right = not sc.fails(after)
                why = "" if right else "still fails after the command"
            except Unworkable as error:
                why = str(error)
    else:
        why = str(answer.get("reason", ""))[:160]
    return Outcome(sc.difficulty, sc.kind, sc.has_cause, answered, right, confidence, solution, why)


###############################################################################
# Metrics and report ##########################################################
###############################################################################


def ece(outcomes: List[Outcome], bins: int = 10) -> Optional[float]:
    answers = [o for o in outcomes if o.answered]
    if not answers:
        return None
    total = 0.0
    for b in range(bins):
        members = [o for o in answers if min(int(o.confidence * bins), bins - 1) == b]
        if members:
            accuracy = sum(o.right for o in members) / len(members)
            mean_conf = sum(o.confidence for o in members) / len(members)
            total += len(members) * abs(accuracy - mean_conf)
    return total / len(answers)


def metrics(outcomes: List[Outcome]) -> dict:
    cause = [o for o in outcomes if o.has_cause]
    nocause = [o for o in outcomes if not o.has_cause]
    answers = [o for o in outcomes if o.answered]
    return {
        "bugs": len(outcomes),
        "cause": len(cause),
        "right": sum(o.right for o in cause),
        "nocause": len(nocause),
        "false": sum(o.answered for o in nocause),
        "answers": len(answers),
        "wrong": sum(not o.right for o in answers),
        "ece": ece(outcomes),
    }


def _pct(num: int, den: int) -> str:
    return "%4d/%-4d %5.1f%%" % (num, den, 100.0 * num / den) if den else "%9s %6s" % ("-", "-")


def row(label: str, m: dict) -> str:
    e = "%5.1f%%" % (100 * m["ece"]) if m["ece"] is not None else "    -"
    return "  %-10s %5d  %s  %s  %s  %s" % (
        label,
        m["bugs"],
        _pct(m["right"], m["cause"]),
        _pct(m["false"], m["nocause"]),
        _pct(m["wrong"], m["answers"]),
        e,
    )


HEADER = "  %-10s %5s  %-16s  %-16s  %-16s  %s" % (
    "difficulty",
    "bugs",
    "correct@1",
    "false-suggest",
    "wrong-answers",
    "ECE",
)


# --fit (added after the generator, for bench/calibration.py; the one place this file knows the
# engine's internals): a server that answers everything with its uncalibrated posterior
_UNCALIBRATED = (
    "import runpy, corp_error_server.engine as engine; "
    "engine.MIN_CONFIDENCE, engine._CALIBRATION = 0.0, (1.0, 0.0); "
    "runpy.run_module('corp_error_server', run_name='__main__', alter_sys=True)"
)


def run_population(
    difficulty: str, seed: int, quick: bool, uncalibrated: bool = False, dump=None
) -> Tuple[List[Outcome], List[Outcome]]:
    """(the engine's outcomes, the oracle's) for one population sent to a fresh server."""
    rng = random.Random("%s-%d" % (difficulty, seed))
    pop, scenarios = build(difficulty, rng, quick)
    with tempfile.TemporaryDirectory() as tmp:
        server = ["-c", _UNCALIBRATED] if uncalibrated else ["-m", "corp_error_server"]
        proc, host, port = start([sys.executable] + server + ["--port", "0", "--db", os.path.join(tmp, "blind.db")])
        try:
            fleet = Fleet(Wire(host, port), pop)
            for sc in scenarios:
                fleet.history(sc)
            answers = [fleet.ask(sc) for sc in scenarios]
        finally:
            stop(proc)
    outcomes = [judge(sc, answer, pop) for sc, answer in zip(scenarios, answers)]
    if dump:
        for sc, answer, outcome in zip(scenarios, answers, outcomes):
            evidence = answer.get("evidence", {}) if outcome.answered else {}
            line = {
                "seed": seed,
                "difficulty": difficulty,
                "kind": sc.kind,
                "cause": sc.has_cause,
                "answered": outcome.answered,
                "right": outcome.right,
                "posterior": evidence.get("posterior"),
                "bug_share": evidence.get("bug_share"),
            }
            dump.write(json.dumps(line) + "\n")
    return outcomes, [judge(sc, oracle_answer(sc, pop), pop) for sc in scenarios]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", default="1,2,3,4,5", help="comma-separated seeds (default: 1,2,3,4,5)")
    parser.add_argument("--quick", action="store_true", help="a third of the bugs per population")
    parser.add_argument("--examples", type=int, default=2, help="wrong or missed answers shown per kind")
    parser.add_argument("--dump", help="write one JSON line per bug (for bench/calibration.py)")
    parser.add_argument("--fit", action="store_true", help="answer everything, uncalibrated (with --dump)")
    args = parser.parse_args(argv)
    dump = open(args.dump, "w") if args.dump else None
    os.environ["ERROR_AGENT_ENABLED"] = "0"  # the server process must not report to itself
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    every: List[Outcome] = []
    oracle: List[Outcome] = []
    for seed in seeds:
        print("seed %d" % seed)
        print(HEADER)
        outcomes: List[Outcome] = []
        for difficulty in DIFFICULTIES:
            found, ideal = run_population(difficulty, seed, args.quick, args.fit, dump)
            print(row(difficulty, metrics(found)), flush=True)
            oracle += ideal
            outcomes += found
        print(row("overall", metrics(outcomes)))
        every += outcomes
    if dump:
        dump.close()
    print("\nall seeds %s pooled%s" % (",".join(map(str, seeds)), " (--quick)" if args.quick else ""))
    print(HEADER)
    for difficulty in DIFFICULTIES:
        print(row(difficulty, metrics([o for o in every if o.difficulty == difficulty])))
    print(row("overall", metrics(every)))
    print("baseline: an oracle that knows each bug's model, judged the same way (the generator's self-check)")
    print(row("oracle", metrics(oracle)))
    print("\nper kind (pooled): right/bugs for causes, answered/bugs without one")
    kinds = sorted({(o.difficulty, o.kind) for o in every}, key=lambda k: (DIFFICULTIES.index(k[0]), k[1]))
    for difficulty, kind in kinds:
        group = [o for o in every if o.difficulty == difficulty and o.kind == kind]
        m = metrics(group)
        shown = _pct(m["right"], m["cause"]) if m["cause"] else "answered " + _pct(m["false"], m["nocause"])
        mean = sum(o.confidence for o in group if o.answered) / max(1, m["answers"])
        print("  %-9s %-26s %s   answers %3d, mean confidence %.2f" % (difficulty, kind, shown, m["answers"], mean))
    if args.examples:
        print("\nexamples of wrong answers and misses")
        for difficulty, kind in kinds:
            bad = [
                o
                for o in every
                if o.difficulty == difficulty
                and o.kind == kind
                and (o.answered and not o.right or not o.answered and o.has_cause)
            ]
            for o in bad[: args.examples]:
                print(
                    "  %-9s %-18s %s conf=%.2f %r: %s"
                    % (
                        difficulty,
                        kind,
                        "answer" if o.answered else "abstain",
                        o.confidence,
                        o.solution[:90],
                        o.why[:120],
                    )
                )
    bar = metrics(every)
    ok = (
        bar["cause"]
        and bar["right"] / bar["cause"] >= 0.95
        and (not bar["nocause"] or bar["false"] / bar["nocause"] <= 0.02)
        and (bar["ece"] is None or bar["ece"] <= 0.10)
    )
    print("\nbar (correct@1 >= 95%%, false suggestions <= 2%%, ECE <= 10%%): %s" % ("met" if ok else "NOT met"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
