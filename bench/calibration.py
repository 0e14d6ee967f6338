"""The engine's calibration and threshold, from the answers the quality benches dumped (issue 14, item 4).

Platt scaling: the (slope, offset) on logit(posterior) that make the printed confidence the share of
answers that are right, fitted on the first dump (the own generator's, on seeds never reported);
then, per dump, what each threshold on the calibrated confidence trades, and the lowest threshold
(in hundredths) at which every dump's false suggestions stay within the 2 % bar.

    python3 bench/engine_quality.py --fit --dump /tmp/own.jsonl --seeds 101,102,103,104,105,106,107,108,109,110
    python3 bench/engine_blind.py --fit --dump /tmp/blind.jsonl --seeds 101,102,103,104,105,106,107,108,109,110
    python3 bench/calibration.py /tmp/own.jsonl /tmp/blind.jsonl

Each dump holds one JSON line per bug: cause (whether it has an environment cause), answered,
right, and for an answer its posterior and bug_share (the share of the group the engine chose by
the environment, when the exception line left several: a probability of its own, multiplied in).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import List, Sequence, Tuple

THRESHOLDS = (0.6, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99)
BAR = 0.02  # false suggestions (issue 14)


def read(path: str) -> List[dict]:
    with open(path) as lines:
        return [json.loads(line) for line in lines if line.strip()]


def _logit(p: float) -> float:
    p = min(max(p, 1e-6), 1 - 1e-6)
    return math.log(p / (1 - p))


def fit(rows: Sequence[dict]) -> Tuple[float, float]:
    """The (slope, offset) maximising the likelihood of right/wrong given logit(posterior), over the
    answers whose group the runs decided (the others carry bug_share, a probability of its own)."""
    points = [
        (_logit(r["posterior"]), 1.0 if r["right"] else 0.0) for r in rows if r["answered"] and r["bug_share"] is None
    ]
    a, b = 1.0, 0.0
    ridge = 1e-3  # a small penalty on a and b: finite even when right and wrong answers separate
    for _ in range(200):  # Newton's method on the two parameters
        ga, gb, haa, hab, hbb = ridge * a, ridge * b, ridge, 0.0, ridge
        for x, y in points:
            p = 1 / (1 + math.exp(-min(max(a * x + b, -700.0), 700.0)))
            ga += (p - y) * x
            gb += p - y
            w = p * (1 - p)
            haa += w * x * x
            hab += w * x
            hbb += w
        det = haa * hbb - hab * hab
        a -= (hbb * ga - hab * gb) / det
        b -= (haa * gb - hab * ga) / det
    return a, b


def confidence(row: dict, calibration: Tuple[float, float]) -> float:
    slope, offset = calibration
    calibrated = 1 / (1 + math.exp(-(slope * _logit(row["posterior"]) + offset)))
    return calibrated * (1.0 if row["bug_share"] is None else row["bug_share"])


def trade(rows: Sequence[dict], calibration: Tuple[float, float], threshold: float) -> Tuple[float, float, float]:
    """(correct@1, false-suggestion rate, wrong-answer rate) when answers below ``threshold`` abstain."""
    given = [r for r in rows if r["answered"] and confidence(r, calibration) >= threshold]
    causes = sum(1 for r in rows if r["cause"])
    no_causes = len(rows) - causes
    right = sum(1 for r in given if r["cause"] and r["right"])
    false = sum(1 for r in given if not r["cause"])
    wrong = sum(1 for r in given if not r["right"])
    return right / max(causes, 1), false / max(no_causes, 1), wrong / max(len(given), 1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dumps", nargs="+", help="JSON-lines files written by the benches' --fit --dump")
    args = parser.parse_args(argv)
    suites = [(path, read(path)) for path in args.dumps]
    calibration = fit(suites[0][1])
    print(
        "calibration (slope, offset) on logit(posterior), fitted on %s: (%.3f, %.3f)" % ((suites[0][0],) + calibration)
    )
    for path, rows in suites[1:]:
        print("  %s alone would give (%.3f, %.3f)" % ((path,) + fit(rows)))
    for path, rows in suites:
        causes = sum(1 for r in rows if r["cause"])
        print("\n%s: %d bugs with a cause, %d without" % (path, causes, len(rows) - causes))
        print("  threshold  correct@1  false  wrong")
        for threshold in THRESHOLDS:
            right, false, wrong = trade(rows, calibration, threshold)
            print("  %9.2f  %8.1f%%  %4.1f%%  %4.1f%%" % (threshold, 100 * right, 100 * false, 100 * wrong))
    lowest = next(
        (t / 100 for t in range(50, 100) if all(trade(rows, calibration, t / 100)[1] <= BAR for _, rows in suites)),
        None,
    )
    print("\nlowest threshold with false suggestions at most %.0f %% on every dump: %s" % (100 * BAR, lowest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
