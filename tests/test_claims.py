"""The documentation's numbers are the committed records' numbers.

Every claim sentence in README.md and docs/*.md is either a labelled paper number or computed from a
committed record under results/. This module recomputes what the documents quote, with the same
functions the notebooks use, and checks that the documents say exactly that:

- the cost story (README, docs/benchmarks.md, docs/gpu_and_clusters.md, notebook 08):
  ``colormae.analysis.report.cost_sentences`` of ``results/cost`` and the H200 device check, verbatim;
  and no cost sentence in the documents carries a number those sentences do not have;
- docs/results.md's tables: the CPU grid (mean ± std and the paired differences with their Holm p),
  the GPU-scale grid, and Penn-Fudan segmentation and detection (paired by pretraining seed), rebuilt
  from the records by :func:`grid_table_md`, :func:`gpu_table_md` and :func:`dense_table_md`.

To regenerate a table after a record changes, print the builder's output
(``python -c "import tests.test_claims as c; print(c.grid_table_md())"``) and paste it.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pandas as pd
import pytest

from colormae.analysis import report, results

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "results"
DOCS = ROOT / "docs"


def _text(path: Path) -> str:
    """A markdown file with runs of whitespace (line breaks included) folded to one space."""
    return re.sub(r"\s+", " ", path.read_text(encoding="utf-8"))


def _minus(s: str) -> str:
    """The documents' minus sign (U+2212) in numbers."""
    return re.sub(r"(?<![\w/])-(?=\d)", "−", s)


def _row(cells) -> str:
    return "| " + " | ".join(cells) + " |"


def md_table(header, rows) -> str:
    return "\n".join([_row(header), _row(["---"] * len(header)), *(_row(r) for r in rows)])


# ----------------------------------------------------------------------------- cost

@pytest.fixture(scope="module")
def cost():
    return report.cost_sentences(report.cost_facts(RESULTS / "cost", ROOT / report.DEVICE_RUN))


# where each cost sentence is quoted (written once; the other pages link to it)
COST_QUOTES = {
    "summary": [ROOT / "README.md"],
    "memory": [DOCS / "benchmarks.md"],
    "h200": [DOCS / "benchmarks.md"],
    "table4_cuda": [DOCS / "benchmarks.md"],
    "cpu": [DOCS / "benchmarks.md"],
    "flops": [DOCS / "benchmarks.md"],
    "paper": [DOCS / "benchmarks.md"],
}


@pytest.mark.parametrize("key", sorted(COST_QUOTES))
def test_cost_sentences_are_quoted_verbatim(cost, key):
    for path in COST_QUOTES[key]:
        assert re.sub(r"\s+", " ", cost[key]) in _text(path), f"{path.relative_to(ROOT)} lacks: {cost[key]}"


def test_notebook_08_prints_the_same_cost_sentences(cost):
    nb = json.loads((ROOT / "notebooks" / "08_cost_and_tables.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    for key, sentence in cost.items():
        assert sentence in printed, f"notebook 08's stored output lacks the {key} sentence"


NUMBER = re.compile(r"(?<![\w.])[+−-]?\d+(?:\.\d+)?")
COST_WORDS = re.compile(r"step time|noise floor|GFLOP|training memory")


def _prose(path: Path) -> str:
    """A markdown file without fenced code blocks and table rows, whitespace folded."""
    text = re.sub(r"```.*?```", " ", path.read_text(encoding="utf-8"), flags=re.S)
    return re.sub(r"\s+", " ", "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("|")))


def _numbers(text: str) -> set[str]:
    return {n.lstrip("+−-") for n in NUMBER.findall(text)}


def test_no_cost_sentence_in_the_docs_has_other_numbers(cost):
    """A sentence of README.md or docs/*.md about step time, noise floors, FLOPs or the bank's memory
    may only carry numbers of :func:`report.cost_sentences` (or of the paper's Table 4, which they quote)."""
    allowed = set().union(*(_numbers(s) for s in cost.values()))
    bad = []
    for path in [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]:
        for sentence in re.split(r"(?<=[.;:])\s+(?=[A-Z(*])", _prose(path)):
            if COST_WORDS.search(sentence) and "colormae " not in sentence:
                extra = _numbers(re.sub(r"`[^`]*`|\([^)]*\.md[^)]*\)|\d+×\d+|\d+-\w+", " ", sentence)) - allowed
                if extra:
                    bad.append(f"{path.relative_to(ROOT)}: {sorted(extra)} in: {sentence[:160]}")
    assert not bad, "\n".join(bad)


def test_readme_no_longer_says_nothing_measurable():
    assert "nothing measurable" not in _text(ROOT / "README.md")


def test_flop_counts_differ_by_the_attention_matmuls_exactly():
    facts = report.cost_facts(RESULTS / "cost", ROOT / report.DEVICE_RUN)
    for preset, attn in facts["attention_gflops"].items():
        assert facts["gflops"][("cuda", preset)] - facts["gflops"][("cpu", preset)] == pytest.approx(attn, abs=1e-9)


# ----------------------------------------------------------------------------- docs/results.md tables

def _paired_cells(table: pd.DataFrame, metric: str, reference: str, index) -> pd.Series:
    return results.format_paired(results.paired_differences(table, metric, reference)).reindex(index).fillna("—")


def grid_table_md(grid_dir: Path = RESULTS / "cifar10_grid16") -> str:
    """docs/results.md's CPU grid table: per mask mean ± std (n) of kNN and linear probe, the paired
    differences to random and to the untrained control (95 % CI, Holm p), and the final loss."""
    table = results.load_grid_table(grid_dir)
    summary = results.summarize_by_mask(table)
    rows = []
    for mask in summary.index:
        cells = [report.CONTROL_LABEL if mask == report.CONTROL else mask]
        for metric in report.METRICS:
            cells += [results.format_mean_std(summary, metric)[mask],
                      _paired_cells(table, metric, "random", summary.index)[mask],
                      _paired_cells(table, metric, report.CONTROL, summary.index)[mask]]
        loss = summary.loc[mask, "final_loss_mean"]
        cells.append("—" if loss != loss else f"{loss:.3f}")
        rows.append([_minus(c) for c in cells])
    header = ["mask", "kNN top-1 %", "− random", "− none", "linear probe top-1 %", "− random", "− none", "final loss"]
    return md_table(header, rows)


def gpu_table_md(grid_dir: Path = RESULTS / "cifar10_grid16_gpu") -> str:
    """docs/results.md's GPU-scale table: mean ± std (n) per mask of the three metrics, then green −
    random and random − none (95 % CI, Holm p)."""
    table = results.load_grid_table(grid_dir)
    metrics = (*report.METRICS, "finetune_top1")
    summary = results.summarize_by_mask(table, metrics=metrics)
    rows = [[report.CONTROL_LABEL if m == report.CONTROL else m] + [results.format_mean_std(summary, k)[m]
                                                                     for k in metrics] for m in summary.index]
    for mask, ref in (("green", "random"), ("random", report.CONTROL)):
        rows.append([f"{mask} − {ref}"] + [results.format_paired(results.paired_differences(table, k, ref)).loc[mask]
                                           for k in metrics])
    header = ["mask", "kNN top-1 %", "probe top-1 %", "fine-tuned top-1 % (3 ep)"]
    return md_table(header, [[_minus(c) for c in r] for r in rows])


DENSE = {"segmentation.csv": ("miou", "iou_person", "iou_background"),
         "detection.csv": ("ap_box", "ap50_box", "ap_mask", "ap50_mask")}


def dense_table_md(file: str, dense_dir: Path = RESULTS / "dense_pennfudan") -> str:
    """docs/results.md's Penn-Fudan table of ``file``: :func:`report.dense_table` (notebooks 04/05 show
    the same), every metric, as markdown."""
    table = report.dense_table(dense_dir / file, DENSE[file])
    rows = [[_minus(c) for c in (label, *row)] for label, row in table.iterrows()]
    return md_table(["encoder", *table.columns], rows)


@pytest.mark.parametrize("build", [grid_table_md, gpu_table_md, lambda: dense_table_md("segmentation.csv"),
                                   lambda: dense_table_md("detection.csv")],
                         ids=["cpu-grid", "gpu-grid", "pennfudan-segmentation", "pennfudan-detection"])
def test_results_md_tables_are_the_records(build):
    table = build()
    assert table in (DOCS / "results.md").read_text(encoding="utf-8"), f"docs/results.md lacks the table:\n{table}"


def test_results_md_quotes_the_notebooks_sentences():
    """The green-vs-random and power sentences of docs/results.md are those notebook 03 prints."""
    table = results.load_grid_table(RESULTS / "cifar10_grid16")
    words = results.differences_in_words(results.paired_differences(table, "knn_top1", "random"))
    green = next(w for w in words if w.startswith("kNN top-1: green − random"))
    text = _text(DOCS / "results.md")
    assert green in text
    power = report.power_in_words(report.power_table(RESULTS), report.paper_gain_by_epochs())
    for line in power:
        assert line in text, line
    # the replication's status as notebook 03 last printed it (its runs may be under way meanwhile)
    nb = json.loads((ROOT / "notebooks" / "03_table1_cifar10.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    status = [line for line in printed.splitlines() if "(confirmatory, preregistered" in line]
    assert len(status) == 2 and all(line in text for line in status)
    # ... and computed from the committed table, now that every planned pair has run
    confirm = pd.read_csv(RESULTS / "cifar10_grid16_confirm" / "table.csv")
    for metric, endpoint, line in zip(("knn_top1", "linprobe_top1"), ("primary", "secondary"), status):
        test = results.confirmatory_test(confirm, metric, planned_seeds=range(5, 13))
        assert results.confirmatory_in_words(test, endpoint=endpoint) == line
    # the README states the primary result with the same words
    assert status[0] in _text(ROOT / "README.md")


def test_dense_readings_quote_their_tables():
    """The Penn-Fudan readings of docs/results.md quote only intervals and Holm p's of the tables computed
    from the records, the wall-time ranges of the runs at pretraining seeds 2-4, and the AP50-box remark's
    arithmetic (plant: edit one quoted number -> fails)."""
    text = (DOCS / "results.md").read_text(encoding="utf-8")
    for file, heading in (("segmentation.csv", "## Segmentation on Penn-Fudan"), ("detection.csv",
                                                                                 "## Detection on Penn-Fudan")):
        section = text[text.index(heading):]
        section = section[:section.find("\n## ", len(heading))]
        table = dense_table_md(file)
        assert table in section
        prose = re.sub(r"\s+", " ", section.replace(table, ""))
        quoted = re.findall(r"[+−]\d+\.\d+ \[[+−]\d+\.\d+, [+−]\d+\.\d+\]", prose)
        quoted += re.findall(r"Holm p \d\.\d+", prose)
        assert len(quoted) >= 6 and all(q in table for q in quoted), [q for q in quoted if q not in table]
        wall = pd.read_csv(RESULTS / "dense_pennfudan" / file).query("pretrain_seed >= 2")["wall_s"]
        assert f"took {wall.min():.0f}–{wall.max():.0f} s" in prose
    by_seed = results.by_pretraining_seed(pd.read_csv(RESULTS / "dense_pennfudan" / "detection.csv"), ["ap50_box"])
    p = results.paired_differences(by_seed, "ap50_box", "random").loc["green", "p_holm"]
    assert "multiplied by those 4 it would sit just under 0.05" in _text(DOCS / "results.md") and 0.045 < 4 * p < 0.05
