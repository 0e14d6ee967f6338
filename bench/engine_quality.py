"""Quality of the analysis engine on generated populations with a known cause, per difficulty.

Each scenario is one bug: failing and succeeding runs over environments in which many packages,
Python versions and env vars vary at random; in cause scenarios one feature (a package version or
range, a package's presence, the Python version, an env var's value -- collected by every agent
or by some only --, an env var left unset, two packages that move together) decides failure;
no-cause scenarios fail anywhere (among 200 packages in wide-none) and re-runs of a failing
environment pass. Runs come from both client kinds as each reports them (our agent: signature
with frames, observed fixes naming the script's last failure, the variables it was told to
collect, env_hash over what it sends, script_id of the content; the 0.4.2 client: a lower-cased
last line, no fixes, its own nine variables only, env_hash over the packages, script_id per
machine, no script_id in /suggest). All scenarios of a seed share one server (so generic messages
of unrelated scripts meet; in those difficulties half the askers have no error stored yet), and
the WSGI application is driven in-process over its real routes.

An answer is judged by following it: the `solution` command is applied to the asking environment
and the scenario's rule says whether that environment still fails. Metrics, per difficulty and
over all:
  correct@1  share of cause scenarios whose answer works when followed (an abstention is a miss)
  false      share of no-cause scenarios answered with match: true
  wrong      wrong answers among all answers
  ECE        expected calibration error of the printed confidence (10 equal-width bins)
Bar: correct@1 >= 95%, false <= 2%, ECE <= 10%, over all seeds.

    python bench/engine_quality.py [--quick] [--seeds 1,2,3,4,5] [--scenarios N] [--verbose]
    python bench/engine_quality.py --fit --dump answers.jsonl    # every bug, for bench/calibration.py
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import random
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from calibration import fit as fit_calibration  # noqa: E402
from calibration import read as read_dump  # noqa: E402
from corp_error_server import create_app  # noqa: E402
from corp_error_server.storage import SQLiteStorage  # noqa: E402

_NOISE_PACKAGES = [
    "requests",
    "urllib3",
    "idna",
    "certifi",
    "six",
    "attrs",
    "click",
    "jinja2",
    "markupsafe",
    "pyyaml",
    "pytz",
    "tzdata",
    "python-dateutil",
    "charset-normalizer",
    "typing-extensions",
    "filelock",
    "colorama",
    "tqdm",
    "toml",
] + ["dep%03d" % i for i in range(200)]
_PYTHONS = ["3.9.18", "3.10.13", "3.11.7", "3.12.1"]
_TOOLS = {
    "3.9": ("23.0.1", "58.1.0"),
    "3.10": ("23.0.1", "65.5.0"),
    "3.11": ("23.2.1", "65.5.0"),
    "3.12": ("23.2.1", "69.0.2"),
}
DIFFICULTIES = [
    "version",
    "present",
    "absent",
    "python",
    "envvar",
    "none",  # the classic six
    "range",
    "together",
    "flaky",
    "flaky-none",
    "stdlib",
    "uncollected",
    "bystanders",
    "wide",
    "scripts",
    "generic",
    "numbers",
    "unset",
    "wide-none",
]
_NO_CAUSE = ("none", "flaky-none", "wide-none")
_GROUPING = ("scripts", "generic", "numbers")  # several groups share the exception line
# of the env vars here, what the 0.4.2 client collects (it ignores ERROR_AGENT_ENV_ALLOW)
_OLD_CLIENT_ENV = ("LANG", "TZ")
_DATA_DIRS = ["/srv/data", "/mnt/shared/data", "/data"]


def _call(app, method: str, path: str, body=None):
    raw = b"" if body is None else json.dumps(body).encode()
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "CONTENT_TYPE": "application/json",
        "CONTENT_LENGTH": str(len(raw)),
        "wsgi.input": io.BytesIO(raw),
        "wsgi.errors": sys.stderr,
    }
    status = []
    chunks = app(environ, lambda s, h, e=None: status.append(int(s.split()[0])))
    data = b"".join(chunks)
    assert status[0] < 500, data
    return status[0], (json.loads(data) if data else None)


def _word(number: int) -> str:
    letters = ""
    while True:
        number, digit = divmod(number, 26)
        letters += "abcdefghijklmnopqrstuvwxyz"[digit]
        if not number:
            return letters


class Scenario:
    """One bug: how environments are drawn, which of them fail, what the traceback looks like."""

    def __init__(self, rng: random.Random, index: int, difficulty: str) -> None:
        self.rng = rng
        self.index = index
        self.difficulty = difficulty
        wide = difficulty in ("wide", "wide-none")
        pool = _NOISE_PACKAGES if wide else _NOISE_PACKAGES[:19] + _NOISE_PACKAGES[19:40]
        count = 200 if wide else rng.randint(8, 24)
        self.packages = {
            name: ["%d.%d" % (rng.randint(0, 9), v) for v in range(rng.randint(1, 4))]
            for name in rng.sample(pool, min(count, len(pool)))
        }
        self.presence = 0.7 if wide else 0.85
        self.target = "lib%s" % _word(index)
        self.partner = "core%s" % _word(index)  # moves with the target ("together")
        self.bad = ["%d.0" % rng.randint(2, 5)]
        if rng.random() < 0.3:
            self.bad.append(self.bad[0][:-1] + "1")
        self.good = ["1.%d" % rng.randint(0, 9)]
        if rng.random() < 0.3:
            self.good.append("1.9" if self.good[0] != "1.9" else "1.8")
        self.range_from = rng.randint(2, 4)  # "range": every version from X.0 on fails
        self.flake = 0.2 if difficulty in ("flaky", "flaky-none") else 0.0
        self.var = "APP_MODE"
        self.base = {
            "version": "version",
            "flaky": "version",
            "bystanders": "version",
            "wide": "version",
            "scripts": "version",
            "generic": "version",
            "numbers": "version",
            "wide-none": "none",
        }.get(difficulty, difficulty)
        self.pairs = rng.random() < (0.9 if difficulty in ("bystanders", "stdlib") else 0.45)

    # -- environments -------------------------------------------------------------------------

    def _target_version(self, failing: bool) -> str:
        rng = self.rng
        if self.base == "range":
            major = rng.randint(self.range_from, 6) if failing else rng.randint(0, self.range_from - 1)
            return "%d.%d" % (major, rng.randint(0, 3))
        if self.base in ("version",):
            return rng.choice(self.bad if failing else self.good)
        return rng.choice(self.bad + self.good)

    def env(self, failing: bool, ours: bool) -> dict:
        """An environment as its client (ours or 0.4.2) reports it (``_``-keys: the truth behind it)."""
        rng = self.rng
        packages = {
            name: rng.choice(versions) for name, versions in self.packages.items() if rng.random() < self.presence
        }
        python = rng.choice(_PYTHONS)
        mode = rng.choice(["dev", "staging"])
        base = self.base
        if base in ("version", "range", "none", "flaky-none", "python", "envvar", "uncollected", "stdlib"):
            packages[self.target] = self._target_version(failing)
        elif base == "present":
            if failing:
                packages[self.target] = rng.choice(self.bad)
            else:
                packages.pop(self.target, None)
        elif base == "absent" and not failing:
            packages[self.target] = rng.choice(self.good)
        elif base == "together":
            # a new major of the target needs a new major of its partner; they upgrade as one
            packages[self.target] = rng.choice(self.bad if failing else self.good)
            packages[self.partner] = ("2.%d" if failing else "1.%d") % rng.randint(0, 2)
        if base == "python":
            python = "3.12.1" if failing else rng.choice(_PYTHONS[:3])
        if base == "stdlib":
            python = rng.choice(_PYTHONS[:2]) if failing else rng.choice(_PYTHONS[2:])
        if base in ("envvar", "uncollected"):
            mode = "prod" if failing else rng.choice(["dev", "staging"])
        pip, setuptools = _TOOLS[python[:4].rstrip(".")]
        packages.update(pip=pip, setuptools=setuptools)
        env_vars = {"LANG": rng.choice(["C.UTF-8", "en_US.UTF-8", "MISSING"]), "TZ": rng.choice(["UTC", "MISSING"])}
        if base != "uncollected" or rng.random() < 0.7:
            env_vars[self.var] = mode
        # "unset": the job needs DATA_DIR set, to any of its paths; some agents collect it, some not
        data = None if base == "unset" and failing else rng.choice(_DATA_DIRS)
        if base == "unset" and rng.random() < 0.7:
            env_vars["DATA_DIR"] = data or "MISSING"
        return _sealed(
            {
                "packages": packages,
                "python_ver": python,
                "os_info": "Linux-6.1.0-x86_64-with-glibc2.36",
                "machine_arch": "x86_64",
                "python_impl": "CPython",
                "env_vars": env_vars,
                "_mode": mode,
                "_data": data,
                "_ours": ours,
            }
        )

    def fails(self, env: dict) -> bool:
        """The rule: does this environment fail (leaving flakiness aside)?"""
        version = env["packages"].get(self.target)
        base = self.base
        if base == "version":
            return version in self.bad
        if base == "range":
            return version is not None and int(version.split(".")[0]) >= self.range_from
        if base == "present":
            return version is not None
        if base == "absent":
            return version is None
        if base == "together":
            partner = env["packages"].get(self.partner, "1.0")
            # the new target fails; the old one only works with the old partner (binary compatibility)
            return version in self.bad or partner.startswith("2.")
        if base == "python":
            return env["python_ver"].startswith("3.12")
        if base == "stdlib":
            return tuple(int(n) for n in env["python_ver"].split(".")[:2]) < (3, 11)
        if base in ("envvar", "uncollected"):
            return env["_mode"] == "prod"
        if base == "unset":
            return env["_data"] is None
        return True

    def fixed_env(self, env: dict) -> dict:
        """The failing environment after its owner fixed it: the cause changed, bystanders too sometimes."""
        rng = self.rng
        fixed = dict(env, packages=dict(env["packages"]), env_vars=dict(env["env_vars"]))
        good = self.env(False, env["_ours"])
        base = self.base
        if base in ("version", "absent"):
            fixed["packages"][self.target] = rng.choice(self.good)
        elif base == "range":
            fixed["packages"][self.target] = good["packages"][self.target]
        elif base == "present":
            fixed["packages"].pop(self.target, None)
        elif base == "together":
            fixed["packages"][self.target] = good["packages"][self.target]
            fixed["packages"][self.partner] = good["packages"][self.partner]
        elif base in ("python", "stdlib"):
            fixed["python_ver"] = good["python_ver"]
            fixed["packages"].update(pip=good["packages"]["pip"], setuptools=good["packages"]["setuptools"])
        elif base in ("envvar", "uncollected"):
            fixed["_mode"] = good["_mode"]
            if self.var in fixed["env_vars"]:
                fixed["env_vars"][self.var] = good["_mode"]
        elif base == "unset":
            fixed["_data"] = good["_data"]
            if "DATA_DIR" in fixed["env_vars"]:
                fixed["env_vars"]["DATA_DIR"] = good["_data"]
        riders = rng.randint(1, 5) if self.difficulty == "bystanders" else (1 if rng.random() < 0.3 else 0)
        for name in rng.sample(sorted(self.packages), min(riders, len(self.packages))):
            fixed["packages"][name] = rng.choice(self.packages[name])
        return _sealed(fixed)

    # -- what the clients send ----------------------------------------------------------------

    def signature(self, script: int) -> tuple:
        """(exception line, trace, our agent's frames) of this bug as raised in one script."""
        word = _word(self.index)
        if self.difficulty == "generic":  # unrelated scripts, one everyday message, their own code
            line, where = "KeyError: 'id'", ("/srv/jobs/job_%s.py" % word, "load")
        elif self.difficulty == "numbers":  # a message that differs by a number between scripts
            line, where = "RuntimeError: step %d failed" % (self.index % 97), ("/srv/jobs/step_%s.py" % word, "run")
        elif self.difficulty == "scripts":  # one library bug hit from several scripts
            line = "KeyError: 'id'"
            where = ("/venv/lib/python3.11/site-packages/%s/core.py" % self.target, "lookup")
        elif self.base == "unset":
            line, where = "KeyError: 'DATA_DIR'", ("/srv/jobs/export_%s.py" % word, "main")
        elif self.base == "stdlib":
            line, where = "ModuleNotFoundError: No module named 'tomllib'", ("/srv/jobs/cfg_%s.py" % word, "<module>")
        elif self.base in ("envvar", "uncollected") and self.index % 2:
            line = "ValueError: APP_MODE %s is not supported by job %s" % ("'prod'", word)
            where = ("/srv/jobs/job_%s.py" % word, "main")
        else:
            line = "RuntimeError: scenario %s failed" % word
            where = (
                ("/venv/lib/python3.11/site-packages/%s/api.py" % self.target, "call")
                if self.base not in ("envvar", "uncollected", "python", "none", "flaky-none")
                else ("/srv/jobs/job_%s.py" % word, "main")
            )
        script_path = "/srv/jobs/%s_%d.py" % (word, script) if self.difficulty == "scripts" else where[0]
        frames = ['  File "%s", line 12, in <module>\n    main()\n' % script_path]
        if where[0] != script_path or where[1] != "<module>":
            frames.append('  File "%s", line 40, in %s\n    do_it()\n' % where)
        trace = "Traceback (most recent call last):\n" + "".join(frames) + line + "\n"
        module = "__main__" if where[0] == script_path else where[0].split("site-packages/")[-1].split("/")[0] + ".core"
        ours = (
            "%s @ %s.%s < __main__.<module>" % (line, module, where[1])
            if where[1] != "<module>"
            else "%s @ __main__.<module>" % line
        )
        return line, trace, ours


def _body(env: dict) -> dict:
    """What the environment's client posts to /env. Its env_hash is a hash of it as the clients compute
    one (ours: of everything it sends; 0.4.2: of the package list only), so what the client does not
    see -- an env var it did not collect -- leaves the hash alone: a fix of that alone is a success of
    the failing environment itself."""
    body = {k: v for k, v in env.items() if not k.startswith("_") and k != "env_hash"}
    if not env["_ours"]:
        body["env_vars"] = {k: v for k, v in env["env_vars"].items() if k in _OLD_CLIENT_ENV}
    hashed = body if env["_ours"] else body["packages"]
    return dict(body, env_hash=hashlib.sha256(json.dumps(hashed, sort_keys=True).encode()).hexdigest()[:12])


def _sealed(env: dict) -> dict:
    return dict(env, env_hash=_body(env)["env_hash"])


def _apply(command: str, env: dict) -> dict:
    """The asking environment after following the command (the forms TEAM.md lists)."""
    env = dict(env, packages=dict(env["packages"]), env_vars=dict(env["env_vars"]))
    for step in command.split("; "):
        words = step.split()
        if step.startswith("pip install "):
            for spec in words[2:]:
                name, _, version = spec.strip('"').partition("==")
                env["packages"][name] = version or "1.0"
        elif step.startswith("pip uninstall "):
            env["packages"].pop(words[2], None)
        elif step.startswith("export "):
            name, _, value = step[len("export ") :].partition("=")
            env["env_vars"][name] = value.strip("'")
            if name == "APP_MODE":
                env["_mode"] = value.strip("'")
            if name == "DATA_DIR":
                env["_data"] = value.strip("'")
        elif step.startswith("unset "):
            env["env_vars"].pop(words[1], None)
            if words[1] == "DATA_DIR":
                env["_data"] = None
        elif step.startswith("use Python "):
            version = words[2]
            env["python_ver"] = version if version.count(".") == 2 else version + ".0"
        else:
            raise ValueError("not a command form the generators know: %r" % step)
    return env


def run_scenario(app, scenario: Scenario, rng: random.Random) -> tuple:
    """Send the scenario's runs; return (answer, asking env) from the requester's /suggest."""
    flaky_none = scenario.difficulty in _NO_CAUSE
    scripts = 3 if scenario.difficulty == "scripts" else 1

    def client_fields(env: dict, script: int) -> dict:
        """What only our agent adds to a beacon: it names itself and the script (0.4.2 does neither)."""
        return {"agent": "corp-error-agent/0.5.0", "script_name": "job_%d.py" % script} if env["_ours"] else {}

    def send_failure(env: dict, script: int, script_id: str, times: int) -> None:
        line, trace, our_sig = scenario.signature(script)
        _call(app, "POST", "/env", _body(env))
        for _ in range(times):
            _call(
                app,
                "POST",
                "/beacon",
                {
                    "kind": "error",
                    "env_hash": env["env_hash"],
                    "script_id": script_id,
                    "ts": 1.7e9,
                    "trace": trace,
                    "error_sig": our_sig if env["_ours"] else line.lower(),
                    **client_fields(env, script),
                },
            )

    def draw(failing: bool, ours: bool) -> dict:
        if flaky_none:
            return scenario.env(rng.random() < 0.5, ours)
        while True:
            env = scenario.env(failing, ours)
            if scenario.fails(env) == failing:
                return env

    def script_id(env: dict, script: int, run: str) -> str:
        # ours: a hash of the script's content, the same on every machine; 0.4.2's hashes the file's
        # modification time in, so it differs between machines
        return "s%d-%d" % (scenario.index, script) if env["_ours"] else "%s%d-%d" % (run, scenario.index, script)

    failing_envs = []
    for i in range(rng.randint(2, 8)):
        env = draw(True, rng.random() < 0.5)
        failing_envs.append(env)
        send_failure(env, i % scripts, script_id(env, i % scripts, "f%d." % i), rng.randint(1, 3))
    for i in range(rng.randint(2, 8)):
        ours = rng.random() < 0.6
        before = draw(True, ours)
        sid = script_id(before, i % scripts, "k%d." % i)
        send_failure(before, i % scripts, sid, 1)
        if flaky_none and rng.random() < 0.5:
            after = before  # a bug without an environment cause: the re-run of the same environment passes
        else:
            after = scenario.fixed_env(before) if scenario.pairs and ours else draw(False, ours)
        last = before
        if scenario.flake and not flaky_none and rng.random() < scenario.flake:
            send_failure(after, i % scripts, sid, 1)  # a good environment failing now and then
            last = after
        beacon = {"kind": "success", "env_hash": after["env_hash"], "script_id": sid, "ts": 1.7e9}
        beacon.update(client_fields(after, i % scripts))
        if ours and (scenario.pairs or after is before or last is after):
            # our agent names the script's last failure, which a flaky one in this environment is
            beacon.update(prev_env_hash=last["env_hash"], prev_error_sig=scenario.signature(i % scripts)[2])
        if _call(app, "POST", "/beacon", beacon)[0] == 204:  # both clients post /env only when it is unknown
            _call(app, "POST", "/env", _body(after))
    requester = failing_envs[rng.randrange(len(failing_envs))]
    if scenario.base == "range":  # the asker has a bad version nobody reported failing
        unseen = "7.%d" % rng.randint(0, 5)
        requester = _sealed(dict(requester, packages=dict(requester["packages"], **{scenario.target: unseen})))
        _call(app, "POST", "/env", _body(requester))
    elif scenario.difficulty in _GROUPING and rng.random() < 0.5:
        # an asker whose failure is not stored yet (0.4.2 asks while its beacon is still on the way):
        # only its script, when its client names one, tells which of the message's groups it hit
        requester = draw(True, rng.random() < 0.5)
        _call(app, "POST", "/env", _body(requester))
    line, _, our_sig = scenario.signature(0)
    request = {"error_sig": our_sig if requester["_ours"] else line.lower(), "env_hash": requester["env_hash"]}
    if requester["_ours"]:  # the 0.4.2 client sends no script_id
        request["script_id"] = script_id(requester, 0, "")
    return _call(app, "POST", "/suggest", request)[1], requester


def judge(scenario: Scenario, answer: dict, requester: dict) -> bool:
    if not answer.get("match") or scenario.difficulty in _NO_CAUSE:
        return False
    try:
        return not scenario.fails(_apply(answer["solution"], requester))
    except ValueError:
        return False


def ece(points: list, bins: int = 10) -> float:
    """Expected calibration error: |mean confidence - share right| per equal-width bin, weighted."""
    if not points:
        return 0.0
    total = 0.0
    for b in range(bins):
        inside = [(c, r) for c, r in points if min(int(c * bins), bins - 1) == b]
        if inside:
            mean_confidence = sum(c for c, _ in inside) / len(inside)
            total += len(inside) * abs(mean_confidence - sum(r for _, r in inside) / len(inside))
    return total / len(points)


def run_seed(seed: int, scenarios: int, verbose: bool, dump) -> dict:
    rng = random.Random(seed)
    tally = {d: {"n": 0, "answered": 0, "right": 0, "points": []} for d in DIFFICULTIES}
    with tempfile.TemporaryDirectory() as tmp:
        storage = SQLiteStorage(os.path.join(tmp, "quality.db"), synchronous="OFF")
        app = create_app("", storage=storage)
        for index in range(scenarios):
            scenario = Scenario(rng, index, DIFFICULTIES[index % len(DIFFICULTIES)])
            answer, requester = run_scenario(app, scenario, rng)
            row = tally[scenario.difficulty]
            row["n"] += 1
            right = bool(answer["match"]) and judge(scenario, answer, requester)
            if dump:
                evidence = answer.get("evidence", {}) if answer["match"] else {}
                line = {
                    "seed": seed,
                    "difficulty": scenario.difficulty,
                    "cause": scenario.difficulty not in _NO_CAUSE,
                    "answered": bool(answer["match"]),
                    "right": right,
                    "posterior": evidence.get("posterior"),
                    "bug_share": evidence.get("bug_share"),
                }
                dump.write(json.dumps(line) + "\n")
            if answer["match"]:
                row["answered"] += 1
                row["right"] += right
                row["points"].append((answer["confidence"], right))
                if verbose and not right:
                    print(
                        "WRONG seed %d %s #%d (%.2f): %s | %s"
                        % (
                            seed,
                            scenario.difficulty,
                            index,
                            answer["confidence"],
                            answer["solution"],
                            answer["hint"][:200],
                        )
                    )
            elif verbose and scenario.difficulty not in _NO_CAUSE:
                print("MISS  seed %d %s #%d: %s" % (seed, scenario.difficulty, index, answer.get("reason")))
        app.close()  # its ahead thread too, before the directory goes
    return tally


def _rates(row: dict, no_cause: bool) -> tuple:
    n, answered, right = row["n"], row["answered"], row["right"]
    correct = None if no_cause else (right / n if n else 0.0)
    false = answered / n if no_cause and n else None
    wrong = (answered - right) / answered if answered else 0.0
    return correct, false, wrong, ece(row["points"])


def _pct(x) -> str:
    return "    -" if x is None else "%5.1f" % (100 * x)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="170 scenarios a seed (the default is 510)")
    parser.add_argument("--scenarios", type=int)
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--verbose", action="store_true", help="print every wrong answer and missed cause")
    parser.add_argument("--dump", help="write one JSON line per bug (for bench/calibration.py)")
    parser.add_argument(
        "--fit",
        action="store_true",
        help="answer everything, uncalibrated, and fit the calibration on the answers (with --dump)",
    )
    args = parser.parse_args(argv)
    if args.fit:
        from corp_error_server import engine

        engine.MIN_CONFIDENCE, engine._CALIBRATION = 0.0, (1.0, 0.0)
    total = args.scenarios or (170 if args.quick else 510)
    seeds = [int(s) for s in args.seeds.split(",")]
    merged = {d: {"n": 0, "answered": 0, "right": 0, "points": []} for d in DIFFICULTIES}
    dump = open(args.dump, "w") if args.dump else None
    per_seed = []
    for seed in seeds:
        tally = run_seed(seed, total, args.verbose, dump)
        for d, row in tally.items():
            for k in ("n", "answered", "right"):
                merged[d][k] += row[k]
            merged[d]["points"] += row["points"]
        per_seed.append((seed, tally))
    if dump:
        dump.close()
        if args.fit:
            print(
                "calibration (slope, offset) on logit(posterior): (%.3f, %.3f)" % fit_calibration(read_dump(args.dump))
            )
    print(
        "engine quality: %d seeds (%s) x %d scenarios, judged by following the answer" % (len(seeds), args.seeds, total)
    )
    print("%-12s %6s %8s %9s %7s %7s %6s" % ("difficulty", "bugs", "answered", "correct@1", "false", "wrong", "ECE"))
    for d in DIFFICULTIES:
        row = merged[d]
        correct, false, wrong, error = _rates(row, d in _NO_CAUSE)
        print(
            "%-12s %6d %8d %9s %7s %7s %6s"
            % (d, row["n"], row["answered"], _pct(correct), _pct(false), _pct(wrong), _pct(error))
        )
    cause = {"n": 0, "answered": 0, "right": 0, "points": []}
    none = {"n": 0, "answered": 0, "right": 0, "points": []}
    for d in DIFFICULTIES:
        into = none if d in _NO_CAUSE else cause
        for k in ("n", "answered", "right"):
            into[k] += merged[d][k]
        into["points"] += merged[d]["points"]
    points = cause["points"] + none["points"]
    correct = cause["right"] / cause["n"]
    false = none["answered"] / none["n"]
    answered = cause["answered"] + none["answered"]
    wrong = (answered - cause["right"]) / answered if answered else 0.0
    calibration = ece(points)
    print(
        "%-12s %6d %8d %9s %7s %7s %6s"
        % ("ALL", cause["n"] + none["n"], answered, _pct(correct), _pct(false), _pct(wrong), _pct(calibration))
    )
    for seed, tally in per_seed:
        c = sum(r["right"] for d, r in tally.items() if d not in _NO_CAUSE) / max(
            1, sum(r["n"] for d, r in tally.items() if d not in _NO_CAUSE)
        )
        f = sum(r["answered"] for d, r in tally.items() if d in _NO_CAUSE) / max(
            1, sum(r["n"] for d, r in tally.items() if d in _NO_CAUSE)
        )
        print(
            "  seed %d: correct@1 %.1f%%  false %.1f%%  ECE %.1f%%"
            % (seed, 100 * c, 100 * f, 100 * ece([p for r in tally.values() for p in r["points"]]))
        )
    ok = correct >= 0.95 and false <= 0.02 and calibration <= 0.10
    print("bar (correct@1 >= 95%%, false <= 2%%, ECE <= 10%%): %s" % ("met" if ok else "MISSED"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
