"""The planning benchmark runs, and what it compares is comparable: the SQL floor's statement and
both screenings stage and reject what the plan does, on both warehouses (its figures are not
checked here: they are the benchmark's to print)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT


@pytest.mark.parametrize("warehouse", ["sqlite", "postgres"])
def test_the_floor_and_both_screenings_stage_and_reject_what_the_plan_does(warehouse):
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/plan_memory.py",
            "--sizes",
            "2000",
            "--warehouse",
            warehouse,
            "--screen",
            "both",
            "--profile",
            "--no-naive",
            "--json",
        ],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    [result] = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]

    assert (result["staged"], result["rejected"]) == (2000, 20)
    assert (result["floor_staged"], result["floor_rejected"]) == (2000, 20)
    assert result["rows_screen_staged"] == 2000
    assert result["floor_seconds"] > 0 and result["plan_to_floor"] > 0
    phases = result["per_100k_rows"]
    assert set(phases) == {"read", "screen", "wait", "rest", "write", "commit"}
    assert phases["screen"] > 0 and phases["write"] > 0 and phases["commit"] > 0


def test_repeat_runs_the_naive_script_in_turn_and_takes_the_median_of_the_turns_ratios():
    out = subprocess.run(
        [
            sys.executable,
            "benchmarks/plan_memory.py",
            "--sizes",
            "2000",
            "--repeat",
            "3",
            "--no-floor",
            "--json",
        ],
        cwd=REPO_ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    [result] = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]

    plans, naives = result["plan_seconds_each"], result["naive_seconds_each"]
    assert len(plans) == len(naives) == 3
    assert (result["naive_staged"], result["naive_rejected"]) == (result["staged"], result["rejected"])
    assert result["naive_seconds"] == sorted(naives)[1]
    turns = sorted(n / p for n, p in zip(naives, plans, strict=True))
    # The JSON's seconds are rounded to 0.01 s, so the ratio is checked to the rounding's reach.
    assert result["speedup"] == pytest.approx(turns[1], rel=0.2, abs=0.05)
