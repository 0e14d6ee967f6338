"""The analysis engine: from failing-vs-succeeding environments to one command.

Pure functions over counts. Storage keeps, per error group, how many failing and succeeding runs
had each (feature, value); the engine ranks features by how well they separate the two and answers
for the requesting environment. Observed fixes (a failure followed by a success of the same script,
``prev_env_hash``) are diffed directly and weigh above population statistics.
"""
from __future__ import annotations

import math
import re
import shlex
from typing import Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Set, Tuple

ABSENT = "<absent>"            # value of a package / env var a run did not have
MIN_CONFIDENCE = 0.5           # below this the engine abstains (tuned with bench/engine_quality.py)
_Z = 1.0                       # Wilson bound width: small counts stay modest, 7/7 is not 100%
_PAIR_WEIGHT = 0.65            # confidence from one observed fix that changed a single thing
_TIE = 0.02                    # relative score difference under which two candidates are tied
_MAX_VALUES = 6                # features with more distinct values than this are per-machine noise
_PATHY_ENV = re.compile(r"[/\\]")

Features = Dict[str, str]
Counts = Dict[str, Dict[str, Tuple[int, int]]]   # feature -> value -> (failing runs, succeeding runs)

###############################################################################
# Features of one environment #################################################
###############################################################################


def canonical_name(name: str) -> str:
    """PEP 503 normalised distribution name; also turns an import name into its likely dist."""
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def env_features(packages: Mapping[str, str], python_ver: str, python_impl: str, os_info: str,
                 machine_arch: str, env_vars: Mapping[str, str]) -> Features:
    """The engine's view of one environment. Absent packages and unset variables have no entry."""
    features: Features = {}
    for name, version in packages.items():
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
        if value != "MISSING":
            features["env:" + name] = value
    return features

###############################################################################
# What the traceback names ####################################################
###############################################################################

_MENTION_PATTERNS = (
    re.compile(r"(?:from|module|named) '([A-Za-z_][\w.]*)'"),
    re.compile(r"[/\\](?:site|dist)-packages[/\\]([A-Za-z_][\w.-]*)"),
    re.compile(r"(?:^|[\s<(])([A-Za-z_]\w*)(?:\.\w+)+\.[\w<>]+(?= |$| <)"),  # our signature's frames
)
_IMPORT_TO_DIST = {
    "yaml": "pyyaml", "pil": "pillow", "sklearn": "scikit-learn", "cv2": "opencv-python",
    "bs4": "beautifulsoup4", "dateutil": "python-dateutil", "attr": "attrs", "jwt": "pyjwt",
    "dotenv": "python-dotenv", "magic": "python-magic", "serial": "pyserial", "usb": "pyusb",
    "crypto": "pycryptodome", "google": "protobuf", "pkg-resources": "setuptools", "git": "gitpython",
}


def _dist_of(module: str) -> str:
    top = module.split(".")[0]
    top = re.sub(r"-\d.*$", "", top)                       # "pkg-1.0.dist-info" -> "pkg"
    top = re.sub(r"\.(?:dist-info|egg-info|py)$", "", top)
    name = canonical_name(top)
    return _IMPORT_TO_DIST.get(name, name)


def mentioned_packages(text: str) -> Set[str]:
    """Canonical distribution names the traceback or signature names (modules, site-packages paths)."""
    found: Set[str] = set()
    for pattern in _MENTION_PATTERNS:
        for match in pattern.finditer(text):
            name = _dist_of(match.group(1))
            if name and name not in ("main", "builtins"):
                found.add(name)
    return found

###############################################################################
# Statistics ##################################################################
###############################################################################


def wilson_lower(successes: int, trials: int, z: float = _Z) -> float:
    """Lower bound of the Wilson interval: a rate that respects how few observations it rests on."""
    if trials <= 0:
        return 0.0
    p = successes / trials
    denominator = 1 + z * z / trials
    centre = p + z * z / (2 * trials)
    margin = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials))
    return max(0.0, (centre - margin) / denominator)


class Separation(NamedTuple):
    feature: str
    score: float
    bad: Tuple[str, ...]      # failure-leaning values
    good: Tuple[str, ...]     # success-leaning values, best supported first
    values: Dict[str, Tuple[int, int]]


def with_absent(values: Mapping[str, Tuple[int, int]], fails: int, oks: int) -> Dict[str, Tuple[int, int]]:
    """Runs that had no value for a feature had it absent: derived, so storage never enumerates."""
    full = dict(values)
    missing_fails = fails - sum(a for a, _ in values.values())
    missing_oks = oks - sum(b for _, b in values.values())
    if missing_fails > 0 or missing_oks > 0:
        full[ABSENT] = (max(missing_fails, 0), max(missing_oks, 0))
    return full


def separation(feature: str, values: Mapping[str, Tuple[int, int]], fails: int, oks: int) -> Separation:
    """How well the feature's values split failing from succeeding runs (0..1, count-aware).

    A value leans to success when its share of the succeeding runs is above its share of the
    failing runs (shares, not counts: a script fails many times and reports one success). The
    score multiplies lower bounds of: the failures on failure-leaning values, the successes on
    success-leaning values, and how pure the success-leaning values are (a real cause leaves no
    failure on the values that fix it; chance does).
    """
    bad: List[str] = []
    good: List[Tuple[int, int, str]] = []
    for value, (a, b) in values.items():
        if b * fails > a * oks:
            good.append((-b, a, value))
        elif a:
            bad.append(value)
    fails_on_bad = sum(values[v][0] for v in bad)
    oks_on_good = sum(-b for b, _, _ in good)
    fails_on_good = sum(a for _, a, _ in good)
    score = (wilson_lower(fails_on_bad, fails) * wilson_lower(oks_on_good, oks)
             * wilson_lower(oks_on_good, oks_on_good + fails_on_good))
    if len(values) > _MAX_VALUES:
        score = 0.0
    return Separation(feature, score, tuple(sorted(bad)), tuple(v for _, _, v in sorted(good)), dict(values))


###############################################################################
# Candidates and the answer ###################################################
###############################################################################


class FixPair(NamedTuple):
    failing: Features
    fixed: Features
    same_script: bool


class Candidate(NamedTuple):
    feature: str
    current: str
    target: str
    confidence: float
    population: float
    pairs: int
    mentioned: bool


def _pair_diff(pair: FixPair) -> Dict[str, Tuple[str, str]]:
    keys = set(pair.failing) | set(pair.fixed)
    diff = {k: (pair.failing.get(k, ABSENT), pair.fixed.get(k, ABSENT)) for k in keys
            if pair.failing.get(k, ABSENT) != pair.fixed.get(k, ABSENT)}
    if "python" in diff:
        diff.pop("python_full", None)   # one interpreter change, not two pieces of evidence
    return diff


def _is_mentioned(feature: str, mentions: Set[str]) -> bool:
    return feature.startswith("pkg:") and feature[4:] in mentions


def pair_support(pairs: Sequence[FixPair], mentions: Set[str]) -> Dict[Tuple[str, str], Tuple[float, int]]:
    """(feature, fixed value) -> (confidence from observed fixes, number of fixes).

    A fix that changed n things lends each 1/n of its weight; when the trace names some of the
    changed packages, only those share it (the bystanders rode along). A real cause is consistent:
    no fix moves it to a value another fix moved away from, and fixes that leave it alone count
    against it; so the confidence is scaled by the share of all fixes that moved the feature to a
    value never seen failing.
    """
    diffs = [d for d in (_pair_diff(pair) for pair in pairs) if d]
    failing_values: Dict[str, Set[str]] = {}
    for diff in diffs:
        for feature, (before, _) in diff.items():
            failing_values.setdefault(feature, set()).add(before)
    misses: Dict[Tuple[str, str], float] = {}
    count: Dict[Tuple[str, str], int] = {}
    consistent: Dict[str, int] = {}
    for pair, diff in zip(pairs, diffs):
        for feature, (_, after) in diff.items():
            if after not in failing_values[feature]:
                consistent[feature] = consistent.get(feature, 0) + 1
        named = [f for f in diff if _is_mentioned(f, mentions)]
        carriers = named or list(diff)
        for feature in carriers:
            key = (feature, diff[feature][1])
            weight = _PAIR_WEIGHT * (1.25 if pair.same_script else 1.0) / len(carriers)
            misses[key] = misses.get(key, 1.0) * (1 - min(weight, 0.9))
            count[key] = count.get(key, 0) + 1
    return {key: ((1 - miss) * consistent.get(key[0], 0) / len(diffs), count[key]) for key, miss in misses.items()
            if key[1] not in failing_values[key[0]]}


def _population_candidates(seps: Iterable[Separation], requester: Features, mentions: Set[str]
                           ) -> Dict[str, Candidate]:
    found: Dict[str, Candidate] = {}
    for sep in seps:
        current = requester.get(sep.feature, ABSENT)
        if not sep.good or current in sep.good or sep.score <= 0:
            continue
        target = sep.good[0]
        found[sep.feature] = Candidate(sep.feature, current, target, sep.score, sep.score, 0,
                                                 _is_mentioned(sep.feature, mentions))
    return found


def _combine(population: Dict[str, Candidate], support: Mapping[Tuple[str, str], Tuple[float, int]],
             requester: Features, mentions: Set[str]) -> List[Candidate]:
    """One candidate per feature: population score and observed fixes towards the same value combined."""
    combined = dict(population)
    for (feature, target), (pair_conf, n) in sorted(support.items(), key=lambda kv: -kv[1][0]):
        current = requester.get(feature, ABSENT)
        base = combined.get(feature)
        if current == target or (base is not None and base.pairs):
            continue   # the requester already has it, or a better-supported fix of this feature is in
        pop = base.population if base is not None and base.target == target else 0.0
        candidate = Candidate(feature, current, target, 1 - (1 - pop) * (1 - pair_conf), pop, n,
                              _is_mentioned(feature, mentions))
        if base is None or candidate.confidence > base.confidence:
            combined[feature] = candidate
    return list(combined.values())


def _rank_key(c: Candidate):
    # coarse Python version before the full one when both explain the same runs equally
    return (-c.confidence, not c.mentioned, c.feature == "python_full", c.feature)


def choose(candidates: Sequence[Candidate]) -> List[Candidate]:
    """The winning candidate, or several when the evidence cannot tell them apart.

    Near-equal scores are tied; among tied ones a package the traceback names beats the others.
    """
    if not candidates:
        return []
    ranked = sorted(candidates, key=lambda c: (-c.confidence, c.feature))
    best = ranked[0]
    close = [c for c in ranked if best.confidence - c.confidence <= _TIE * best.confidence]
    if any(c.mentioned for c in close):
        close = [c for c in close if c.mentioned]
    close.sort(key=_rank_key)
    if any(c.feature == "python" for c in close):
        close = [c for c in close if c.feature != "python_full"]
    return close

###############################################################################
# Words and commands ##########################################################
###############################################################################


def _label(feature: str) -> str:
    kind, _, name = feature.partition(":")
    return {"pkg": name, "env": name}.get(kind) or {
        "python": "Python", "python_full": "Python", "impl": "implementation", "os": "OS", "arch": "arch"}[kind]


def _with(feature: str, value: str) -> str:
    if value == ABSENT:
        return ("without " if feature.startswith("pkg:") else "with unset ") + _label(feature)
    return "with " + _label(feature) + " " + value


def command(feature: str, target: str, good: Sequence[str] = ()) -> str:
    """The concrete command that moves an environment to the success-associated value."""
    kind, _, name = feature.partition(":")
    if kind == "pkg":
        if target == ABSENT:
            return "pip uninstall " + name
        if len([g for g in good if g != ABSENT]) > 1 and target not in good[:1]:
            return "pip install " + name
        return 'pip install "%s==%s"' % (name, target)
    if kind == "env":
        return "unset " + name if target == ABSENT else "export %s=%s" % (name, shlex.quote(target))
    if kind in ("python", "python_full"):
        return "use Python " + target
    return {"impl": "use %s", "os": "run on %s", "arch": "run on %s"}[kind] % target


def _joined_command(chosen: Sequence[Candidate]) -> str:
    pkgs = [c for c in chosen if c.feature.startswith("pkg:") and c.target != ABSENT]
    if len(pkgs) > 1 and len(pkgs) == len(chosen):
        return "pip install " + " ".join('"%s==%s"' % (c.feature[4:], c.target) for c in pkgs)
    return "; ".join(command(c.feature, c.target) for c in chosen)


def _evidence_phrase(c: Candidate, values: Mapping[str, Tuple[int, int]]) -> str:
    parts = []
    a, b = values.get(c.current, (0, 0))
    if a + b:
        parts.append("fails in %d/%d runs %s" % (a, a + b, _with(c.feature, c.current)))
    a, b = values.get(c.target, (0, 0))
    if a + b:
        target = "without" if c.target == ABSENT and c.feature.startswith("pkg:") else (
            "unset" if c.target == ABSENT else c.target)
        parts.append("succeeds in %d/%d with %s" % (b, a + b, target))
    if c.pairs:
        parts.append("%d observed fix%s" % (c.pairs, "" if c.pairs == 1 else "es"))
    return "; ".join(parts)


def _value_text(feature: str, value: str) -> str:
    return ("no " + _label(feature)) if value == ABSENT else _label(feature) + " " + value


###############################################################################
# Entry point #################################################################
###############################################################################


class GroupData(NamedTuple):
    fails: int
    oks: int
    counts: Counts
    mentions: Set[str]
    pairs: List[FixPair]


def suggest(group: GroupData, requester: Optional[Features]) -> dict:
    """The /suggest answer for a requesting environment (``{"match": False}`` when abstaining)."""
    if requester is None:
        return {"match": False, "reason": "unknown environment"}
    seps = [separation(f, with_absent(v, group.fails, group.oks), group.fails, group.oks)
            for f, v in group.counts.items()] if group.fails and group.oks else []
    population = _population_candidates(seps, requester, group.mentions)
    support = pair_support(group.pairs, group.mentions)
    candidates = _combine(population, support, requester, group.mentions)
    chosen = choose(candidates)
    if not chosen or chosen[0].confidence < MIN_CONFIDENCE:
        return {"match": False, "reason": "no feature separates failing from succeeding runs"}
    strongest = max(seps, key=lambda s: s.score, default=None)
    if (strongest and strongest.score > chosen[0].confidence
            and requester.get(strongest.feature, ABSENT) in strongest.good):
        return {"match": False, "reason": "requesting environment already has the success value of %s"
                % strongest.feature}
    by_feature = {s.feature: s for s in seps}
    values = {c.feature: with_absent(group.counts.get(c.feature, {}), group.fails, group.oks) for c in chosen}
    good = by_feature[chosen[0].feature].good if chosen[0].feature in by_feature else ()
    solution = command(chosen[0].feature, chosen[0].target, good) if len(chosen) == 1 else _joined_command(chosen)
    moves = " and ".join("%s -> %s" % (_value_text(c.feature, c.current), c.target if c.target != ABSENT
                                      else "none") for c in chosen)
    evidence_text = " / ".join(_evidence_phrase(c, values[c.feature]) for c in chosen)
    hint = moves + ": " + evidence_text
    if len(chosen) > 1:
        hint += "; these changed together, either may be the cause"
    confidence = round(min(c.confidence for c in chosen), 3)
    docs = ("https://pypi.org/project/%s/%s/" % (chosen[0].feature[4:], chosen[0].target)
            if len(chosen) == 1 and chosen[0].feature.startswith("pkg:") and chosen[0].target != ABSENT else "")
    return {
        "match": True, "confidence": confidence, "hint": hint, "solution": solution,
        "recommendation": hint, "docs": docs,
        "evidence": {
            "failing_runs": group.fails, "succeeding_runs": group.oks, "observed_fixes": len(group.pairs),
            "candidates": [_candidate_evidence(c, values[c.feature]) for c in chosen],
        },
    }


def _candidate_evidence(c: Candidate, values: Mapping[str, Tuple[int, int]]) -> dict:
    return {
        "feature": c.feature, "current": c.current, "suggested": c.target,
        "confidence": round(c.confidence, 3), "population_score": round(c.population, 3),
        "fixes": c.pairs, "named_in_trace": c.mentioned,
        "runs": {v: {"failing": a, "succeeding": b} for v, (a, b) in sorted(values.items())},
    }


def comparison(group: GroupData, limit: int = 20) -> List[dict]:
    """Per-feature comparison of failing vs succeeding runs, best separating first (for the API)."""
    seps = [separation(f, with_absent(v, group.fails, group.oks), group.fails, group.oks)
            for f, v in group.counts.items()] if group.fails and group.oks else []
    seps.sort(key=lambda s: (-s.score, s.feature))
    return [{"feature": s.feature, "score": round(s.score, 3), "failure_values": list(s.bad),
             "success_values": list(s.good),
             "runs": {v: {"failing": a, "succeeding": b} for v, (a, b) in sorted(s.values.items())}}
            for s in seps[:limit]]
