"""A preregistered grid: its PREREGISTRATION.md was committed before any of its results, and never
changed after the first one; the grid itself cannot be run with other settings."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from colormae.experiments import grids

ROOT = Path(__file__).resolve().parents[1]
PREREGISTERED = [spec for spec in grids.GRIDS.values() if spec.preregistration]


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def history(folder: str) -> list[tuple[str, list[str]]]:
    """(commit, files of ``folder`` it touched), oldest first."""
    out = git("log", "--reverse", "--format=@%H", "--name-only", "--", folder)
    commits = []
    for block in out.split("@")[1:]:
        sha, *files = block.split()
        commits.append((sha, files))
    return commits


def order_violations(commits: list[tuple[str, list[str]]], prereg: str) -> list[str]:
    """What breaks "the preregistration first, then results, and the preregistration never after"."""
    problems, seen_prereg, seen_result = [], False, False
    for sha, files in commits:
        results = [f for f in files if f != prereg]
        if prereg in files:
            if seen_result:
                problems.append(f"{sha[:10]} changes {prereg} after results landed")
            seen_prereg = True
        if results:
            if not seen_prereg:
                problems.append(f"{sha[:10]} commits {results[0]} before {prereg}")
            seen_result = True
    return problems


@pytest.fixture(scope="module")
def checkout():
    try:
        if git("rev-parse", "--is-shallow-repository").strip() == "true":
            pytest.skip("a shallow clone has no full history to check")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")


@pytest.mark.parametrize("spec", PREREGISTERED, ids=lambda s: s.out)
def test_preregistration_precedes_every_result(spec, checkout):
    commits = history(spec.out)
    assert commits and spec.preregistration in commits[0][1], f"{spec.preregistration} is not committed first"
    assert order_violations(commits, spec.preregistration) == []


def test_order_check_catches_results_before_and_edits_after():
    prereg = "r/PREREGISTRATION.md"
    assert order_violations([("a" * 40, [prereg]), ("b" * 40, ["r/table.csv"])], prereg) == []
    assert order_violations([("a" * 40, ["r/table.csv"]), ("b" * 40, [prereg])], prereg)[0].endswith(
        f"before {prereg}")
    late = order_violations([("a" * 40, [prereg]), ("b" * 40, ["r/x.json"]), ("c" * 40, [prereg])], prereg)
    assert late == [f"{'c' * 10} changes {prereg} after results landed"]


def test_a_preregistered_grid_refuses_other_settings(capsys):
    name = next(n for n, s in grids.GRIDS.items() if s.preregistration)
    for extra in (["--seeds", "13"], ["--masks", "blue"], ["--epochs", "2"], ["--eval-length", "64"]):
        with pytest.raises(SystemExit):
            grids.main([name, *extra])
        assert "is preregistered" in capsys.readouterr().err
