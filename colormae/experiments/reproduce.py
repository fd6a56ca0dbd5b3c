"""One command for every figure and table: ``colormae reproduce``.

    colormae reproduce                     # execute every notebook (papermill) -> results/notebooks/
    colormae reproduce --update            # ... and replace the committed records with what they compute
    colormae reproduce --list              # each paper_figures/ file: notebook, results it reads
    colormae reproduce --notebooks 07 08   # only these notebooks (name prefixes)
    colormae reproduce --run-experiments   # first (re)run the experiment grids (resumable; hours)

Notebooks run in order with their default parameters into ``results/notebooks/<name>`` (executed
copies; the sources in ``notebooks/`` are never overwritten). What they compute from the stored
results goes beside the committed records, in ``results/local/``, with one line per folder saying
whether the record was reproduced; ``--update`` replaces ``paper_figures/`` and the records instead.
What each notebook saves there and which results it reads are read from the notebook itself (its
``save_figure(..., "name", <dir>)`` calls whose <dir> parameter defaults to ``paper_figures``, and
its parameters that name ``results/`` paths), so the listing cannot drift.
"""
from __future__ import annotations

import argparse
import ast
import json
import logging
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from ..files import ROOT

log = logging.getLogger(__name__)

NOTEBOOKS_DIR, FIG_DIR, OUT_DIR = ROOT / "notebooks", ROOT / "paper_figures", ROOT / "results" / "notebooks"

# One line per paper artifact (gallery and --list). Files not described here are still listed.
DESCRIPTIONS = {
    "fig1_mask_zoo": "Fig. 1: one mask of each kind (random, block, grid, four colors), 14x14 grid",
    "fig2_color_noise": "Fig. 2: color noise patterns, their spectra and example masks",
    "fig3_reconstructions": "Fig. 3: CIFAR-10 test images reconstructed by each mask's own model under its own mask",
    "fig3_reconstructions_photos": "Fig. 3 (photographs): the same on the embedded photographs at 32 px",
    "fig4_loss_curves_cifar10": "Fig. 4: pretraining loss per mask (mean ± std over seeds)",
    "fig4_loss_curves_cifar10_gpu": "Fig. 4 at GPU scale: the --scale gpu grid's loss per mask (6 epochs, 5 seeds)",
    "fig5_attention": "Fig. 5: last-block [CLS] attention, random vs green, CIFAR-10 / Penn-Fudan / photos",
    "fig6_eigencam": "Fig. 6: EigenCAM of random vs green classifiers fine-tuned on CIFAR-10",
    "fig_band_sweep": "Beyond the paper: downstream accuracy against the green band's centre frequency",
    "table4_cost": "Table 4: parameters, FLOPs, training memory and step time per mask and source",
}

# --run-experiments: in this order (notebooks read their outputs); every name is a grid of
# ``colormae experiments`` (test_reproduce checks them against GRIDS / DENSE). Estimates: 2 CPU cores.
EXPERIMENTS = {
    "cifar10-grid16": "~2.6 h (docs/results.md: 18 pretraining runs + 23 evaluations; resumes where it stopped)",
    "cifar10-band-sweep": "~1 h (5 runs at the grid's per-run cost)",
    "pennfudan-segment": "see the experiment's own estimate (printed when it starts)",
    "pennfudan-detect": "see the experiment's own estimate (printed when it starts)",
}
# Fig. 6's fine-tuned classifiers: the grid's seed-0 random and green encoders (the committed compact
# fp16 copies, so a fresh clone can rerun it) fine-tuned on a 10k-image CIFAR-10 subset (3 epochs, MAE's
# recipe scaled down), then saved in fp16 beside each run (committed: the figure regenerates from them).
FINETUNE_CAM = {m: ["-m", "colormae", "finetune", "--encoder", f"results/cifar10_grid16/weights/{m}.pth",
                    "--protocol", "finetune", "--dataset", "cifar10", "--train-length", "10000",
                    "--test-length", "2000", "--epochs", "3", "--output-dir", f"results/finetune/grid16_{m}_seed0"]
                for m in ("random", "green")}
COMPACT_CAM = ["-m", "colormae", "weights", "--classifier", *(cmd[-1] for cmd in FINETUNE_CAM.values())]


@dataclass
class Notebook:
    path: Path
    figures: list[str]   # file stems saved into paper_figures/ (may contain * for f-string names)
    reads: list[str]     # results/ paths among its parameters

    @property
    def name(self) -> str:
        return self.path.name


def _parameters(cells: list[dict]) -> dict:
    """Literal defaults of the notebook's papermill parameters cell."""
    for cell in cells:
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            values = {}
            for node in ast.parse("".join(cell["source"])).body:
                if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
                    try:
                        values[node.targets[0].id] = ast.literal_eval(node.value)
                    except ValueError:
                        pass
            return values
    return {}


_SAVE = re.compile(r"save_figure\(\s*[^,]+?\s*,\s*(f?)([\"'])([^\"']+)\2\s*,\s*(\w+)")


def scan_notebook(path: Path) -> Notebook:
    cells = json.loads(path.read_text())["cells"]
    params = _parameters(cells)
    fig_params = {k for k, v in params.items() if v == "paper_figures"}
    figures = []
    for cell in cells:
        for fstring, _, name, where in _SAVE.findall("".join(cell["source"])):
            if where in fig_params:
                figures.append(re.sub(r"\{[^}]*\}", "*", name) if fstring else name)

    def paths(v):
        if isinstance(v, str):
            return [v] if v.startswith("results/") else []
        if isinstance(v, dict):
            return [p for x in v.values() for p in paths(x)]
        if isinstance(v, (list, tuple)):
            return [p for x in v for p in paths(x)]
        return []
    # outputs are not inputs: the figure folder and each notebook's output_dir
    reads = [p for k, v in params.items() if k not in fig_params and k != "output_dir" for p in paths(v)]
    return Notebook(path, list(dict.fromkeys(figures)), reads)


def notebooks(select: list[str] | None = None) -> list[Notebook]:
    found = sorted(NOTEBOOKS_DIR.glob("*.ipynb"))
    if select:
        unknown = [s for s in select if not any(p.name.startswith(s) for p in found)]
        if unknown:
            raise ValueError(f"notebooks={unknown} match no notebook; allowed prefixes: "
                             f"{', '.join(p.name.split('_')[0] for p in found)}")
        found = [p for p in found if any(p.name.startswith(s) for s in select)]
    return [scan_notebook(p) for p in found]


def figure_files(fig_dir: Path = FIG_DIR) -> list[str]:
    """Stems of the files in paper_figures/ (png + pdf of one figure count once; README excluded)."""
    return sorted({p.stem for p in fig_dir.iterdir() if p.is_file() and p.suffix in (".png", ".pdf")})


def owner(stem: str, nbs: list[Notebook]) -> Notebook | None:
    from fnmatch import fnmatch
    return next((nb for nb in nbs if any(fnmatch(stem, f) for f in nb.figures)), None)


def listing(nbs: list[Notebook] | None = None) -> str:
    nbs = nbs if nbs is not None else notebooks()
    lines = []
    for stem in sorted(set(figure_files()) | {f for nb in nbs for f in nb.figures if "*" not in f}):
        nb = owner(stem, nbs)
        where = f"notebooks/{nb.name}" if nb else "NO NOTEBOOK SAVES IT"
        reads = ", ".join(nb.reads) if nb and nb.reads else "-"
        lines.append(f"paper_figures/{stem}.{{png,pdf}}\n    {DESCRIPTIONS.get(stem, '(no description)')}\n"
                     f"    made by {where}; reads {reads}")
    tables = [nb for nb in nbs if nb.name.startswith(("03", "08"))]
    for nb in tables:
        lines.append(f"tables in notebooks/{nb.name} (executed copy in results/notebooks/); "
                     f"reads {', '.join(nb.reads)}")
    return "\n".join(lines)


def run_experiments(dry_run: bool = False) -> None:
    print("experiment grids, in order (resumable: finished runs are skipped):")
    for name, estimate in EXPERIMENTS.items():
        print(f"  colormae experiments {name:<20} {estimate}")
    print("Fig. 6 fine-tuning runs:")
    for cmd in [*FINETUNE_CAM.values(), COMPACT_CAM]:
        print("  python " + " ".join(cmd))
    if dry_run:
        return
    for name in EXPERIMENTS:
        subprocess.run([sys.executable, "-m", "colormae", "experiments", name], cwd=ROOT, check=True)
    for cmd in FINETUNE_CAM.values():
        subprocess.run([sys.executable, *cmd, "--resume", "auto"], cwd=ROOT, check=True)
    subprocess.run([sys.executable, *COMPACT_CAM], cwd=ROOT, check=True)


def execute(nbs: list[Notebook], out_dir: Path | None = None,
            update: bool = False) -> tuple[list[Path], dict[str, str]]:
    """Run each notebook with papermill into ``out_dir``. A failing notebook does not stop the
    others (a later one may not need what it lacked). ``update``: notebooks replace the committed
    records (``update_records=True``); else they write beside them in results/local/ and say
    whether they reproduced them. Returns the paper_figures/ files (re)written and {notebook: error}
    of the failures."""
    import papermill
    out_dir = out_dir or OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    before = {p: p.stat().st_mtime_ns for p in FIG_DIR.glob("*") if p.is_file()}
    failed = {}
    for nb in nbs:
        target = out_dir / nb.name
        if target.resolve() == nb.path.resolve():
            raise ValueError(f"refusing to overwrite the source notebook {nb.path}")
        start = time.time()
        print(f"running notebooks/{nb.name} -> {target}", flush=True)
        try:
            takes_update = "update_records" in _parameters(json.loads(nb.path.read_text())["cells"])
            papermill.execute_notebook(str(nb.path), str(target), cwd=str(NOTEBOOKS_DIR), progress_bar=False,
                                       parameters={"update_records": True} if update and takes_update else {})
        except papermill.PapermillExecutionError as err:
            failed[nb.name] = f"{err.ename}: {err.evalue}"
            print(f"  FAILED after {time.time() - start:.0f} s: {failed[nb.name]}", flush=True)
            continue
        print(f"  done in {time.time() - start:.0f} s", flush=True)
    written = sorted(p for p in FIG_DIR.glob("*") if p.is_file() and before.get(p) != p.stat().st_mtime_ns)
    return written, failed


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="colormae reproduce", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--list", action="store_true", help="list every paper figure/table, its notebook and inputs")
    p.add_argument("--notebooks", nargs="+", default=None, help="run only notebooks whose names start with these")
    p.add_argument("--run-experiments", action="store_true", help="(re)run the experiment grids first (hours)")
    p.add_argument("--dry-run", action="store_true", help="print what would run, run nothing")
    p.add_argument("--update", action="store_true", help="replace the committed records (paper_figures/, results/) "
                   "with what the notebooks compute; without it they write to results/local/ and compare")
    return p


def main(argv: list[str] | None = None) -> list[Path]:
    p = build_parser()
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        nbs = notebooks(args.notebooks)
    except ValueError as err:
        p.error(str(err))
    if args.list:
        print(listing(notebooks()))
        return []
    if args.run_experiments:
        run_experiments(args.dry_run)
    if args.dry_run:
        print("would run: " + ", ".join(nb.name for nb in nbs))
        return []
    written, failed = execute(nbs, update=args.update)
    print("regenerated:" if written else "no file in paper_figures/ changed")
    for path in written:
        print(f"  {path.relative_to(ROOT)}")
    if failed:
        print("failed (executed copies with the error are in results/notebooks/):")
        for name, error in failed.items():
            print(f"  notebooks/{name}: {error}")
        raise SystemExit(1)
    return written
