"""Quality of the analysis engine on generated populations with a known cause.

Each scenario is one error group: failing and succeeding runs over environments in which many
packages, Python versions and env vars vary at random; in cause scenarios one feature (a package
version, a package's presence, the Python version, an env var) decides failure. No-cause scenarios
fail independently of the environment. Sample sizes are unequal and small to medium; some scenarios
include observed fixes (our agent's success beacons naming the failing env), some only population
data (the 0.4.2 client). The WSGI application is driven in-process over its real routes.

Prints precision@1 (answers whose top suggestion names the cause and a success value), how many
cause scenarios got an answer, and the false-suggestion rate on no-cause scenarios.
Bar: precision@1 >= 90%, false suggestions <= 5%.

    python bench/engine_quality.py [--quick] [--seed N] [--scenarios N] [--verbose]
"""
from __future__ import annotations

import argparse
import io
import json
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from corp_error_server import create_app  # noqa: E402
from corp_error_server.storage import SQLiteStorage  # noqa: E402

_NOISE_PACKAGES = ["requests", "urllib3", "idna", "certifi", "six", "attrs", "click", "jinja2", "markupsafe",
                   "pyyaml", "numpy", "pandas", "pytz", "tzdata", "python-dateutil", "setuptools", "wheel",
                   "pip", "charset-normalizer", "typing-extensions", "filelock", "colorama", "tqdm", "toml"]
_PYTHONS = ["3.9.18", "3.10.13", "3.11.7", "3.12.1"]
_LANGS = ["C.UTF-8", "en_US.UTF-8", "C", None]
_CAUSES = ["version", "present", "absent", "python", "envvar", "none"]


def _call(app, method: str, path: str, body=None):
    raw = b"" if body is None else json.dumps(body).encode()
    environ = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": "", "CONTENT_TYPE": "application/json",
               "CONTENT_LENGTH": str(len(raw)), "wsgi.input": io.BytesIO(raw), "wsgi.errors": sys.stderr}
    status = []
    chunks = app(environ, lambda s, h, e=None: status.append(int(s.split()[0])))
    data = b"".join(chunks)
    return status[0], (json.loads(data) if data else None)


class Scenario:
    def __init__(self, rng: random.Random, index: int, cause: str) -> None:
        self.rng = rng
        self.index = index
        self.cause = cause
        self.packages = {name: [rng.choice("0123456789") + "." + str(v) for v in range(rng.randint(1, 4))]
                         for name in rng.sample(_NOISE_PACKAGES, rng.randint(8, 20))}
        self.target = "lib%d" % index
        self.bad = ["%d.0" % rng.randint(2, 5)]
        if rng.random() < 0.3:
            self.bad.append(self.bad[0][:-1] + "1")
        self.good = ["1.%d" % rng.randint(0, 9)]
        if rng.random() < 0.3:
            self.good.append("1.9")

    def env(self, failing: bool) -> dict:
        rng = self.rng
        packages = {name: rng.choice(versions) for name, versions in self.packages.items() if rng.random() < 0.85}
        python = rng.choice(_PYTHONS)
        lang = rng.choice(_LANGS)
        if self.cause in ("version", "none", "python", "envvar"):
            packages[self.target] = rng.choice(self.bad if failing and self.cause == "version" else
                                               self.good if self.cause == "version" else self.bad + self.good)
        elif self.cause == "present":
            if failing:
                packages[self.target] = rng.choice(self.bad)
            else:
                packages.pop(self.target, None)
        elif self.cause == "absent" and not failing:
            packages[self.target] = rng.choice(self.good)
        if self.cause == "python":
            python = "3.12.1" if failing else rng.choice(_PYTHONS[:3])
        if self.cause == "envvar":
            lang = "C" if failing else rng.choice(["C.UTF-8", "en_US.UTF-8"])
        return {"env_hash": "%012x" % rng.getrandbits(48), "packages": packages, "python_ver": python,
                "os_info": "Linux-6.1.0-x86_64-with-glibc2.36", "machine_arch": "x86_64", "python_impl": "CPython",
                "env_vars": {"LANG": lang if lang is not None else "MISSING", "TZ": rng.choice(["UTC", "MISSING"])}}

    def correct(self, answer: dict) -> bool:
        top = answer["evidence"]["candidates"]
        if len(top) != 1:
            return False
        feature, value = top[0]["feature"], top[0]["suggested"]
        return {
            "version": feature == "pkg:" + self.target and value in self.good,
            "present": feature == "pkg:" + self.target and value == "<absent>",
            "absent": feature == "pkg:" + self.target and value != "<absent>",
            "python": feature in ("python", "python_full") and not value.startswith("3.12"),
            "envvar": feature == "env:LANG" and value in ("C.UTF-8", "en_US.UTF-8"),
        }.get(self.cause, False)


def _word(number: int) -> str:
    letters = ""
    while True:
        number, digit = divmod(number, 26)
        letters += "abcdefghijklmnopqrstuvwxyz"[digit]
        if not number:
            return letters


def _fixed_env(scenario: Scenario, env: dict, rng: random.Random) -> dict:
    """The failing environment after its owner fixed it: the cause changed, sometimes a bystander too."""
    fixed = dict(env, env_hash="%012x" % rng.getrandbits(48), packages=dict(env["packages"]))
    good = scenario.env(False)
    if scenario.cause in ("version", "absent"):
        fixed["packages"][scenario.target] = rng.choice(scenario.good)
    elif scenario.cause == "present":
        fixed["packages"].pop(scenario.target, None)
    elif scenario.cause == "python":
        fixed["python_ver"] = good["python_ver"]
    elif scenario.cause == "envvar":
        fixed["env_vars"] = dict(env["env_vars"], LANG=good["env_vars"]["LANG"])
    else:
        fixed = dict(good, env_hash=fixed["env_hash"])
    if rng.random() < 0.3 and scenario.packages:
        bystander = rng.choice(sorted(scenario.packages))
        fixed["packages"][bystander] = rng.choice(scenario.packages[bystander])
    return fixed


def run_scenario(app, scenario: Scenario, rng: random.Random) -> dict:
    # a word, not a number, tells the groups apart: numbers are normalised out of signatures
    signature = "RuntimeError: scenario %s failed @ __main__.main" % _word(scenario.index)
    trace = "Traceback (most recent call last):\n  File \"/srv/app/job.py\", line 3\n" + signature.split(" @ ")[0]
    pairs = rng.random() < 0.4          # our agent names the failure a success follows; 0.4.2 does not
    flaky = scenario.cause == "none"     # fails or succeeds whatever the environment

    def fail(env: dict, script: str, times: int) -> None:
        _call(app, "POST", "/env", env)
        for _ in range(times):
            _call(app, "POST", "/beacon", {"kind": "error", "env_hash": env["env_hash"], "script_id": script,
                                           "ts": 1.7e9, "trace": trace, "error_sig": signature})

    failing_envs = []
    for i in range(rng.randint(1, 12)):
        env = scenario.env(True)
        failing_envs.append(env)
        fail(env, "f%d-%d" % (scenario.index, i), rng.randint(1, 4))
    for i in range(rng.randint(2, 10)):
        script = "k%d-%d" % (scenario.index, i)
        before = scenario.env(True)
        fail(before, script, rng.randint(1, 2))
        after = _fixed_env(scenario, before, rng) if pairs else scenario.env(flaky)
        _call(app, "POST", "/env", after)
        beacon = {"kind": "success", "env_hash": after["env_hash"], "script_id": script, "ts": 1.7e9}
        if pairs:
            beacon.update(prev_env_hash=before["env_hash"], prev_error_sig=signature)
        _call(app, "POST", "/beacon", beacon)
    requester = rng.choice(failing_envs)
    return _call(app, "POST", "/suggest", {"error_sig": signature, "env_hash": requester["env_hash"]})[1]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="200 scenarios (the default is 600)")
    parser.add_argument("--scenarios", type=int)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--verbose", action="store_true", help="print every wrong answer")
    args = parser.parse_args(argv)
    total = args.scenarios or (200 if args.quick else 600)
    rng = random.Random(args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        storage = SQLiteStorage(os.path.join(tmp, "quality.db"), synchronous="OFF")
        app = create_app("", storage=storage)
        tally = {cause: [0, 0, 0] for cause in _CAUSES}   # scenarios, answered, correct
        for index in range(total):
            scenario = Scenario(rng, index, _CAUSES[index % len(_CAUSES)])
            answer = run_scenario(app, scenario, rng)
            row = tally[scenario.cause]
            row[0] += 1
            if answer["match"]:
                row[1] += 1
                ok = scenario.correct(answer)
                row[2] += ok
                if args.verbose and not ok:
                    print("WRONG %s #%d: %s" % (scenario.cause, index, answer["hint"]))
        storage.close()
    print("%-8s %9s %9s %8s" % ("cause", "scenarios", "answered", "correct"))
    for cause, (n, answered, correct) in tally.items():
        print("%-8s %9d %9d %8d" % (cause, n, answered, correct))
    causes = [row for cause, row in tally.items() if cause != "none"]
    answered = sum(r[1] for r in causes)
    correct = sum(r[2] for r in causes)
    scenarios = sum(r[0] for r in causes)
    none = tally["none"]
    precision = correct / answered if answered else 0.0
    false_rate = none[1] / none[0] if none[0] else 0.0
    print("scenarios: %d (%d with a cause, %d without)" % (total, scenarios, none[0]))
    print("precision@1: %.1f%% (%d/%d answers)   answered: %.1f%% of cause scenarios   correct overall: %.1f%%"
          % (100 * precision, correct, answered, 100 * answered / scenarios, 100 * correct / scenarios))
    print("false-suggestion rate (no-cause scenarios): %.1f%% (%d/%d)" % (100 * false_rate, none[1], none[0]))
    ok = precision >= 0.90 and false_rate <= 0.05
    print("bar (precision@1 >= 90%%, false <= 5%%): %s" % ("met" if ok else "MISSED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
