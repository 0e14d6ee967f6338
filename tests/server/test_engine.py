"""The analysis engine on hand-made populations: answers, ties, abstentions, commands."""
from __future__ import annotations

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
    assert "fails in 7/7 runs with packaging 23.2; succeeds in 5/5 with 21.3" in answer["hint"]
    assert answer["recommendation"] == answer["hint"]
    assert 0.5 < answer["confidence"] < 0.9   # 12 runs are evidence, not certainty


def test_more_runs_raise_confidence():
    def confidence(n_bad, n_good):
        bad = [_features({"packaging": "23.2"}) for _ in range(n_bad)]
        good = [_features({"packaging": "21.3"}) for _ in range(n_good)]
        return engine.suggest(_group(bad, good), bad[0])["confidence"]
    assert confidence(7, 5) < confidence(30, 20) < 1


def test_tie_between_packages_that_changed_together_is_broken_by_the_trace():
    bad = [_features({"packaging": "23.2", "pyparsing": "3.1.1"}) for _ in range(8)]
    good = [_features({"packaging": "21.3", "pyparsing": "2.4.7"}) for _ in range(6)]
    trace = ("Traceback (most recent call last):\n  File \"/venv/lib/python3.11/site-packages/setuptools/x.py\"\n"
             "AttributeError: module 'packaging.version' has no attribute 'LegacyVersion'")
    mentions = engine.mentioned_packages(trace)
    assert {"packaging", "setuptools"} <= mentions and "pyparsing" not in mentions
    answer = engine.suggest(_group(bad, good, mentions), bad[0])
    assert answer["solution"] == 'pip install "packaging==21.3"'
    # nothing in the trace: name both rather than pick one at random
    answer = engine.suggest(_group(bad, good), bad[0])
    assert answer["match"] and "packaging" in answer["hint"] and "pyparsing" in answer["hint"]
    assert answer["solution"] == 'pip install "packaging==21.3" "pyparsing==2.4.7"'
    assert len(answer["evidence"]["candidates"]) == 2


def test_one_observed_fix_changing_one_package_is_enough():
    before = _features({"packaging": "23.2", "rich": "13.0"})
    after = _features({"packaging": "21.3", "rich": "13.0"})
    answer = engine.suggest(_group([before], [after], pairs=[FixPair(before, after, True)]), before)
    assert answer["match"] and answer["solution"] == 'pip install "packaging==21.3"'
    assert 0.6 <= answer["confidence"] < 0.9
    several = [FixPair(before, after, False)] * 3
    assert engine.suggest(_group([before] * 3, [after] * 3, pairs=several), before)["confidence"] > answer["confidence"]


def test_fix_pair_with_bystander_prefers_the_package_the_trace_names():
    before = _features({"packaging": "23.2", "pyparsing": "3.1.1"})
    after = _features({"packaging": "21.3", "pyparsing": "2.4.7"})
    answer = engine.suggest(_group([before], [after], {"packaging"}, [FixPair(before, after, True)]), before)
    assert answer["solution"] == 'pip install "packaging==21.3"'


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
    assert not engine.suggest(_group(mixed, mixed[:4]), mixed[0])["match"]          # fails everywhere
    assert not engine.suggest(_group(mixed, []), mixed[0])["match"]                 # nothing ever succeeded
    one_bad, one_good = [_features({"packaging": "23.2"})], [_features({"packaging": "21.3"})]
    assert not engine.suggest(_group(one_bad, one_good), one_bad[0])["match"]       # too few runs
    bad = [_features({"packaging": "23.2"})] * 7
    good = [_features({"packaging": "21.3"})] * 5
    assert not engine.suggest(_group(bad, good), good[0])["match"]                  # requester is fine already
    assert not engine.suggest(_group(bad, good), None)["match"]                     # unknown requester


def test_per_machine_values_are_not_causes():
    bad = [_features({}, VIRTUAL_ENV="/home/u%d/venv" % i) for i in range(8)]
    good = [_features({}, VIRTUAL_ENV="/home/v%d/venv" % i) for i in range(8)]
    assert not engine.suggest(_group(bad, good), bad[0])["match"]


def test_mentions_map_import_names_to_distributions():
    text = ("File \"/usr/lib/python3/dist-packages/yaml/__init__.py\"\nModuleNotFoundError: No module named 'PIL'\n"
            "ImportError: cannot import name 'x' from 'Typing_Extensions' @ requests.sessions.Session.send < a.b")
    assert {"pyyaml", "pillow", "typing-extensions", "requests"} <= engine.mentioned_packages(text)
    assert engine.canonical_name("Typing_Extensions") == engine.canonical_name("typing.extensions") == \
        "typing-extensions"
    assert engine.command("pkg:x", ABSENT) == "pip uninstall x"


def test_inconsistent_fixes_are_not_evidence():
    # fixes that move a package the trace names back and forth between versions: a random walk
    versions = ["1.0", "1.1", "1.2", "1.3"]
    pairs, bad, good = [], [], []
    for i in range(12):
        before = _features({"pandas": versions[i % 4], "numpy": "1.%d" % (i % 3)})
        after = _features({"pandas": versions[(i + 1) % 4], "numpy": "1.%d" % (i % 3)})
        pairs.append(FixPair(before, after, False))
        bad.append(before)
        good.append(after)
    assert not engine.suggest(_group(bad, good, {"pandas"}, pairs), bad[0])["match"]
