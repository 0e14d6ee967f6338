"""The analysis engine on hand-made populations: answers, ties, abstentions, commands."""

from __future__ import annotations

import pytest

from corp_error_server import engine
from corp_error_server.engine import ABSENT, FixPair, GroupData


def _features(packages: dict, python: str = "3.11.7", **env) -> dict:
    return engine.env_features(packages, python, "CPython", "Linux-6.1.0-x86_64", "x86_64", env or {"LANG": "C.UTF-8"})


def _group(failing: list, succeeding: list, mentions=(), pairs=()) -> GroupData:
    """Counts exactly as storage keeps them: present values only, absence derived."""
    counts: dict = {}
    for runs, index in ((failing, 0), (succeeding, 1)):
        for features in runs:
            for feature, value in features.items():
                a, b = counts.setdefault(feature, {}).get(value, (0, 0))
                counts[feature][value] = (a + (index == 0), b + (index == 1))
    return GroupData(len(failing), len(succeeding), counts, set(mentions), list(pairs))


def test_version_cause_names_the_working_version_with_evidence():
    bad = [_features({"packaging": "23.2", "requests": "2.%d" % (i % 3)}) for i in range(7)]
    good = [_features({"packaging": "21.3", "requests": "2.%d" % (i % 3)}) for i in range(5)]
    answer = engine.suggest(_group(bad, good), bad[0])
    assert answer["match"] and answer["solution"] == 'pip install "packaging==21.3"'
    assert "fails in 7/7 environments with packaging 23.2; succeeds in 5/5 with 21.3" in answer["hint"]
    assert answer["recommendation"] == answer["hint"]
    assert engine.MIN_CONFIDENCE <= answer["confidence"] <= 1


def test_the_agent_itself_is_never_a_cause():
    """Failing machines got the agent by pip, the working one by copying the file (no distribution):
    the answer is the package, never "pip uninstall corp-error-agent"."""
    bad = [_features({"packaging": "24.2", "corp-error-agent": "0.5.0"}) for _ in range(3)]
    good = [_features({"packaging": "21.3", "pyparsing": "3.1.0"}) for _ in range(3)]
    answer = engine.suggest(_group(bad, good), bad[0])
    assert "corp-error-agent" not in answer.get("solution", "") + answer.get("hint", "") + answer.get("reason", "")
    assert all(feature != "pkg:corp-error-agent" for feature in bad[0])


def test_a_package_whose_removal_fixes_reads_without_it():
    bad = [_features({"numpy": "1.26.4", "evil-plugin": "1.0"}) for _ in range(6)]
    good = [_features({"numpy": "1.26.4"}) for _ in range(6)]
    answer = engine.suggest(_group(bad, good, mentions={"evil-plugin"}), bad[0])
    assert answer["match"] and answer["solution"] == "pip uninstall evil-plugin"
    assert "succeeds in 6/6 without it" in answer["hint"]


def test_more_runs_raise_confidence():
    def posterior(n_bad, n_good):
        bad = [_features({"packaging": "23.2", "rich": "13.%d" % (i % 2)}) for i in range(n_bad)]
        good = [_features({"packaging": "21.3", "rich": "13.%d" % (i % 2)}) for i in range(n_good)]
        answer = engine.suggest(_group(bad, good), bad[0])
        return answer["evidence"]["posterior"] if answer["match"] else 0.0

    assert posterior(2, 2) < posterior(4, 3) < posterior(8, 6) <= 1


def test_tie_between_packages_that_changed_together_is_broken_by_the_trace():
    bad = [_features({"packaging": "23.2", "pyparsing": "3.1.1"}) for _ in range(8)]
    good = [_features({"packaging": "21.3", "pyparsing": "2.4.7"}) for _ in range(6)]
    trace = (
        "Traceback (most recent call last):\n  File \"/venv/lib/python3.11/site-packages/setuptools/x.py\"\n"
        "AttributeError: module 'packaging.version' has no attribute 'LegacyVersion'"
    )
    mentions = engine.mentioned_packages(trace)
    assert {"packaging", "setuptools"} <= mentions and "pyparsing" not in mentions
    answer = engine.suggest(_group(bad, good, mentions), bad[0])
    # the trace names the cause; pyparsing moved with it in every run, so the command moves both to
    # the combination seen succeeding rather than packaging alone into one nobody ran
    assert answer["evidence"]["candidates"][0]["feature"] == "pkg:packaging"
    assert answer["solution"] == 'pip install "packaging==21.3" "pyparsing==2.4.7"'
    assert "pyparsing moved with it in every run" in answer["hint"]
    # nothing in the trace: name both rather than pick one at random
    answer = engine.suggest(_group(bad, good), bad[0])
    assert answer["match"] and "packaging" in answer["hint"] and "pyparsing" in answer["hint"]
    assert answer["solution"] == 'pip install "packaging==21.3" "pyparsing==2.4.7"'
    assert len(answer["evidence"]["candidates"]) == 2


def test_one_observed_fix_changing_one_package_is_enough():
    before = _features({"packaging": "23.2", "rich": "13.0"})
    after = _features({"packaging": "21.3", "rich": "13.0"})
    answer = engine.suggest(_group([before], [after], {"packaging"}, [FixPair(before, after)]), before)
    assert answer["match"] and answer["solution"] == 'pip install "packaging==21.3"'
    several = [FixPair(before, after)] * 3
    more = engine.suggest(_group([before] * 3, [after] * 3, {"packaging"}, several), before)
    assert more["evidence"]["posterior"] > answer["evidence"]["posterior"]
    # a package the trace does not name: the same one fix is enough when nothing else differed
    # between the two runs (a feature that did not vary is refuted by the success), but less sure
    unnamed = engine.suggest(_group([before], [after], pairs=[FixPair(before, after)]), before)
    assert unnamed["match"] and unnamed["solution"] == 'pip install "packaging==21.3"'
    assert unnamed["evidence"]["posterior"] < answer["evidence"]["posterior"]


def test_bystanders_riding_along_in_fixes_are_left_out():
    pairs, bad, good = [], [], []
    for i in range(4):  # every fix downgrades packaging; each also upgraded some other package
        before = _features({"packaging": "23.2", "rich": "13.0", "tqdm": "4.0", "click": "8.0"})
        after = dict(before, **{"pkg:packaging": "21.3", ["pkg:rich", "pkg:tqdm", "pkg:click", "pkg:rich"][i]: "9.9"})
        pairs.append(FixPair(before, after))
        bad.append(before)
        good.append(after)
    answer = engine.suggest(_group(bad, good, {"packaging"}, pairs), bad[0])
    assert answer["match"] and answer["solution"] == 'pip install "packaging==21.3"'
    assert answer["confidence"] >= 0.9


def test_presence_python_and_env_var_commands():
    cases = [
        ([_features({"typing": "3.7"})] * 6, [_features({})] * 5, "pip uninstall typing"),
        ([_features({})] * 6, [_features({"tzdata": "2024.1"})] * 5, 'pip install "tzdata==2024.1"'),
        ([_features({}, "3.12.1")] * 6, [_features({}, "3.11.7")] * 5, "use Python 3.11"),
        ([_features({}, LANG="C")] * 6, [_features({}, LANG="C.UTF-8")] * 5, "export LANG=C.UTF-8"),
        ([_features({}, PYTHONPATH="/x")] * 6, [_features({}, PYTHONPATH="MISSING")] * 5, "unset PYTHONPATH"),
    ]
    for bad, good, command in cases:
        answer = engine.suggest(_group(bad, good), bad[0])
        assert answer["match"] and answer["solution"] == command, (command, answer)


def test_abstains_when_the_data_does_not_separate():
    mixed = [_features({"packaging": v}) for v in ("23.2", "21.3") * 4]
    assert not engine.suggest(_group(mixed, mixed[:4]), mixed[0])["match"]  # fails everywhere
    assert not engine.suggest(_group(mixed, []), mixed[0])["match"]  # nothing ever succeeded
    one_bad, one_good = [_features({"packaging": "23.2"})], [_features({"packaging": "21.3"})]
    assert not engine.suggest(_group(one_bad, one_good), one_bad[0])["match"]  # too few runs
    bad = [_features({"packaging": "23.2"})] * 7
    good = [_features({"packaging": "21.3"})] * 5
    assert not engine.suggest(_group(bad, good), good[0])["match"]  # requester is fine already
    assert not engine.suggest(_group(bad, good), None)["match"]  # unknown requester


def test_per_machine_values_are_not_causes():
    bad = [_features({}, VIRTUAL_ENV="/home/u%d/venv" % i) for i in range(8)]
    good = [_features({}, VIRTUAL_ENV="/home/v%d/venv" % i) for i in range(8)]
    assert not engine.suggest(_group(bad, good), bad[0])["match"]


def test_the_active_venv_path_is_no_cause():
    """Five failures outside a venv, three successes in one: a chance split of a bug without an
    environment cause (the independent generator's). The venv shows in the packages; its path does not
    break code, unless the exception line names the variable."""
    packages = {"lib%d" % i: "1.%d" % i for i in range(40)}
    bad = [_features(packages, LANG="C.UTF-8", VIRTUAL_ENV="MISSING") for _ in range(5)]
    good = [_features(packages, LANG="C.UTF-8", VIRTUAL_ENV="~/venvs/app") for _ in range(3)]
    assert not engine.suggest(_group(bad, good), bad[0])["match"]
    named = _group(bad, good)._replace(message="keyerror: 'virtual_env'")
    assert engine.suggest(named, bad[0])["solution"] == "export VIRTUAL_ENV='~/venvs/app'"
    # the same split of a variable that is configuration is answered
    tz_bad = [_features(packages, LANG="C.UTF-8", TZ="MISSING") for _ in range(5)]
    tz_good = [_features(packages, LANG="C.UTF-8", TZ="UTC") for _ in range(3)]
    assert engine.suggest(_group(tz_bad, tz_good), tz_bad[0])["solution"] == "export TZ=UTC"


def test_mentions_map_import_names_to_distributions():
    text = (
        "File \"/usr/lib/python3/dist-packages/yaml/__init__.py\"\nModuleNotFoundError: No module named 'PIL'\n"
        "ImportError: cannot import name 'x' from 'Typing_Extensions' @ requests.sessions.Session.send < a.b"
    )
    assert {"pyyaml", "pillow", "typing-extensions", "requests"} <= engine.mentioned_packages(text)
    assert (
        engine.canonical_name("Typing_Extensions") == engine.canonical_name("typing.extensions") == "typing-extensions"
    )
    assert engine.command("pkg:x", ABSENT) == "pip uninstall x"


def test_inconsistent_fixes_are_not_evidence():
    # fixes that move a package the trace names back and forth between versions: a random walk
    versions = ["1.0", "1.1", "1.2", "1.3"]
    pairs, bad, good = [], [], []
    for i in range(12):
        before = _features({"pandas": versions[i % 4], "numpy": "1.%d" % (i % 3)})
        after = _features({"pandas": versions[(i + 1) % 4], "numpy": "1.%d" % (i % 3)})
        pairs.append(FixPair(before, after))
        bad.append(before)
        good.append(after)
    assert not engine.suggest(_group(bad, good, {"pandas"}, pairs), bad[0])["match"]


# -- noise: many features, few runs, flaky failures ------------------------------------------------


def test_two_hundred_features_against_six_runs_produce_no_chance_winner():
    import random

    rng = random.Random(4)
    names = ["dep%03d" % i for i in range(200)]

    def env():
        return _features({n: rng.choice(["1.0", "2.0"]) for n in names if rng.random() < 0.7})

    bad, good = [env() for _ in range(3)], [env() for _ in range(3)]
    assert not engine.suggest(_group(bad, good), bad[0])["match"]


def test_a_bug_that_fails_in_the_environments_that_also_pass_gets_no_fix():
    envs = [_features({"packaging": v, "rich": r}) for v in ("23.2", "21.3") for r in ("13.0", "12.0")]
    failing = envs * 3
    succeeding = envs * 2  # the same environments pass on a re-run
    assert not engine.suggest(_group(failing, succeeding), envs[0])["match"]


def test_a_failing_environment_that_passed_unchanged_is_evidence_against_what_it_shows():
    bad = [_features({"packaging": "23.2", "requests": "2.%d" % (i % 3), "rich": "13.%d" % (i % 2)}) for i in range(7)]
    good = [_features({"packaging": "21.3", "requests": "2.%d" % (i % 3), "rich": "13.%d" % (i % 2)}) for i in range(5)]
    rerun = _group(bad, good + [bad[0]])  # one failing environment also passed
    assert engine.suggest(rerun, bad[1])["match"]
    # ... and the pass named that failure (our agent's prev_env_hash): nothing visible changed
    assert not engine.suggest(rerun._replace(pairs=[FixPair(bad[0], bad[0])]), bad[1])["match"]
    # a working environment's flaky failure and its re-run's pass say little against the cause
    flaky = _group(bad + [good[0]], good + [good[0]], pairs=[FixPair(good[0], good[0])])
    assert engine.suggest(flaky, bad[1])["solution"] == 'pip install "packaging==21.3"'


def test_a_variable_the_team_listed_weighs_more_than_one_every_agent_collects():
    # split alike, nothing tells them apart but that someone chose to collect APP_MODE
    bad = [_env(APP_MODE="prod", LANG="C")] * 4
    good = [_env(APP_MODE="dev", LANG="C.UTF-8")] * 3
    hypotheses, log_none = engine._hypotheses(_group(bad, good), bad[0])
    posterior = dict(zip((h.feature for h in hypotheses), engine._posteriors(hypotheses, log_none)))
    assert posterior["env:APP_MODE"] > 2 * posterior["env:LANG"]


def test_flaky_failures_in_good_environments_do_not_hide_the_cause():
    bad = [_features({"packaging": "23.2", "rich": "13.%d" % (i % 3)}) for i in range(8)]
    good = [_features({"packaging": "21.3", "rich": "13.%d" % (i % 3)}) for i in range(8)]
    answer = engine.suggest(_group(bad + good[:1], good[1:], {"packaging"}), bad[0])  # one good env failed too
    assert answer["match"] and answer["solution"] == 'pip install "packaging==21.3"'


def test_a_bug_flaky_a_third_of_the_time_still_shows_its_cause():
    """Eight failures on the bad version, four more on the good one (a network blip, a race), eight
    successes on the good one; thirty unnamed packages vary from run to run. How flaky a bug is
    is its own: a fixed 10 % share of flaky failures made four of twelve too unlikely to answer."""

    def env(alpha: str, i: int) -> dict:
        packages = {"dep%02d" % k: "1.%d" % (i * (k + 1) % 3) for k in range(30)}
        return engine.env_features(dict(packages, alpha=alpha), "3.11.7", "CPython", "Linux", "x86_64", {})

    bad = [env("2.0", i) for i in range(8)] + [env("1.0", 100 + i) for i in range(4)]
    good = [env("1.0", 200 + i) for i in range(8)]
    answer = engine.suggest(_group(bad, good), bad[0])
    assert answer["match"] and answer["solution"] == 'pip install "alpha==1.0"', answer


# -- version ranges, packages that move together, packaging tools ----------------------------------


def test_version_range_proposes_the_newest_good_version_below_it():
    bad = [_features({"urllib3": v}) for v in ("2.0.2", "2.0.7", "2.1.0", "2.2.1", "2.0.2")]
    good = [_features({"urllib3": v}) for v in ("1.26.5", "1.26.18", "1.25.11", "1.26.18")]
    asking = _features({"urllib3": "2.3.0"})  # a bad version nobody reported failing
    answer = engine.suggest(_group(bad, good, {"urllib3"}), asking)
    assert answer["match"] and answer["solution"] == 'pip install "urllib3==1.26.18"'
    assert "every version seen from 2.0.2 on fails" in answer["hint"]
    assert answer["evidence"]["candidates"][0]["failing_range_from"] == "2.0.2"


def test_packages_moving_together_go_to_a_combination_seen_succeeding():
    bad = [_features({"pandas": "2.2.3", "numpy": n}) for n in ("2.0.1", "2.1.0", "2.0.1", "2.1.0")]
    good_envs = [
        _features({"pandas": "1.5.3", "numpy": "1.26.4"}),
        _features({"pandas": "1.5.2", "numpy": "1.24.0"}),
        _features({"pandas": "1.5.3", "numpy": "1.26.4"}),
    ]
    group = _group(bad, good_envs, {"pandas"})._replace(good_envs=lambda: good_envs)
    answer = engine.suggest(group, bad[0])
    assert answer["match"] and answer["solution"] == 'pip install "pandas==1.5.3" "numpy==1.26.4"'
    assert "numpy" in answer["hint"]


def test_a_cause_the_trace_names_is_answered_however_many_packages_moved_with_it():
    others = ["rich", "tqdm", "click", "idna", "six"]
    bad = [_features(dict({"pandas": "2.2.3"}, **{name: "2.0" for name in others}))] * 4
    good = [_features(dict({"pandas": "1.5.3"}, **{name: "1.0" for name in others}))] * 3
    answer = engine.suggest(_group(bad, good, {"pandas"}), bad[0])
    assert answer["match"] and answer["evidence"]["candidates"][0]["feature"] == "pkg:pandas"
    assert answer["solution"].startswith('pip install "pandas==1.5.3"') and all(
        '"%s==1.0"' % name in answer["solution"] for name in others
    )
    # nothing in the trace: six features alike are chance
    assert not engine.suggest(_group(bad, good), bad[0])["match"]


def test_a_package_the_trace_runs_through_does_not_outweigh_a_python_lacking_the_module():
    failing = [_features({"black": "23.1", "p%d" % i: "1.0"}, "3.10.13") for i in range(2)]
    group = _group(failing, [], mentions={"black"})._replace(message="modulenotfounderror: no module named 'tomllib'")
    answer = engine.suggest(group, failing[0])
    assert answer["match"] and answer["solution"] == "use Python 3.11", answer


def test_packaging_tools_are_bystanders_of_an_interpreter_change():
    before = _features({"pip": "23.0.1", "setuptools": "65.5.0"}, "3.10.13")
    after = _features({"pip": "23.2.1", "setuptools": "68.0.0"}, "3.11.7")
    group = _group([before], [after], pairs=[FixPair(before, after)])._replace(
        message="modulenotfounderror: no module named 'tomllib'"
    )
    answer = engine.suggest(group, before)
    assert answer["match"] and answer["solution"] == "use Python 3.11"
    assert "standard-library module of Python from 3.11" in answer["hint"]


def test_setuptools_is_the_cause_when_the_trace_names_pkg_resources():
    assert "setuptools" in engine.mentioned_packages(
        'File "/venv/lib/python3.12/site-packages/pkg_resources/__init__.py", line 3, in <module>'
    )


# -- what the traceback says about Python --------------------------------------------------------


def test_python_requirement_table():
    assert engine.python_requirement("modulenotfounderror: no module named 'tomllib'") == ("min", (3, 11))
    assert engine.python_requirement("ModuleNotFoundError: No module named 'distutils.util'") == ("max", (3, 12))
    assert engine.python_requirement("modulenotfounderror: no module named 'telnetlib'") == ("max", (3, 13))
    assert engine.python_requirement("importerror: cannot import name 'mapping' from 'collections' (<path>)") == (
        "max",
        (3, 10),
    )
    assert engine.python_requirement("modulenotfounderror: no module named 'numpy'") is None


def test_stdlib_table_agrees_with_the_interpreters_here():
    import json
    import subprocess

    import support

    names = {}
    import glob

    for version in ("3.10", "3.11", "3.12", "3.13"):
        found = sorted(glob.glob(str(support.pyenv_root() / "versions" / (version + ".*") / "bin" / "python3")))
        if found:
            code = "import sys, json; print(json.dumps(sorted(sys.stdlib_module_names)))"
            out = subprocess.run([found[0], "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
            names[tuple(int(n) for n in version.split("."))] = set(json.loads(out))
    if len(names) < 2:
        import pytest

        pytest.skip("fewer than two CPython 3.10+ interpreters under pyenv")
    for module, since in engine.STDLIB_ADDED.items():
        for version, present in names.items():
            assert (module in present) == (version >= since), (module, version)
    for module, gone in engine.STDLIB_REMOVED.items():
        for version, present in names.items():
            assert (module in present) == (version < gone), (module, version)


def test_no_module_on_an_old_python_without_any_success_still_names_the_version():
    failing = [_features({}, "3.10.13")] * 3
    group = _group(failing, [])._replace(message="modulenotfounderror: no module named 'tomllib'")
    answer = engine.suggest(group, failing[0])
    assert answer["match"] and answer["solution"] == "use Python 3.11"
    # on a Python that has the module, something else is missing: no interpreter advice
    modern = [_features({}, "3.12.1")] * 3
    group = _group(modern, [])._replace(message="modulenotfounderror: no module named 'tomllib'")
    assert not engine.suggest(group, modern[0])["match"]


# -- environment variables: not collected is unknown, not unset ------------------------------------


def test_an_env_var_counts_only_in_runs_that_collected_it():
    collected = [engine.env_features({}, "3.11.7", "CPython", "Linux", "x86_64", {"APP_MODE": "prod"})] * 4
    blind = [engine.env_features({}, "3.11.7", "CPython", "Linux", "x86_64", {})] * 4
    good = [engine.env_features({}, "3.11.7", "CPython", "Linux", "x86_64", {"APP_MODE": "dev"})] * 5
    group = _group(collected + blind, good)._replace(message="valueerror: app_mode 'prod' is not supported")
    answer = engine.suggest(group, collected[0])
    assert answer["match"] and answer["solution"] == "export APP_MODE=dev"
    assert "fails in 4/4 environments with APP_MODE prod" in answer["hint"]  # not "8 runs with unset APP_MODE"
    runs = answer["evidence"]["candidates"][0]["runs"]
    assert engine.UNSET not in runs and engine.ABSENT not in runs
    assert engine.env_features({}, "", "", "", "", {"X": "MISSING"}) == {"env:X": engine.UNSET}


def _env(**variables) -> dict:
    return engine.env_features({"pip": "23.2.1"}, "3.11.7", "CPython", "Linux", "x86_64", variables)


def test_one_fix_that_changed_only_an_env_var_names_it():
    # the real breakage env-app-mode: one failing run, one success of the same script with only
    # APP_MODE changed; everything else did not vary, so the success refutes it
    before = _env(APP_MODE="prod", LANG="C.UTF-8", TZ="MISSING", PYTHONPATH="MISSING", NO_PROXY="MISSING")
    after = dict(before, **{"env:APP_MODE": "dev"})
    group = _group([before], [after], pairs=[FixPair(before, after)])._replace(
        message="permissionerror: the report bucket is read-only for this host"
    )
    answer = engine.suggest(group, before)
    assert answer["match"] and answer["solution"] == "export APP_MODE=dev", answer
    # the same runs without the fix: two runs that differ in one variable are not enough
    assert not engine.suggest(group._replace(pairs=[]), before)["match"]


def test_a_fix_whose_runs_did_not_both_collect_a_variable_says_nothing_about_it():
    bad = [_env(APP_MODE="prod", LANG=lang) for lang in ("C", "C.UTF-8") * 3]
    good = [_env(APP_MODE="dev", LANG=lang) for lang in ("C", "C.UTF-8") * 2]
    group = _group(bad, good)._replace(message="valueerror: unsupported mode")
    blind_after = engine.env_features({"pip": "23.2.1"}, "3.11.7", "CPython", "Linux", "x86_64", {"LANG": "C"})
    blind_before = dict(blind_after)
    blind_before.pop("env:LANG")
    unseen = [FixPair(dict(blind_before, **{"pkg:rich": "13.0"}), dict(blind_after, **{"pkg:rich": "12.0"}))] * 3
    with_unseen = engine.suggest(group._replace(pairs=unseen), bad[0])
    assert with_unseen["match"] and with_unseen["solution"] == "export APP_MODE=dev"
    without = engine.suggest(group, bad[0])
    candidate = with_unseen["evidence"]["candidates"][0]
    assert candidate["feature"] == "env:APP_MODE" and with_unseen["confidence"] >= without["confidence"] - 0.05


def test_an_uncollected_asker_is_answered_as_the_collecting_failing_runs_were():
    bad = [_env(APP_MODE="prod")] * 4
    good = [_env(APP_MODE="dev")] * 4
    asker = engine.env_features({"pip": "23.2.1"}, "3.11.7", "CPython", "Linux", "x86_64", {})
    group = _group(bad + [asker] * 2, good)._replace(message="valueerror: app_mode 'prod' is not supported")
    answer = engine.suggest(group, asker)
    assert answer["match"] and answer["solution"] == "export APP_MODE=dev"
    assert answer["evidence"]["candidates"][0]["current"] == ""


def test_an_unset_variable_is_one_of_two_hypotheses_whatever_the_values_that_work():
    bad = [_env(DATA_DIR="MISSING")] * 3
    good = [_env(DATA_DIR=path) for path in ("/srv/data", "/mnt/shared/data", "/data")]
    answer = engine.suggest(_group(bad, good)._replace(message="keyerror: 'data_dir'"), bad[0])
    assert answer["match"] and answer["solution"].startswith("export DATA_DIR=/"), answer
    runs = {engine.UNSET: (3, 0), "/srv/data": (0, 1), "/mnt/shared/data": (0, 1), "/data": (0, 1)}
    # named by the exception line, "unset fails" is one of two hypotheses; "/x fails" one of fourteen
    as_unset = engine.separation("env:DATA_DIR", runs, named=True)
    assert as_unset.log_bf > engine.separation("env:DATA_DIR", runs).log_bf
    assert (
        as_unset.log_bf
        > engine.separation("env:DATA_DIR", dict(runs, **{"/x": runs.pop(engine.UNSET)}), named=True).log_bf
    )


def test_a_key_error_naming_a_variable_the_failing_runs_lacked_has_an_environment_cause():
    """os.environ raises KeyError: 'DATA_DIR' exactly when it is unset: like a module the asker's
    Python lacks, the line says what the environment is missing, and one success shows a value."""

    def env(data_dir: str) -> dict:
        packages = {"dep%02d" % i: "1.%d" % (i % 3) for i in range(40)}  # fifty-odd features, as in a venv
        return engine.env_features(packages, "3.11.7", "CPython", "Linux", "x86_64", {"DATA_DIR": data_dir})

    bad, good = env("MISSING"), env("/srv/data")
    group = _group([bad], [good])._replace(message="keyerror: 'data_dir'")
    answer = engine.suggest(group, bad)
    assert answer["match"] and answer["solution"] == "export DATA_DIR=/srv/data", answer
    # another key: the line says nothing of the environment, and one failure against one success
    # is too little; a failing run that had the variable set (to the value that works): it was
    # not what the runs lacked
    assert not engine.suggest(group._replace(message="keyerror: 'id'"), bad)["match"]
    also_set = _group([bad, env("/srv/data")], [good, good])._replace(message="keyerror: 'data_dir'")
    assert not engine.suggest(also_set, bad)["match"]


def test_a_variable_the_failing_runs_lacked_outweighs_a_package_that_splits_more_runs():
    """Half the runs' agents collected DATA_DIR: two failures had it unset, one success set. A
    package splits all seven runs as well. os.environ's KeyError names the variable, so the
    variable is the cause, as a module the interpreter lacks is (and the package, splitting other
    runs than the variable does, did not move with it)."""

    def env(variables: dict, alpha: str) -> dict:
        packages = {"dep%02d" % i: "1.%d" % (i % 3) for i in range(30)}
        return engine.env_features(dict(packages, alpha=alpha), "3.11.7", "CPython", "Linux", "x86_64", variables)

    bad = [env({"DATA_DIR": "MISSING"}, "2.0")] * 2 + [env({}, "2.0")] * 2
    good = [env({"DATA_DIR": "/srv/data"}, "1.0")] + [env({}, "1.0")] * 2
    answer = engine.suggest(_group(bad, good)._replace(message="keyerror: 'data_dir'"), bad[0])
    assert answer["match"] and answer["solution"] == "export DATA_DIR=/srv/data", answer
    assert engine.MIN_CONFIDENCE <= answer["confidence"]


def test_a_key_error_speaks_for_failing_runs_that_did_not_collect_the_variable():
    """No failing run collected DATA_DIR (their agents were not told to), nor did the asker; one
    success did, with a value. The line says what the failing runs lacked: set it to that value."""

    def env(variables: dict) -> dict:
        packages = {"dep%02d" % i: "1.%d" % (i % 3) for i in range(30)}
        return engine.env_features(packages, "3.11.7", "CPython", "Linux", "x86_64", variables)

    bad = [env({}) for _ in range(3)]
    group = _group(bad, [env({"DATA_DIR": "/srv/data"})])._replace(message="keyerror: 'data_dir'")
    answer = engine.suggest(group, bad[0])
    assert answer["match"] and answer["solution"] == "export DATA_DIR=/srv/data", answer
    # a failing run that collected it set: the line no longer says what they lacked
    also_set = _group(bad + [env({"DATA_DIR": "/mnt/data"})], [env({"DATA_DIR": "/srv/data"})])
    assert not engine.suggest(also_set._replace(message="keyerror: 'data_dir'"), bad[0])["match"]


# -- where a bug is raised -----------------------------------------------------------------------

_LIB_TRACE = (
    'Traceback (most recent call last):\n  File "/home/u/jobs/%s.py", line 3, in <module>\n    main()\n'
    '  File "/home/u/jobs/%s.py", line 9, in main\n    df.append(row)\n'
    '  File "/venv/lib/python3.11/site-packages/pandas/core/generic.py", line 6299, in __getattr__\n'
    '    return object.__getattribute__(self, name)\n'
    "AttributeError: 'DataFrame' object has no attribute 'append'\n"
)


def test_a_library_bug_is_one_place_whichever_script_hits_it():
    assert (
        engine.where_raised("x", _LIB_TRACE % ("a", "a"))
        == engine.where_raised("x", _LIB_TRACE % ("b", "b"))
        == "lib:pandas"
    )


def test_user_code_places_tell_scripts_apart_and_both_clients_agree():
    trace = (
        'Traceback (most recent call last):\n  File "/srv/jobs/orders.py", line 12, in <module>\n    main()\n'
        '  File "/srv/jobs/orders.py", line 8, in load\n    row["id"]\nKeyError: \'id\'\n'
    )
    ours = engine.where_raised("KeyError: 'id' @ __main__.load < __main__.<module>", trace)
    theirs = engine.where_raised("keyerror: 'id'", trace)
    assert ours == theirs == "orders.load"
    assert engine.where_raised("keyerror: 'id'", trace.replace("orders", "billing")) == "billing.load"
    assert engine.places_match("orders.load", "KeyError: 'id' @ __main__.load < __main__.<module>")


def test_numbers_in_a_library_message_tell_callers_apart():
    trace = (
        'Traceback (most recent call last):\n  File "/srv/a.py", line 1, in <module>\n'
        '  File "/venv/lib/python3.11/site-packages/pipeline/runner.py", line 5, in run_step\n'
        'RuntimeError: step %d failed\n'
    )
    assert engine.where_raised("x", trace % 12) == "lib:pipeline [12]"
    assert engine.where_raised("x", trace % 12) != engine.where_raised("x", trace % 13)


def test_import_errors_are_about_the_module_not_the_place():
    trace = (
        'Traceback (most recent call last):\n  File "/srv/a.py", line 1, in <module>\n'
        "ModuleNotFoundError: No module named 'tomllib'\n"
    )
    assert engine.where_raised("ModuleNotFoundError: No module named 'tomllib' @ __main__.<module>", trace) == ""


def test_where_raised_takes_any_text():
    from hypothesis import given, settings
    from hypothesis import strategies as st

    @settings(max_examples=300, deadline=None)
    @given(st.text(max_size=3000), st.text(max_size=3000))
    def check(signature, trace):
        first = engine.where_raised(signature, trace)
        assert first == engine.where_raised(signature, trace) and isinstance(first, str) and len(first) < 200
        engine.places_match(first, signature)
        engine.mentioned_packages(trace + signature)
        engine.python_requirement(signature)

    check()
    garbage = "".join(chr(33 + (i * 7919) % 90) for i in range(25_000))
    assert engine.where_raised(garbage, garbage) == engine.where_raised(garbage, garbage)
    frames_only = '  File "/srv/a.py", line 1, in main\n' * 500
    assert engine.where_raised("", frames_only) == "a.main"


# -- over the wire: grouping by where the bug is raised, bad traces ---------------------------------


def _trace(path: str, function: str, line: str) -> str:
    return (
        'Traceback (most recent call last):\n  File "%s", line 40, in <module>\n    main()\n'
        '  File "%s", line 12, in %s\n    do_it()\n%s\n' % (path, path, function, line)
    )


def _post_error(server, env_hash, script_id, sig, trace, ours=True):
    from conftest import error_beacon

    body = error_beacon(env_hash, script_id, sig if ours else sig.split(" @ ")[0].lower(), trace=trace)
    status, answer = server.request("POST", "/beacon", body)
    assert status in (200, 204), answer


def _two_scripts_raising_key_error_id(server) -> str:
    """Two scripts raise KeyError: 'id' in their own code, each with its own cause (orders-lib 2.0,
    billing-lib 5.0) and its own venv, from both clients; returns our agent's signature of it."""
    from conftest import env_body

    for i in range(6):
        orders = {"orders-lib": "2.0" if i < 4 else "1.0", "sqlalchemy": "2.0.3", "rich": "1"}
        server.request("POST", "/env", env_body("o%d" % i, orders))
        billing = {"billing-lib": "5.0" if i < 4 else "4.0", "stripe": "7.1.0", "rich": "1"}
        server.request("POST", "/env", env_body("b%d" % i, billing))
    sig = "KeyError: 'id' @ __main__.load < __main__.<module>"
    for i in range(4):
        _post_error(server, "o%d" % i, "so%d" % i, sig, _trace("/srv/orders.py", "load", "KeyError: 'id'"), i % 2 == 0)
        _post_error(server, "b%d" % i, "sb%d" % i, sig, _trace("/srv/billing.py", "load", "KeyError: 'id'"), i % 2 == 1)
    for i in range(4, 6):
        for prefix in "ob":
            server.request(
                "POST",
                "/beacon",
                {
                    "kind": "success",
                    "env_hash": "%s%d" % (prefix, i),
                    "script_id": "s%s%d" % (prefix, i - 4),
                    "ts": 1.7e9,
                },
            )
    return sig


def test_unrelated_scripts_sharing_a_generic_message_do_not_pollute_each_other(server):
    from conftest import env_body

    sig = _two_scripts_raising_key_error_id(server)
    groups = server.request("GET", "/api/errors")[1]["groups"]
    assert sorted(g["where"] for g in groups) == ["billing.load", "orders.load"]
    assert all(g["group_key"] == "keyerror: 'id'" and g["failing_runs"] == 4 for g in groups)
    # each asker is answered from its own script's bug, whichever client asks
    for env_hash, script_id, fix in (
        ("o0", "so0", 'pip install "orders-lib==1.0"'),
        ("b1", "sb1", 'pip install "billing-lib==4.0"'),
    ):
        for request in (
            {"error_sig": sig, "env_hash": env_hash, "script_id": script_id},
            {"error_sig": "keyerror: 'id'", "env_hash": env_hash},
        ):
            answer = server.request("POST", "/suggest", request)[1]
            assert answer.get("solution") == fix, (request, answer)
    # an environment with no error stored yet: our agent's script_id (the script's content) tells
    server.request("POST", "/env", env_body("new", {"orders-lib": "2.0", "billing-lib": "5.0", "rich": "1"}))
    for script_id, fix in (("so1", 'pip install "orders-lib==1.0"'), ("sb0", 'pip install "billing-lib==4.0"')):
        answer = server.request("POST", "/suggest", {"error_sig": sig, "env_hash": "new", "script_id": script_id})[1]
        assert answer.get("solution") == fix, (script_id, answer)


def test_an_asker_no_run_links_to_a_group_is_answered_from_the_one_its_environment_fits(server):
    from conftest import env_body

    sig = _two_scripts_raising_key_error_id(server)
    for i in range(6, 10):  # a few more failures of each: four runs a bug fit a new environment loosely
        for prefix, packages in (
            ("o", {"orders-lib": "2.0", "sqlalchemy": "2.0.3", "rich": "1"}),
            ("b", {"billing-lib": "5.0", "stripe": "7.1.0", "rich": "1"}),
        ):
            env_hash = "%s%d" % (prefix, i)
            server.request("POST", "/env", env_body(env_hash, packages))
            script = "/srv/%s.py" % ("orders" if prefix == "o" else "billing")
            _post_error(server, env_hash, "s%s%d" % (prefix, i), sig, _trace(script, "load", "KeyError: 'id'"))
    # a 0.4.2 client asks before its beacon is stored and sends no script id: the line fits both
    # groups, and only the environment tells which bug it hit
    for env_hash, packages, fix in (
        ("new-o", {"orders-lib": "2.0", "sqlalchemy": "2.0.3", "rich": "1"}, 'pip install "orders-lib==1.0"'),
        ("new-b", {"billing-lib": "5.0", "stripe": "7.1.0", "rich": "1"}, 'pip install "billing-lib==4.0"'),
    ):
        server.request("POST", "/env", env_body(env_hash, packages))
        answer = server.request("POST", "/suggest", {"error_sig": "keyerror: 'id'", "env_hash": env_hash})[1]
        assert answer.get("solution") == fix, answer
        assert answer["evidence"]["bug_share"] > 0.95 and answer["confidence"] <= answer["evidence"]["bug_share"]
    # an environment that fits both (or neither) tells nothing: no guess between the two bugs
    both = {"orders-lib": "2.0", "sqlalchemy": "2.0.3", "billing-lib": "5.0", "stripe": "7.1.0", "rich": "1"}
    server.request("POST", "/env", env_body("both", both))
    answer = server.request("POST", "/suggest", {"error_sig": "keyerror: 'id'", "env_hash": "both"})[1]
    assert answer == {
        "match": False,
        "reason": "2 bugs share this exception line and the environment does not tell which one this is",
    }
    server.request("POST", "/env", env_body("neither", {"other-lib": "3.0"}))
    assert not server.request("POST", "/suggest", {"error_sig": "keyerror: 'id'", "env_hash": "neither"})[1]["match"]


def test_membership_leaves_a_bug_none_of_the_groups_holds_its_share():
    orders = _group([{"pkg:orders-lib": "2.0"}] * 4, [{"pkg:orders-lib": "1.0"}] * 2)
    billing = _group([{"pkg:billing-lib": "5.0"}] * 4, [{"pkg:billing-lib": "4.0"}] * 2)
    fits_orders = engine._membership([orders, billing], {"pkg:orders-lib": "2.0"})
    assert fits_orders[0] > 0.8 and fits_orders[0] > 10 * fits_orders[1]
    # an environment like neither group's failing runs fits neither, and less so with a package
    # none of their runs had: the rest is "a bug not seen yet"
    neither = engine._membership([orders, billing], {})
    unlike = engine._membership([orders, billing], {"pkg:other-lib": "3.0"})
    assert max(neither) < 0.5 and max(unlike) < max(neither) and sum(unlike) < sum(neither) < 1
    # a variable the asker collected and no group's runs did says nothing, nor does a value of one
    # none of their runs had (a machine's own path, a new setting), nor the venv's path
    nothing = engine._membership([orders, billing], {})
    assert nothing == engine._membership([orders, billing], {"env:X": "1"})
    with_paths = _group([{"pkg:orders-lib": "2.0", "env:PYTHONPATH": "/home/a"}] * 4, [{"pkg:orders-lib": "1.0"}] * 2)
    fits = engine._membership([with_paths, billing], {"pkg:orders-lib": "2.0"})
    assert fits == engine._membership(
        [with_paths, billing], {"pkg:orders-lib": "2.0", "env:PYTHONPATH": "/home/b", "env:VIRTUAL_ENV": "/home/b/v"}
    )
    # counts a purge left inconsistent weigh as nothing rather than fail
    broken = _group([{"env:X": "1"}] * 2, [])._replace(counts={"env:X": {"1": (-1, 2)}, "pkg:a": {"1": (3, -1)}})
    assert all(0 <= p <= 1 for p in engine._membership([broken, billing], {"env:X": "1", "pkg:a": "1"}))


def test_one_library_bug_from_several_scripts_and_both_clients_is_one_group(server):
    from conftest import env_body

    line = "AttributeError: 'DataFrame' object has no attribute 'append'"
    lib = (
        'Traceback (most recent call last):\n  File "/home/u/%s.py", line 3, in <module>\n    main()\n'
        '  File "/venv/lib/python3.11/site-packages/pandas/core/generic.py", line 6299, in __getattr__\n'
        '    return object.__getattribute__(self, name)\n' + line + "\n"
    )
    for i, script in enumerate(["report", "export", "daily"]):
        server.request("POST", "/env", env_body("e%d" % i, {"pandas": "2.2.3"}))
        _post_error(
            server,
            "e%d" % i,
            "s%d" % i,
            line + " @ pandas.core.generic.NDFrame.__getattr__ < __main__.main",
            lib % script,
            ours=i != 1,
        )
    groups = server.request("GET", "/api/errors")[1]["groups"]
    assert [(g["where"], g["count"], g["scripts"]) for g in groups] == [("lib:pandas", 3, 3)]


@pytest.mark.parametrize(
    "trace,sig",
    [
        ("", "ValueError: no frames at all"),
        ('  File "/srv/a.py", line 1, in main\n' * 300, None),  # frames only
        ("".join(chr(33 + (i * 7919) % 90) for i in range(25_000)), None),  # garbage
        (
            "Traceback (most recent call last):\n  File \"/srv/a.py\", line 1, in <module>\nValueError: x\n",
            "valueerror: x",
        ),  # the 0.4.2 client's form
        ("\x00\x01 \u202e\ufeff", "  \n  Error @ @ @ < < .. .\n"),
    ],
)
def test_any_trace_or_signature_is_grouped_deterministically(server, trace, sig):
    from conftest import env_body

    server.request("POST", "/env", env_body("e1", {"x": "1"}))
    body = {"kind": "error", "env_hash": "e1", "script_id": "s1", "ts": 1.7e9, "trace": trace}
    if sig is not None:
        body["error_sig"] = sig
    first = server.request("POST", "/beacon", body)
    second = server.request("POST", "/beacon", body)
    assert first[0] == second[0] == 200, (first, second)
    groups = server.request("GET", "/api/errors")[1]["groups"]
    assert len(groups) == 1 and groups[0]["count"] == 2
    status, answer = server.request("POST", "/suggest", {"error_sig": sig or trace[-2000:], "env_hash": "e1"})
    assert status == 200 and answer["match"] is False


def test_a_beacon_with_neither_signature_nor_exception_line_is_a_4xx(server):
    status, answer = server.request(
        "POST", "/beacon", {"kind": "error", "env_hash": "e", "script_id": "s", "ts": 1.7e9, "trace": "   \n\n"}
    )
    assert status == 400 and "error_sig" in answer["error"]


def test_a_re_run_that_passes_without_naming_its_failure_is_seen_as_one(server):
    from conftest import env_body, error_beacon

    def success(env_hash: str, script_id: str) -> None:
        server.request(
            "POST", "/beacon", {"kind": "success", "env_hash": env_hash, "script_id": script_id, "ts": 1.7e9}
        )

    # the 0.4.2 client: no prev_env_hash (and its env_hash covers the packages only)
    sig = "runtimeerror: export failed"
    for i in range(12):
        server.request(
            "POST", "/env", env_body("e%d" % i, {"packaging": "23.2" if i < 7 else "21.3", "rich": "13.%d" % (i % 2)})
        )
    for i in range(7):
        server.request("POST", "/beacon", error_beacon("e%d" % i, "s%d" % i, sig))
    for i in range(7, 12):
        success("e%d" % i, "s%d" % (i - 7))  # the same scripts, passing on other machines
    asking = {"error_sig": sig, "env_hash": "e1"}
    assert server.request("POST", "/suggest", asking)[1]["match"]
    success("e0", "s0")  # a failing machine's re-run passes, nothing changed
    assert not server.request("POST", "/suggest", asking)[1]["match"]


def test_a_0_4_2_pass_on_a_known_environment_says_nothing_about_its_variables(server):
    """The 0.4.2 client hashes the package list only and posts no /env after a success: its pass on
    the failing machine's packages may be exactly the variable fixed, so the variables the failure
    posted are not counted for the pass, nor held against as a re-run (our agent's are)."""
    from conftest import env_body, error_beacon

    sig = "runtimeerror: export failed"
    ours = {"agent": "corp-error-agent/0.5.0", "script_name": "export.py"}
    for i in range(4):
        server.request("POST", "/env", env_body("bad%d" % i, {"rich": "13.%d" % i}, APP_MODE="prod"))
        server.request("POST", "/beacon", error_beacon("bad%d" % i, "old%d" % i, sig))  # 0.4.2: no agent
    for i in range(3):
        server.request("POST", "/env", env_body("good%d" % i, {"rich": "13.%d" % i}, APP_MODE="dev"))
        server.request(
            "POST", "/beacon", dict(kind="success", env_hash="good%d" % i, script_id="new", ts=1.7e9, **ours)
        )
        server.request("POST", "/beacon", error_beacon("bad%d" % (i + 1), "new", sig, **ours))
    for i in range(2):  # the 0.4.2 machines set APP_MODE=dev and passed: the same package list, the same hash
        server.request(
            "POST", "/beacon", {"kind": "success", "env_hash": "bad%d" % i, "script_id": "old%d" % i, "ts": 1.7e9}
        )
    answer = server.request("POST", "/suggest", {"error_sig": sig, "env_hash": "bad3"})[1]
    assert answer["match"] and answer["solution"] == "export APP_MODE=dev", answer
    runs = answer["evidence"]["candidates"][0]["runs"]
    assert runs["prod"]["succeeding"] == 0


def test_a_re_run_whose_pass_did_not_collect_a_variable_says_nothing_about_it():
    bad = [_env(APP_MODE="prod", LANG=lang) for lang in ("C", "C.UTF-8") * 2]
    good = [_env(APP_MODE="dev", LANG=lang) for lang in ("C", "C.UTF-8") * 2]
    group = _group(bad, good)._replace(message="valueerror: unsupported mode")
    unknown = dict(bad[0])
    unknown.pop("env:APP_MODE")
    with_pass = engine.suggest(group._replace(pairs=[FixPair(bad[0], unknown)]), bad[1])
    assert with_pass["match"] and with_pass["solution"] == "export APP_MODE=dev"
    assert with_pass["confidence"] >= engine.suggest(group, bad[1])["confidence"]
