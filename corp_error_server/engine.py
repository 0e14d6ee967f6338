"""The analysis engine: from failing-vs-succeeding environments of one bug to one command.

Pure functions. Storage keeps, per bug, how many failing and succeeding runs had each (feature,
value), the observed fixes (a failure followed by a success of the same script, ``prev_env_hash``)
and, on request, a sample of succeeding environments; the engine weighs every feature as a
hypothesis ("this feature causes the failure") against the others and against "no environment
cause" (the bug fails anywhere), and answers for the requesting environment.

The weighing is Bayesian so that it survives noise: a feature's population evidence is the Bayes
factor of "these values fail, the others work" over "values are independent of the outcome"
(Dirichlet-multinomial marginal likelihoods), its prior is one share among all features (so
two hundred features against six runs do not produce a chance winner), raised when the traceback
names the package or a standard-library module that a Python version added or removed, lowered
for packaging tools. Observed fixes multiply in a likelihood ratio each. Features whose values
split the runs identically move together and are answered together, to a combination seen
succeeding. The posterior is finally mapped through a calibration fitted on bench/engine_quality.py
(docs/engine.md), so that the printed confidence is the share of answers that are right.
"""

from __future__ import annotations

import functools
import math
import re
import shlex
import threading
from collections import OrderedDict
from typing import Any, Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple, TypeVar

import corp_error_agent

ABSENT = "<absent>"  # a package the environment does not have
UNSET = "<unset>"  # an environment variable the agent collected and found unset
MIN_CONFIDENCE = 0.95  # below this (calibrated) confidence the engine abstains (bench/calibration.py)
_MAX_VALUES = 8  # features with more distinct values than this are per-machine noise
_ALPHA = 1.0  # Dirichlet concentration per value
_NO_CAUSE_PRIOR = 0.35  # prior share of bugs that fail whatever the environment
_NO_CAUSE_STDLIB = 0.01  # the same when the asker's Python lacks the module the exception line names
# (or lacks the variable a KeyError names, _lacked_variable)
# what the traceback names (a package it runs through, a variable its line names) holds this share
# of an environment cause's prior, however many other features there are: naming is evidence about
# the bug, not one more feature among the many a large venv adds
_NAMED_SHARE = 0.5
_PYTHON_PRIOR = 3.0  # the interpreter version is a common cause: more than one package's share
# a variable collected because the team listed it (ERROR_AGENT_ENV_ALLOW) is one they suspect of
# mattering to their jobs, unlike the locale and proxy variables every agent collects
_ALLOWED_PRIOR = 3.0
_PACKAGING_TOOL = 0.1  # pip, setuptools, wheel ride along with interpreters and venvs
_STDLIB_PRIOR = 3000.0  # the traceback names a module the requester's Python lacks (or a variable, _lacked_variable)
_FLAKE = 0.1  # share of failing runs a flaky bug adds on good values, on average
_FLAKE_RUNS = 5.0  # how many runs that average is worth: each bug's share is its own
_MISS = 0.02  # share of succeeding runs on failing values (a cause rarely lets a run pass)
_FIX_NOISE = 0.12  # chance that an observed "fix" did not touch the cause (a flaky pass)
# the flaky share's Beta prior (_log_flaky)
_FLAKE_A, _FLAKE_B = _FLAKE * _FLAKE_RUNS, (1 - _FLAKE) * _FLAKE_RUNS
# one environment failing, then passing: under "f is the cause" (1 - miss) * miss on a failing
# value of f, flake * (1 - flake) on a working one (its mean under that prior); without a cause at
# most 1/2 * 1/2
_RERUN_ON_BAD = math.log((1 - _MISS) * _MISS / 0.25)
_RERUN_ON_GOOD = math.log(_FLAKE_A * _FLAKE_B / (_FLAKE_RUNS * (_FLAKE_RUNS + 1)) / 0.25)
_MAX_TOGETHER = 3  # more features than this splitting the runs alike is chance, not a cause
_PACKAGING_TOOLS = ("pkg:pip", "pkg:setuptools", "pkg:wheel")
# where the environment lives: the venv shows in its packages and interpreter, seen directly; the path
# is the user's and machine's, and its spelling the client's (ours writes the home directory as ~,
# 0.4.2 does not, and reports a success only after a failure on that machine), not configuration
_ENV_LOCATION = ("env:VIRTUAL_ENV", "env:CONDA_PREFIX")
# Platt calibration (slope, offset on the logit) of the posterior, fitted on the own generator's
# seeds 101-110 (never the seeds reported, 1-10): bench/calibration.py, docs/engine.md
_CALIBRATION = (1.91, 0.61)

Features = Dict[str, str]
Counts = Dict[str, Dict[str, Tuple[float, float]]]  # feature -> value -> (failing runs, succeeding runs)
T = TypeVar("T")

###############################################################################
# Features of one environment #################################################
###############################################################################


def canonical_name(name: str) -> str:
    """PEP 503 normalised distribution name; also turns an import name into its likely dist."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


# The agent is in the environments only as the pip-installed copy (a copied file has no distribution):
# how it was installed says nothing about a bug, and "pip uninstall" of the agent fixes nothing.
_AGENT = "corp-error-agent"


def env_features(
    packages: Mapping[str, str],
    python_ver: str,
    python_impl: str,
    os_info: str,
    machine_arch: str,
    env_vars: Mapping[str, str],
) -> Features:
    """The engine's view of one environment. Absent packages have no entry; a collected variable
    that is unset is ``UNSET``, one that was not collected has no entry (unknown, not unset)."""
    features: Features = {}
    for name, version in packages.items():
        if canonical_name(name) != _AGENT:
            features["pkg:" + canonical_name(name)] = version
    parts = python_ver.split(".")
    if python_ver:
        features["python"] = ".".join(parts[:2])
        features["python_full"] = python_ver
    if python_impl:
        features["impl"] = python_impl
    if os_info:
        # "Linux-6.1.0-...-x86_64-with-glibc2.36" -> "linux": kernel builds differ on every machine
        features["os"] = re.split(r"[-\s]", os_info.strip(), maxsplit=1)[0].lower()
    if machine_arch:
        features["arch"] = machine_arch.lower()
    for name, value in env_vars.items():
        features["env:" + name] = UNSET if value == "MISSING" else value
    return features


###############################################################################
# What the traceback says #####################################################
###############################################################################
# Where a bug is raised: the innermost frame that is not the standard library's. In a library
# (site-packages) the library is the place, whatever function: the same library bug hit from many
# scripts is one bug. In the user's code, the file and function are. Both clients send the trace
# text; our agent's signature also carries ``module.function`` frames after " @ ".

_FRAME = re.compile(r'^\s*File "([^"\n]{1,1000})", line \d+, in ([^\s]{1,200})\s*$', re.M)
_SITE = re.compile(r"[/\\](?:site|dist)-packages[/\\]([^/\\]+)")
_STDLIB_PATH = re.compile(r"[/\\]lib[/\\]python\d+(?:\.\d+)?t?[/\\]|[/\\]Lib[/\\]|^<frozen ")
_IMPORT_ERROR = re.compile(r"^(?:[\w.]*\.)?(?:modulenotfounderror|importerror)\b", re.I)


def _stem(path: str) -> str:
    name = re.split(r"[/\\]", path)[-1]
    return re.sub(r"\.pyw?$", "", name) or "?"


def _trace_frames(trace: str) -> List[Tuple[str, str]]:
    """(place, function) of each frame of the last traceback block, outermost first, stdlib left out."""
    block = trace.rsplit("Traceback (most recent call last):", 1)[-1]
    frames = []
    for path, function in _FRAME.findall(block):
        site = _SITE.search(path)
        if site and _dist_of(site.group(1)) not in STDLIB_MODULES:
            frames.append(("lib:" + _dist_of(site.group(1)), function))
        elif site:
            continue
        elif not _STDLIB_PATH.search(path):
            frames.append((_stem(path), function))
    return frames


def _signature_frames(signature: str) -> List[Tuple[str, str]]:
    """(place, function) from our agent's ``line @ inner < outer`` frames, outermost first."""
    if " @ " not in signature:
        return []
    frames = []
    for frame in signature.rsplit(" @ ", 1)[1].split(" < ")[::-1]:
        parts = frame.strip().split(".")
        if len(parts) < 2 or not parts[0] or parts[0] in STDLIB_MODULES:
            continue
        frames.append((parts[0], parts[-1]))
    return frames


def where_raised(signature: str, trace: str = "") -> str:
    """The place of the bug: ``lib:<dist>`` or ``<file>.<function>``; "" when nothing says it.

    The trace's frames win over the signature's (the trace names files, the signature modules);
    an import error is about the module it names, not the place that imports it.
    """
    message = signature.strip().splitlines()[-1] if signature.strip() else ""
    if _IMPORT_ERROR.match(message.split(" @ ")[0].strip()):
        return ""
    frames = _trace_frames(trace) if trace else []
    if not frames:
        frames = _signature_frames(signature)
    if not frames:
        return ""
    place, function = frames[-1]
    if not place.startswith("lib:"):
        return (place + "." + function)[:120].lower()
    # a library's message with numbers in it ("step 12 failed") is about the caller's data: the
    # numbers tell one caller's bug from another's; without numbers it is the library's own bug
    numbers = _message_numbers(_raw_line(trace) or message)
    return place + (" [%s]" % " ".join(numbers) if numbers else "")


def _raw_line(trace: str) -> str:
    lines = [line for line in trace.strip().splitlines() if line.strip()]
    return lines[-1] if lines and not lines[-1].startswith((" ", "\t")) else ""


def _message_numbers(line: str) -> List[str]:
    """Numbers standing alone in an exception line, outside quotes and paths (at most four)."""
    text = re.sub(r"'[^']*'|\"[^\"]*\"|\S*[/\\]\S*|0x[0-9a-fA-F]+|<n>", " ", line.split(" @ ")[0])
    return re.findall(r"(?<![\w.])\d+(?![\w.])", text)[:4]


def places_match(where: str, signature: str) -> bool:
    """Whether our agent's signature frames fit a place computed from a trace (for /suggest)."""
    where = where.split(" [")[0]
    for place, function in _signature_frames(signature):
        if where in ("lib:" + _dist_of(place), (place + "." + function).lower()) or (
            place == "__main__" and where.endswith("." + function.lower())
        ):
            return True
    return False


_MENTION_PATTERNS = (
    re.compile(r"(?:from|module|named) '([A-Za-z_][\w.]*)'"),
    re.compile(r"[/\\](?:site|dist)-packages[/\\]([A-Za-z_][\w.-]*)"),
    re.compile(r"(?:^|[\s<(])([A-Za-z_]\w*)(?:\.\w+)+\.[\w<>]+(?= |$| <)"),  # our signature's frames
)
_IMPORT_TO_DIST = {
    "yaml": "pyyaml",
    "pil": "pillow",
    "sklearn": "scikit-learn",
    "cv2": "opencv-python",
    "bs4": "beautifulsoup4",
    "dateutil": "python-dateutil",
    "attr": "attrs",
    "jwt": "pyjwt",
    "dotenv": "python-dotenv",
    "magic": "python-magic",
    "serial": "pyserial",
    "usb": "pyusb",
    "crypto": "pycryptodome",
    "google": "protobuf",
    "pkg-resources": "setuptools",
    "git": "gitpython",
}


def _dist_of(module: str) -> str:
    top = module.split(".")[0]
    top = re.sub(r"-\d.*$", "", top)  # "pkg-1.0.dist-info" -> "pkg"
    top = re.sub(r"\.(?:dist-info|egg-info|py)$", "", top)
    name = canonical_name(top)
    return _IMPORT_TO_DIST.get(name, name)


def mentioned_packages(text: str) -> Set[str]:
    """Canonical distribution names the traceback or signature names (modules, site-packages paths)."""
    found: Set[str] = set()
    for pattern in _MENTION_PATTERNS:
        for match in pattern.finditer(text):
            name = _dist_of(match.group(1))
            if name and name not in ("main", "builtins", "-main-"):
                found.add(name)
    return found


# Standard-library modules a Python version added or removed. 3.10-3.13 are what
# sys.stdlib_module_names of those interpreters differ by (tests/server/test_engine.py checks the
# table against every interpreter under pyenv); 3.9's additions and the 3.10 collections aliases
# are from the "What's New" pages (3.8 and 3.9 have no stdlib_module_names).
STDLIB_ADDED = {"zoneinfo": (3, 9), "graphlib": (3, 9), "tomllib": (3, 11)}
STDLIB_REMOVED = dict(
    [("binhex", (3, 11))]
    + [(name, (3, 12)) for name in ("asynchat", "asyncore", "distutils", "imp", "smtpd")]
    + [
        (name, (3, 13))
        for name in (
            "aifc",
            "audioop",
            "cgi",
            "cgitb",
            "chunk",
            "crypt",
            "imghdr",
            "lib2to3",
            "mailcap",
            "msilib",
            "nis",
            "nntplib",
            "ossaudiodev",
            "pipes",
            "sndhdr",
            "spwd",
            "sunau",
            "telnetlib",
            "uu",
            "xdrlib",
        )
    ]
)
_COLLECTIONS_ABCS = (
    "awaitable",
    "coroutine",
    "asynciterable",
    "asynciterator",
    "asyncgenerator",
    "hashable",
    "iterable",
    "iterator",
    "generator",
    "reversible",
    "sized",
    "container",
    "callable",
    "collection",
    "set",
    "mutableset",
    "mapping",
    "mutablemapping",
    "mappingview",
    "keysview",
    "itemsview",
    "valuesview",
    "sequence",
    "mutablesequence",
    "bytestring",
)
STDLIB_MODULES = frozenset(
    "abc argparse ast asyncio base64 bdb binascii bisect builtins bz2 calendar cmd codecs collections "
    "concurrent configparser contextlib contextvars copy copyreg csv ctypes dataclasses datetime decimal difflib "
    "dis email encodings enum errno faulthandler fnmatch fractions functools gc getopt getpass gettext glob gzip "
    "hashlib heapq hmac html http importlib inspect io ipaddress itertools json keyword linecache locale logging "
    "lzma mailbox marshal math mimetypes multiprocessing numbers operator optparse os pathlib pdb pickle pkgutil "
    "platform plistlib posixpath pprint queue random re reprlib runpy sched secrets select selectors shelve shlex "
    "shutil signal site socket socketserver sqlite3 ssl stat statistics string struct subprocess symtable sys "
    "sysconfig tarfile tempfile textwrap threading time timeit token tokenize tomllib trace traceback types typing "
    "unicodedata unittest urllib uuid venv warnings weakref wsgiref xml xmlrpc zipfile zipimport zlib "
    "zoneinfo".split()
    + list(STDLIB_ADDED)
    + list(STDLIB_REMOVED)
)


def python_requirement(message: str) -> Optional[Tuple[str, Tuple[int, int]]]:
    """("min" or "max", version) when the exception line names a stdlib module of some versions only.

    ("min", 3.11): needs 3.11 or newer; ("max", 3.12): needs older than 3.12.
    """
    text = message.lower()
    named = re.search(r"no module named '([\w.]+)'", text)
    if named:
        top = named.group(1).split(".")[0]
        if top in STDLIB_ADDED:
            return "min", STDLIB_ADDED[top]
        if top in STDLIB_REMOVED:
            return "max", STDLIB_REMOVED[top]
    abc = re.search(
        r"cannot import name '(\w+)' from 'collections'|module 'collections' has no attribute '(\w+)'", text
    )
    if abc and (abc.group(1) or abc.group(2)) in _COLLECTIONS_ABCS:
        return "max", (3, 10)
    return None


###############################################################################
# Statistics ##################################################################
###############################################################################


def _log_dm(counts: Sequence[float], alpha: float = _ALPHA) -> float:
    """Log marginal likelihood of category counts under a symmetric Dirichlet prior."""
    if not counts:
        return 0.0
    total = sum(counts)
    k = len(counts)
    return (
        math.lgamma(k * alpha)
        - math.lgamma(k * alpha + total)
        + sum(math.lgamma(alpha + c) - math.lgamma(alpha) for c in counts)
    )


def _log_beta(a: float, b: float) -> float:
    return math.lgamma(a) + math.lgamma(b) - math.lgamma(a + b)


def _log_flaky(on_good: float, on_bad: float) -> float:
    """Log likelihood that these many failing runs fell on good and on bad values, the flaky share
    being each bug's own (a network blip here, a race there): a Beta prior of mean _FLAKE, worth
    _FLAKE_RUNS runs, integrated out."""
    return _log_beta(on_good + _FLAKE_A, on_bad + _FLAKE_B) - _log_beta(_FLAKE_A, _FLAKE_B)


def _log_partition_bf(values: Mapping[str, Tuple[float, float]], bad: Sequence[str], choices: int) -> float:
    """ "These values fail, the others work" (a few flaky failures, fewer successes on failing
    values), over "values are independent of the outcome"; less the choice of the partition.

    With no value leaning to success the only such hypothesis is "every value fails": each success
    is then one of the rare passes on a failing value, so a feature that did not vary between
    failing and succeeding runs is refuted rather than left at even odds.
    """
    fails_bad = [values[v][0] for v in values if v in bad]
    oks_bad = [values[v][1] for v in values if v in bad]
    fails_good = [values[v][0] for v in values if v not in bad]
    oks_good = [values[v][1] for v in values if v not in bad]
    if not fails_bad or not sum(oks_good) + sum(oks_bad):
        return 0.0  # a feature seen in failing runs only says nothing yet
    log_ml1 = (
        _log_dm(fails_bad)
        + _log_dm(oks_good)
        + _log_dm(oks_bad)
        + _log_dm(fails_good)
        + _log_flaky(sum(fails_good), sum(fails_bad))
        + sum(oks_bad) * math.log(_MISS)
        + sum(oks_good) * math.log(1 - _MISS)
    )
    log_ml0 = _log_dm([a + b for a, b in values.values()])
    return log_ml1 - log_ml0 - math.log(max(choices, 1))


def with_absent(values: Mapping[str, Tuple[float, float]], fails: float, oks: float) -> Dict[str, Tuple[float, float]]:
    """Runs that had no value for a package had it absent: derived, so storage never enumerates."""
    full = dict(values)
    missing_fails = fails - sum(a for a, _ in values.values())
    missing_oks = oks - sum(b for _, b in values.values())
    if missing_fails > 1e-9 or missing_oks > 1e-9:
        full[ABSENT] = (max(missing_fails, 0.0), max(missing_oks, 0.0))
    return full


@functools.lru_cache(maxsize=8192)
def version_key(value: str) -> Optional[Tuple[int, ...]]:
    """A release's numbers for ordering ("1.26.4" -> (1, 26, 4)); None for what is no version."""
    if value in (ABSENT, UNSET) or not re.match(r"^v?\d", value):
        return None
    return tuple(int(n) for n in re.findall(r"\d+", value)[:4])


class Separation(NamedTuple):
    feature: str
    log_bf: float
    bad: Tuple[str, ...]  # failure-leaning values
    good: Tuple[str, ...]  # success-leaning values, best supported first
    values: Dict[str, Tuple[float, float]]
    range_from: str  # the oldest version seen failing when every newer one fails too ("" if not)


def _table(feature: str, group: GroupData, scale: float) -> Dict[str, Tuple[float, float]]:
    raw = {v: (a * scale, float(b)) for v, (a, b) in group.counts.get(feature, {}).items()}
    return with_absent(raw, group.fails * scale, float(group.oks)) if feature.startswith("pkg:") else raw


def _leaning(values: Mapping[str, Tuple[float, float]]) -> Tuple[List[str], List[str]]:
    """(failure-leaning, success-leaning) values. A value leans to success when its share of the
    succeeding runs is above its share of the failing runs (shares, not counts: a script fails many
    times and reports one success)."""
    fails = sum(a for a, _ in values.values()) or 1.0
    oks = sum(b for _, b in values.values()) or 1.0
    bad, good = [], []
    for value, (a, b) in values.items():
        if b / oks > a / fails:
            good.append(value)
        elif a:
            bad.append(value)
    return bad, good


def separation(feature: str, values: Mapping[str, Tuple[float, float]], named: bool = False) -> Separation:
    """How the feature's values split failing from succeeding runs (_leaning)."""
    bad, good = _leaning(values)
    # best good value: the purest, then the best supported, then the newest
    good.sort(key=lambda v: (values[v][0] > 0, -values[v][1], tuple(-n for n in version_key(v) or ())))
    range_from = _failing_range(values, good, bad)
    # the hypotheses: any split of the values into failing and working ones, or -- for versions --
    # "every version from X on fails", one of only len(values) - 1 thresholds, or -- for what the
    # exception line names (`No module named 'x'`, `KeyError: 'DATA_DIR'`) -- "without it, it
    # fails" / "with it, it fails", one of two
    missing = [[ABSENT], [UNSET]]
    if named and (list(bad) in missing or list(good) in missing):
        choices = 2
    elif range_from:
        choices = 2 * (len(values) - 1)
    else:
        choices = 2 ** len(values) - 2
    log_bf = _log_partition_bf(values, bad, choices if good else 1)
    return Separation(feature, log_bf, tuple(sorted(bad)), tuple(good), dict(values), range_from)


def _failing_range(values: Mapping[str, Tuple[float, float]], good: Sequence[str], bad: Sequence[str]) -> str:
    """The start of a version range that fails: every version seen from it on failed, all below worked."""
    if any(values[v][1] for v in bad):
        return ""
    keyed_good = [version_key(v) for v in good]
    keyed_bad = [(version_key(v), v) for v in bad]
    known_good = [k for k in keyed_good if k is not None]
    known_bad = [(k, v) for k, v in keyed_bad if k is not None]
    if not known_bad or len(known_good) != len(keyed_good) or len(known_bad) != len(keyed_bad):
        return ""
    lowest_key, lowest = min(known_bad)
    return lowest if not known_good or max(known_good) < lowest_key else ""


###############################################################################
# Hypotheses ##################################################################
###############################################################################


class FixPair(NamedTuple):
    failing: Features
    fixed: Features


def _pair_diff(pair: FixPair) -> Dict[str, Tuple[str, str]]:
    """What a fix changed; an env var only when both runs collected it, the interpreter once."""
    failing, fixed = pair.failing, pair.fixed
    diff = {}
    for key, before in failing.items():
        after = fixed.get(key, ABSENT)
        if after != before and key != "python_full" and (after is not ABSENT or not key.startswith("env:")):
            diff[key] = (before, after)
    for key, after in fixed.items():
        if key not in failing and key != "python_full" and not key.startswith("env:"):
            diff[key] = (ABSENT, after)
    return diff


def _pair_evidence(
    pairs: Sequence[FixPair], universe: int, env_vars: Set[str], failing_values: Callable[[], Dict[str, Set[str]]]
) -> Tuple[Dict[str, float], float, Dict[str, Dict[str, int]]]:
    """Per feature: log likelihood ratio of the observed fixes, and the values fixes moved it to.

    Under "feature f is the cause" a fix changes f (unless it was a flaky pass); under "no cause"
    a fix changes f as often as a random feature of an environment that changed |diff| of them.
    A fix that left f alone counts against f; one whose runs did not both collect an env var says
    nothing about it. A fix that changed nothing visible (a pass of the failing environment itself)
    is one environment failing and passing: under "f is the cause" a rare pass on a failing value
    of f, or a flaky failure on a working one; without a cause, a coin (_RERUN_ON_*).
    Returns (log LR of the features some fix changed or could not see, log LR of every other
    feature, moved_to).
    """
    log_lr: Dict[str, float] = {}
    moved_to: Dict[str, Dict[str, int]] = {}
    missed = 0.0  # what every feature pays for the fixes that left it alone, taken back where it changed
    for pair in pairs:
        diff = _pair_diff(pair)
        chance = min(0.5, max(len(diff), 1) / max(universe, 2))
        miss = math.log(_FIX_NOISE / (1 - chance))
        if not diff:
            for feature, bad in failing_values().items():
                value = pair.failing.get(feature, ABSENT if feature.startswith("pkg:") else None)
                if feature.startswith("env:") and feature not in pair.fixed:
                    value = None
                if value is not None:  # (an env var either run did not collect has no value: nothing said)
                    log_lr[feature] = log_lr.get(feature, 0.0) + (_RERUN_ON_BAD if value in bad else _RERUN_ON_GOOD)
            continue
        missed += miss
        hit = math.log((1 - _FIX_NOISE) / chance) - miss
        for feature, (_, after) in diff.items():
            log_lr[feature] = log_lr.get(feature, 0.0) + hit
            target = moved_to.setdefault(feature, {})
            target[after] = target.get(after, 0) + 1
        for feature in env_vars:
            if feature not in pair.failing or feature not in pair.fixed:
                log_lr[feature] = log_lr.get(feature, 0.0) - miss
    return {feature: value + missed for feature, value in log_lr.items()}, missed, moved_to


class _Hypothesis(NamedTuple):
    feature: str
    log_weight: float  # log prior + log evidence
    sep: Separation
    target: str
    relevance: float  # how surely the requester has a failing value of the feature
    fixes: int
    mentioned: bool
    note: str


def _named(feature: str, mentions: Set[str], message: str) -> bool:
    if feature.startswith("pkg:"):
        return feature[4:] in mentions
    return feature.startswith("env:") and feature[4:].lower() in message  # "APP_MODE 'prod' is not supported"


def _prior(feature: str, python_need) -> float:
    """The prior weight of a feature the traceback does not name, against 1 for a package."""
    if feature in _PACKAGING_TOOLS or feature in _ENV_LOCATION:
        return _PACKAGING_TOOL
    if feature.startswith("env:") and feature[4:] not in corp_error_agent.ENV_ALLOW:
        return _ALLOWED_PRIOR
    if feature == "python":
        return _STDLIB_PRIOR if python_need else _PYTHON_PRIOR
    return 1.0


_KEY_ERROR = re.compile(r"^keyerror: '(\w+)'$")


def _lacked_variable(group: GroupData) -> str:
    """The variable (``env:NAME``) of an exception line ``KeyError: 'NAME'`` when every failing run
    that collected NAME had it unset: the environment demonstrably lacks what the line says is
    missing, as an interpreter lacks a module (os.environ raises exactly this). When no failing run
    collected it, the line is all that speaks of them, and it says the variable was missing. ""
    otherwise."""
    named = _KEY_ERROR.match(group.message)
    if not named:
        return ""
    feature = next((f for f in group.counts if f.startswith("env:") and f[4:].lower() == named.group(1)), "")
    values = group.counts.get(feature, {})
    failing = {value for value, (fails, _) in values.items() if fails > 0}
    return feature if feature and failing <= {UNSET} else ""


def _satisfies(need, version: str) -> bool:
    key = version_key(version)
    if key is None:
        return False
    return key[:2] >= need[1] if need[0] == "min" else key[:2] < need[1]


def _python_target(need, sep: Optional[Separation], current: str) -> Tuple[str, float]:
    """A Python version that satisfies the standard-library requirement, seen succeeding if possible."""
    kind, version = need
    ok = (lambda v: v >= version) if kind == "min" else (lambda v: v < version)
    have = version_key(current)
    if have is not None and ok(have[:2]):
        return "", 0.0  # the requester's Python has the module: another cause
    seen = [v for v in (sep.good if sep else ()) if version_key(v) and ok(version_key(v)[:2])]  # type: ignore
    if seen:
        return (min(seen, key=version_key) if kind == "min" else max(seen, key=version_key)), 1.0  # type: ignore
    fallback = version if kind == "min" else (version[0], version[1] - 1)
    return "%d.%d" % fallback, 1.0


def _choose_target(sep: Separation, current: str, moved_to: Mapping[str, int]) -> Tuple[str, float]:
    """The value to move to and how surely the requester has a failing value now."""
    values = sep.values
    if current in sep.good:
        return "", 0.0
    candidates = [v for v in sep.good if v != current]
    if sep.range_from and candidates:
        # a version range fails: the newest version below it that was seen succeeding
        target = max(candidates, key=lambda v: version_key(v) or ())
    else:
        fixed = sorted((n, v) for v, n in moved_to.items() if v in sep.good or v not in values)
        target = fixed[-1][1] if fixed else (candidates[0] if candidates else "")
    if not target:
        return "", 0.0
    if current in sep.bad:
        relevance = 1.0
    elif sep.range_from and version_key(current) is not None and version_key(current) >= version_key(sep.range_from):  # type: ignore[operator]
        relevance = 1.0  # a version never seen, inside the failing range
    elif current == "" and sep.feature.startswith("env:"):
        # the requester's agent did not collect the variable: as likely failing as the runs that did
        fails_bad = sum(values[v][0] for v in sep.bad)
        relevance = fails_bad / (sum(a for a, _ in values.values()) or 1.0)
    else:
        relevance = 0.3  # a value never seen: it may fail, it may not
    return target, relevance


# What _hypotheses derives from a group alone, kept per group object: the server keeps one GroupData
# per revision of a group and asks about it for many environments. Keyed by identity (a GroupData is
# never changed once built), the object held so that its id is not reused while kept.
# The least recently asked go first, one at a time (letting go of many at once is a pause). A group
# of a few runs is analysed about as fast as it is found here, and keeping thousands of them (a list
# page's worth at a time) costs the garbage collector more than it saves.
_KEPT: OrderedDict[int, Tuple[GroupData, Dict[object, Any]]] = OrderedDict()
_KEPT_GROUPS = 256
_KEPT_MIN_RUNS = 100
_KEPT_LOCK = threading.Lock()


def _kept(group: GroupData, part: object, compute: Callable[[], T]) -> T:
    if group.fails + group.oks < _KEPT_MIN_RUNS:
        return compute()
    with _KEPT_LOCK:  # requests run in threads: an entry must not go between finding and moving it
        entry = _KEPT.get(id(group))
        if entry is None or entry[0] is not group:
            entry = _KEPT[id(group)] = (group, {})
            while len(_KEPT) > _KEPT_GROUPS:
                _KEPT.popitem(last=False)
        else:
            _KEPT.move_to_end(id(group))
    parts = entry[1]
    if part not in parts:  # two threads at once may both compute it: the same value
        parts[part] = compute()
    return parts[part]


def _hypotheses(group: GroupData, requester: Features) -> Tuple[List[_Hypothesis], float]:
    scale = group.fail_envs / group.fails if group.fail_envs and group.fails else 1.0
    python_need = python_requirement(group.message)
    pythons = group.counts.get("python", {})
    if python_need and any(a > 0 and _satisfies(python_need, v) for v, (a, _) in pythons.items()):
        python_need = None  # it also fails on Pythons that have the module: something else is missing
    universe = max(len(requester), 1)
    env_vars = {feature for feature in group.counts if feature.startswith("env:")}
    lacked = _lacked_variable(group)

    def leaning() -> Dict[str, Set[str]]:
        """Per feature, its failure-leaning values."""
        return {feature: set(_leaning(_table(feature, group, scale))[0]) for feature in group.counts}

    def failing_values() -> Dict[str, Set[str]]:
        return _kept(group, "failing values", leaning)  # the same whatever the universe

    log_lr, log_lr_unchanged, moved_to = _kept(
        group, universe, lambda: _pair_evidence(group.pairs, universe, env_vars, failing_values)
    )

    def separations() -> Tuple[Dict[str, Separation], Dict[str, float]]:
        features = set(group.counts) | set(moved_to)  # (the features fixes moved: the same whatever the universe)
        if python_need:
            features.add("python")
        features.discard("python_full")
        named = {f for f in features if _named(f, group.mentions, group.message)}
        seps: Dict[str, Separation] = {}
        for feature in features:
            sep = separation(feature, _table(feature, group, scale), feature in named)
            if len(sep.values) > _MAX_VALUES and not sep.range_from and feature not in moved_to:
                continue
            seps[feature] = sep
        # every feature is a hypothesis: its prior share, whatever it shows; the named half is of the
        # ordinary features' (an interpreter lacking the module the line names stays the cause, and so
        # does a variable the line names that the failing runs lacked)
        priors = {f: _prior(f, python_need) for f in seps if f not in named}
        ordinary = sum(w for f, w in priors.items() if not (f == "python" and python_need)) or 1.0
        kept_named = [f for f in seps if f in named and f != lacked]
        priors.update((f, _NAMED_SHARE / (1 - _NAMED_SHARE) * ordinary / len(kept_named)) for f in kept_named)
        if lacked in seps:
            priors[lacked] = _STDLIB_PRIOR
        return seps, priors

    seps, priors = _kept(group, "separations", separations)
    total_prior = sum(priors.values()) or 1.0
    lacks_module = bool(python_need and _python_target(python_need, None, requester.get("python", ""))[0])
    lacks_variable = bool(lacked) and requester.get(lacked, UNSET) == UNSET
    no_cause = _NO_CAUSE_STDLIB if lacks_module or lacks_variable else _NO_CAUSE_PRIOR
    hypotheses = []
    for feature, sep in seps.items():
        current = requester.get(feature, ABSENT if feature.startswith("pkg:") else "")
        if feature == "python" and python_need:
            target, relevance = _python_target(python_need, sep, current)
            note = "the traceback names a standard-library module of Python %s %d.%d" % (
                ("from" if python_need[0] == "min" else "before"),
                python_need[1][0],
                python_need[1][1],
            )
        else:
            target, relevance = _choose_target(sep, current, moved_to.get(feature, {}))
            note = ""
        log_weight = (
            math.log((1 - no_cause) * priors[feature] / total_prior)
            + sep.log_bf
            + log_lr.get(feature, log_lr_unchanged)
        )
        if feature == lacked and target and current in ("", UNSET):
            relevance = 1.0  # the line says the asker lacks it, collected or not
        if not target:
            relevance = 0.0
        hypotheses.append(
            _Hypothesis(
                feature,
                log_weight,
                sep,
                target,
                relevance,
                moved_to.get(feature, {}).get(target, 0),
                feature[4:] in group.mentions,
                note,
            )
        )
    return hypotheses, math.log(no_cause)


def _posteriors(hypotheses: Sequence[_Hypothesis], log_none: float) -> List[float]:
    top = max([log_none] + [h.log_weight for h in hypotheses])
    norm = math.exp(log_none - top) + sum(math.exp(h.log_weight - top) for h in hypotheses)
    return [math.exp(h.log_weight - top) / norm for h in hypotheses]


def _moves_together(a: Separation, b: Separation) -> bool:
    """Same split of the runs: nothing in the population tells these two features apart."""

    def split(sep: Separation) -> Tuple[float, float, float, float]:
        bad = [sep.values[v] for v in sep.bad]
        good = [sep.values[v] for v in sep.good]
        return (
            round(sum(x for x, _ in bad), 6),
            round(sum(y for _, y in bad), 6),
            round(sum(x for x, _ in good), 6),
            round(sum(y for _, y in good), 6),
        )

    return bool(a.bad and b.bad) and split(a) == split(b)


def calibrate(posterior: float) -> float:
    """The posterior mapped to the observed share of right answers (fitted; docs/engine.md)."""
    p = min(max(posterior, 1e-6), 1 - 1e-6)
    slope, offset = _CALIBRATION
    return 1 / (1 + math.exp(-(slope * math.log(p / (1 - p)) + offset)))


###############################################################################
# Words and commands ##########################################################
###############################################################################


def _label(feature: str) -> str:
    kind, _, name = feature.partition(":")
    return {"pkg": name, "env": name}.get(kind) or {
        "python": "Python",
        "python_full": "Python",
        "impl": "implementation",
        "os": "OS",
        "arch": "arch",
    }[kind]


def _with(feature: str, value: str) -> str:
    if value == ABSENT:
        return "without " + _label(feature)
    if value in (UNSET, ""):
        return "with unset " + _label(feature)
    return "with " + _label(feature) + " " + value


def command(feature: str, target: str) -> str:
    """The concrete command that moves an environment to the success-associated value."""
    kind, _, name = feature.partition(":")
    if kind == "pkg":
        return "pip uninstall " + name if target == ABSENT else 'pip install "%s==%s"' % (name, target)
    if kind == "env":
        return "unset " + name if target in (ABSENT, UNSET) else "export %s=%s" % (name, shlex.quote(target))
    if kind in ("python", "python_full"):
        return "use Python " + target
    return {"impl": "use %s", "os": "run on %s", "arch": "run on %s"}[kind] % target


def _joined_command(moves: Sequence[Tuple[str, str]]) -> str:
    installs = [(f, t) for f, t in moves if f.startswith("pkg:") and t != ABSENT]
    others = [command(f, t) for f, t in moves if (f, t) not in installs]
    if len(installs) > 1:
        others.append("pip install " + " ".join('"%s==%s"' % (f[4:], t) for f, t in installs))
    else:
        others.extend(command(f, t) for f, t in installs)
    return "; ".join(others)


def _value_text(feature: str, value: str) -> str:
    if value == ABSENT:
        return "no " + _label(feature)
    if value in (UNSET, ""):
        return ("unset " if value else "uncollected ") + _label(feature)
    return _label(feature) + " " + value


def _evidence_phrase(h: _Hypothesis, current: str) -> str:
    parts = []
    values = h.sep.values
    a, b = values.get(current, (0, 0))
    if a + b:
        parts.append("fails in %s/%s environments %s" % (_n(a), _n(a + b), _with(h.feature, current)))
    a, b = values.get(h.target, (0, 0))
    if a + b:
        target = {ABSENT: "without it", UNSET: "with it unset"}.get(h.target, "with " + h.target)
        parts.append("succeeds in %s/%s %s" % (_n(b), _n(a + b), target))
    if h.fixes:
        parts.append("%d observed fix%s" % (h.fixes, "" if h.fixes == 1 else "es"))
    if h.sep.range_from and (len(h.sep.bad) > 1 or current not in values):
        failing = sorted(h.sep.bad, key=lambda v: version_key(v) or ())
        parts.append("every version seen from %s on fails (%s)" % (h.sep.range_from, ", ".join(failing[:6])))
    if h.note:
        parts.append(h.note)
    return "; ".join(parts)


def _n(x: float) -> str:
    return "%d" % round(x)


###############################################################################
# Entry point #################################################################
###############################################################################


def _no_envs() -> List[Features]:
    return []


class GroupData(NamedTuple):
    fails: int
    oks: int
    counts: Counts
    mentions: Set[str]
    pairs: List[FixPair]
    message: str = ""  # the bug's normalised exception line
    fail_envs: int = 0  # distinct failing environments (0: unknown)
    good_envs: Callable[[], List[Features]] = _no_envs  # a sample of succeeding environments, on demand


def _seen_combination(
    moves: List[Tuple[str, str]], seps: Mapping[str, Separation], group: GroupData
) -> Optional[List[Tuple[str, str]]]:
    """Targets for features that move together, as one succeeding environment had them."""
    if all(len([v for v in seps[f].good if seps[f].values[v][0] == 0]) <= 1 for f, _ in moves):
        return moves  # each has one clean success value: every succeeding run had exactly these
    envs = [pair.fixed for pair in group.pairs] + group.good_envs()
    tally: Dict[Tuple[str, ...], int] = {}
    for env in envs:
        combo = tuple(env.get(f, ABSENT if f.startswith("pkg:") else "") for f, _ in moves)
        if all(v in seps[f].good for (f, _), v in zip(moves, combo)):
            tally[combo] = tally.get(combo, 0) + 1
    if not tally:
        return None
    best = max(tally.items(), key=lambda kv: (kv[1], kv[0]))[0]
    return [(f, v) for (f, _), v in zip(moves, best)]


def suggest(group: GroupData, requester: Optional[Features]) -> dict:
    """The /suggest answer for a requesting environment (``{"match": False}`` when abstaining)."""
    if requester is None:
        return {"match": False, "reason": "unknown environment"}
    if not group.fails:
        return {"match": False, "reason": "no failing runs of this error yet"}
    hypotheses, log_none = _hypotheses(group, requester)
    if not hypotheses:
        return {"match": False, "reason": "no feature separates failing from succeeding runs"}
    posterior = dict(zip((h.feature for h in hypotheses), _posteriors(hypotheses, log_none)))
    ranked = sorted(hypotheses, key=lambda h: (-posterior[h.feature], h.feature))
    best = ranked[0]
    if best.relevance == 0.0 and calibrate(posterior[best.feature]) >= MIN_CONFIDENCE and best.sep.good:
        return {
            "match": False,
            "reason": "requesting environment already has the success value of %s" % _label(best.feature),
        }
    seps = {h.feature: h.sep for h in hypotheses}
    # an interpreter change brings its own venv: what moved with it is no second cause
    together = [
        h
        for h in ranked
        if h is best
        or (
            best.feature != "python"
            and h.relevance > 0
            and h.target
            and _moves_together(best.sep, h.sep)
            and (h.feature not in _PACKAGING_TOOLS or h.mentioned)
        )
    ]
    # the cause: the best hypothesis and, when nothing tells them apart, those that move with it;
    # the command moves all that moved with it, so it works whichever of them is the cause
    named = [h for h in together if abs(h.log_weight - best.log_weight) < 1e-6]
    share = sum(posterior[h.feature] for h in together)
    raw = share * best.relevance
    confidence = calibrate(raw)
    if confidence < MIN_CONFIDENCE or not best.target:
        return {"match": False, "reason": "no feature separates failing from succeeding runs"}
    # the trace naming the best says which is the cause, however many moved with it; the command
    # still moves them all to a combination seen succeeding, as nothing says they are not needed
    if len(together) > _MAX_TOGETHER and not best.mentioned:
        return {
            "match": False,
            "reason": "%d features split the runs alike: too few runs to tell a cause from chance" % len(together),
        }
    moves = [(h.feature, h.target) for h in together]
    if len(moves) > 1:
        combination = _seen_combination(moves, seps, group)
        if combination is None:
            return {
                "match": False,
                "reason": "%s move together and no succeeding environment had them all "
                "at success values" % " and ".join(_label(f) for f, _ in moves),
            }
        moves = combination
    targets = dict(moves)
    shown = [h._replace(target=targets[h.feature]) for h in together]
    solution = _joined_command(moves)
    current = {h.feature: requester.get(h.feature, ABSENT if h.feature.startswith("pkg:") else "") for h in shown}
    hint = " and ".join(
        "%s -> %s"
        % (_value_text(h.feature, current[h.feature]), {ABSENT: "none", UNSET: "unset"}.get(h.target, h.target))
        for h in shown
    )
    hint += ": " + " / ".join(_evidence_phrase(h, current[h.feature]) for h in shown)
    if len(named) > 1:
        hint += "; these changed together, either may be the cause"
    elif len(shown) > 1:
        hint += "; %s moved with it in every run" % " and ".join(_label(h.feature) for h in shown[1:])
    docs = (
        "https://pypi.org/project/%s/%s/" % (best.feature[4:], targets[best.feature])
        if len(shown) == 1 and best.feature.startswith("pkg:") and best.target != ABSENT
        else ""
    )
    return {
        "match": True,
        "confidence": round(confidence, 3),
        "hint": hint,
        "solution": solution,
        "recommendation": hint,
        "docs": docs,
        "evidence": {
            "failing_runs": group.fails,
            "succeeding_runs": group.oks,
            "observed_fixes": sum(1 for pair in group.pairs if pair.failing != pair.fixed),
            "posterior": round(raw, 4),
            "candidates": [_candidate_evidence(h, current[h.feature], posterior[h.feature]) for h in shown],
        },
    }


# A 0.4.2 client asks while its beacon may still be on the way and sends no script id: when
# several groups share its exception line ("KeyError: 'id'") and none holds a run of its
# environment, only that environment tells which bug it hit. Each group is weighed by how well
# the environment fits its failing runs, feature by feature, each group's shares shrunk towards
# those of all the groups' runs (a handful of runs would otherwise make chance differences look
# like a fingerprint), against "a bug none of them holds" (a Chinese restaurant process: one
# pseudo-environment against each group's failing ones). The answer is the likeliest group's,
# its confidence that group's share times its own.

MAX_CANDIDATES = 64  # the busiest groups of one line that an undecided asker is weighed against
_NEW_BUG = 1.0  # prior weight of "none of these groups", against one per failing environment
_SHRINK = 4.0  # pseudo-runs drawn from all groups' shares, added to each group's failing runs


def _fit_table(group: GroupData) -> Dict[str, Tuple[float, float, Dict[str, Tuple[float, float]]]]:
    """Per feature: (failing runs, all runs, per value (failing, all)) over the runs that had one,
    failing runs counted per environment; a package's absence is its own value."""
    scale = group.fail_envs / group.fails if group.fail_envs and group.fails else 1.0
    table: Dict[str, Tuple[float, float, Dict[str, Tuple[float, float]]]] = {}
    for feature, values in group.counts.items():
        if feature in _ENV_LOCATION:  # the user's and machine's path: every asker's is new
            continue
        per = {v: (max(a, 0) * scale, max(a, 0) * scale + max(b, 0)) for v, (a, b) in values.items()}
        if feature.startswith("pkg:"):
            fails, runs = max(group.fails, 0) * scale, max(group.fails, 0) * scale + max(group.oks, 0)
            absent = (fails - sum(x for x, _ in per.values()), runs - sum(y for _, y in per.values()))
            if absent[1] > 1e-9:
                per[ABSENT] = (max(absent[0], 0.0), absent[1])
        else:
            fails, runs = sum(x for x, _ in per.values()), sum(y for _, y in per.values())
        table[feature] = (fails, runs, per)
    return table


def _membership(groups: Sequence[GroupData], requester: Features) -> List[float]:
    """Per group, the probability that the requester's failure is that group's bug."""
    tables = [_kept(group, "fit", functools.partial(_fit_table, group)) for group in groups]
    # runs of a group that never had a package had it absent: (failing, all) of them
    without: List[Tuple[float, float]] = []
    for group in groups:
        fails = float(group.fail_envs or group.fails)
        without.append((fails, fails + group.oks))
    # a package only the requester has is one more way it is unlike every group's failing runs; a
    # variable's value none of their runs had is as likely one machine's as another bug's: skipped
    features = set().union(*tables) | {f for f in requester if f.startswith("pkg:")}
    features.discard("python_full")
    log_fit = [math.log(fails or 1) for fails, _ in without]
    log_new = math.log(_NEW_BUG)
    for feature in features:
        package = feature.startswith("pkg:")
        value = requester.get(feature, ABSENT if package else None)
        if value is None:  # not collected: says nothing
            continue
        rows = []
        pooled = pooled_runs = 0.0
        for table, (fails, runs) in zip(tables, without):
            entry = table.get(feature)
            if entry is not None:
                fails, runs, per = entry
                fit, seen = per.get(value, (0.0, 0.0))
            elif package:
                fit, seen = (fails, runs) if value == ABSENT else (0.0, 0.0)
            else:
                fails = runs = fit = seen = 0.0
            rows.append((fit, fails))
            pooled += seen
            pooled_runs += runs
        if not package and not pooled:
            continue
        share = (pooled + 0.5) / (pooled_runs + 1.0)  # of all the groups' runs, those with this value
        log_new += math.log(share)
        for i, (fit, fails) in enumerate(rows):
            log_fit[i] += math.log((fit + _SHRINK * share) / (fails + _SHRINK))
    top = max(log_fit + [log_new])
    norm = math.exp(log_new - top) + sum(math.exp(x - top) for x in log_fit)
    return [math.exp(x - top) / norm for x in log_fit]


def suggest_among(groups: Sequence[GroupData], requester: Optional[Features]) -> dict:
    """The /suggest answer when the requester's failure may be any of these groups' bug."""
    if requester is None:
        return {"match": False, "reason": "unknown environment"}
    groups = [group for group in groups if group.fails > 0]  # purged to nothing: no bug to weigh
    if not groups:
        return {"match": False, "reason": "no failing runs of this error yet"}
    membership = _membership(groups, requester)
    likeliest = max(range(len(groups)), key=lambda i: membership[i])
    answer = suggest(groups[likeliest], requester)
    if not answer["match"]:
        return answer
    confidence = answer["confidence"] * membership[likeliest]
    if confidence < MIN_CONFIDENCE:
        return {
            "match": False,
            "reason": "%d bugs share this exception line and the environment does not tell which one this is"
            % len(groups),
        }
    evidence = dict(answer["evidence"], bug_share=round(membership[likeliest], 4))
    return dict(answer, confidence=round(confidence, 3), evidence=evidence)


def _candidate_evidence(h: _Hypothesis, current: str, posterior: float) -> dict:
    return {
        "feature": h.feature,
        "current": current,
        "suggested": h.target,
        "confidence": round(posterior, 3),
        "population_score": round(h.sep.log_bf, 3),
        "fixes": h.fixes,
        "named_in_trace": h.mentioned,
        "failing_range_from": h.sep.range_from or None,
        "runs": {v: {"failing": round(a, 2), "succeeding": round(b, 2)} for v, (a, b) in sorted(h.sep.values.items())},
    }


def comparison(group: GroupData, limit: int = 20) -> List[dict]:
    """Per-feature comparison of failing vs succeeding runs, best separating first (for the API)."""
    seps = (
        [separation(f, _table(f, group, 1.0)) for f in group.counts if f != "python_full"]
        if group.fails and group.oks
        else []
    )
    seps = [s for s in seps if len(s.values) <= _MAX_VALUES]
    seps.sort(key=lambda s: (-s.log_bf, s.feature))
    return [
        {
            "feature": s.feature,
            "score": round(s.log_bf, 3),
            "failure_values": list(s.bad),
            "success_values": list(s.good),
            "runs": {v: {"failing": a, "succeeding": b} for v, (a, b) in sorted(s.values.items())},
        }
        for s in seps[:limit]
    ]
