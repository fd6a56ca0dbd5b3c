"""Every notebook executes under nbval (lax mode: cells marked ``# NBVAL_CHECK_OUTPUT`` must also
reproduce their stored output), with tiny papermill parameters where the default is too slow.

Stored outputs come from the default (full) runs, so the numbers of a tiny run cannot be checked
against them; instead each tiny run's numbers (from the files the notebook writes) are pinned in
``PINNED``, to a tolerance that survives BLAS differences between machines. The pins are fp32 numbers: every
tiny run of a notebook with an ``amp`` parameter passes ``amp="none"`` (``auto`` resolves to bf16 on
CUDA and on CPUs with native bf16), and each pinned summary must record that precision."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import papermill
import pytest
from conftest import MICRO

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"

# Parameters that make a notebook finish in well under a minute on 2 CPU cores. The output dir is
# added by the test so nothing lands in the repository. Notebooks with an ``amp`` parameter run in
# fp32 ("none"): the pinned numbers are fp32 numbers (test_tiny_runs_are_fp32).
TINY: dict[str, dict] = {
    "00_color_noise.ipynb": {},
    "01_pretrain.ipynb": {"preset": MICRO, "dataset_length": 128, "epochs": 1, "batch_size": 32, "n_show": 4,
                          "amp": "none"},
    "02_finetune.ipynb": {"epochs": 1, "batch_size": 16, "train_length": 64, "test_length": 32,
                          "encoder": "{tmp}/encoder_run", "amp": "none"},
    # renders the committed grid results (seconds); nbval runs the kernel beside the prepared copy
    "03_table1_cifar10.ipynb": {"grid_dir": str(ROOT / "results" / "cifar10_grid16"),
                                "minirepro_dir": str(ROOT / "results" / "cifar10_minirepro")},
    "04_segmentation.ipynb": {"encoder": "{tmp}/encoder_run", "iterations": 2, "batch_size": 4, "crop_size": 32,
                              "head_channels": 16, "train_length": 8, "test_length": 2, "n_show": 2, "amp": "none"},
    "07_reconstructions_attention.ipynb": {"grid_dir": "{tmp}/grid", "masks": ["green", "random"], "n_show": 3,
                                           "n_eval": 16, "n_attention": 2, "n_pennfudan": 4, "attention_seeds": [0],
                                           "finetune_dirs": {}, "fig_dir": "{tmp}/out"},
    "05_detection.ipynb": {"encoders": {"random": "{tmp}/encoder_random", "green": "{tmp}/encoder_green"},
                           "data": "coco", "data_root": "{tmp}/coco", "epochs": 2, "img_size": 64, "patch_size": 8,
                           "fpn_channels": 16, "roi_batch": 16, "n_show": 2, "amp": "none"},
    "06_band_sweep.ipynb": {"grid_dir": str(ROOT / "results" / "cifar10_grid16"),
                            "sweep_dir": str(ROOT / "results" / "cifar10_band_sweep")},
    "08_cost_and_tables.ipynb": {"fig_dir": "{tmp}/out"},
    "09_explore.ipynb": {"n_masks": 8, "grid": 8},  # the widget (nbval stores its repr) and one static view
    "10_explore_reconstructions.ipynb": {},  # two committed 32-px models: the widget's repr and one static view
}
# file in the notebook's output dir -> dotted key -> the tiny run's value (relative tolerance PIN_RTOL)
PINNED: dict[str, dict[str, dict[str, float]]] = {
    "01_pretrain.ipynb": {"summary.json": {"final_loss": 1.92069, "steps": 4},
                          "reconstruction_mse.json": {"heldout_masked_mse.trained": 1.63974,
                                                      "heldout_masked_mse.step 0": 1.87532}},
    "02_finetune.ipynb": {"summary.json": {"top1": 0.15625, "final_loss": 2.77259}},
    "04_segmentation.ipynb": {"encoder/summary.json": {"miou": 0.25272, "last_batch_loss": 0.94323, "steps": 2}},
    # AP moves in discrete steps at this size: the losses are pinned instead
    "05_detection.ipynb": {"random/summary.json": {"final_loss": 2.81238, "steps": 4},
                           "green/summary.json": {"final_loss": 2.87053, "steps": 4}},
    "07_reconstructions_attention.ipynb": {
        "fig3_reconstruction_mse.json": {"masked_patch_mse.green.loss": 1.80843,
                                         "masked_patch_mse.random.loss": 1.81741},
        "fig5_pennfudan_foreground_attention.json": {"uniform": 0.235168}},
}
PIN_RTOL = 0.002  # BLAS/thread differences move these by ~1e-5; the lr schedule's warmup fix moved them 0.5-3 %
# the parameter that says where a notebook writes (pointed into tmp_path by the test)
OUTPUT_PARAM = {"00_color_noise.ipynb": "out_dir", "03_table1_cifar10.ipynb": "fig_dir",
                "06_band_sweep.ipynb": "fig_dir"}


# datasets (under ../shared/data or $COLORMAE_DATA) a notebook's tiny run needs; absent: the test skips
NEEDS_DATA = {"04_segmentation.ipynb": ("pennfudan",)}
# datasets the pinned numbers need (the notebook itself runs without them, on the embedded photographs)
PINS_NEED_DATA = {"07_reconstructions_attention.ipynb": ("cifar10", "pennfudan")}
DATA = Path(os.environ.get("COLORMAE_DATA", ROOT.parent / "shared" / "data"))


def missing_data(names) -> list[str]:
    return [n for n in names if not (DATA / n).is_dir()]


def _micro_encoder(tmp_path: Path, micro_run) -> None:
    """The micro green run (conftest.micro_run) as notebook 02's / 04's encoder."""
    shutil.copytree(micro_run(), tmp_path / "encoder_run")


def _micro_grid(tmp_path: Path, micro_run) -> None:
    """Two norm-pix micro runs shaped like the 16x16 grid's seed-0 runs (notebook 07's models)."""
    for mask in ("random", "green"):
        shutil.copytree(micro_run(mask, norm_pix_loss=True), tmp_path / "grid" / "runs" / f"{mask}_seed0")


# what a notebook needs to exist before it runs (a pretrained encoder for notebooks 02 and 04)
def _detection_setup(tmp_path: Path, micro_run) -> None:
    from test_detect import notebook_setup  # two micro encoders and a synthetic COCO folder
    notebook_setup(tmp_path, micro_run)


SETUP = {"02_finetune.ipynb": _micro_encoder, "04_segmentation.ipynb": _micro_encoder,
         "05_detection.ipynb": _detection_setup,
         "07_reconstructions_attention.ipynb": _micro_grid}


def _with_tmp(value, tmp_path: Path):
    """``{tmp}`` in a parameter (also inside dicts) -> the test's tmp_path."""
    if isinstance(value, str):
        return value.format(tmp=tmp_path)
    if isinstance(value, dict):
        return {k: _with_tmp(v, tmp_path) for k, v in value.items()}
    return value


def run_nbval(notebook: str, tmp_path: Path, micro_run) -> None:
    if missing_data(NEEDS_DATA.get(notebook, ())):
        pytest.skip(f"{notebook} needs {', '.join(missing_data(NEEDS_DATA[notebook]))} under {DATA}")
    if notebook in SETUP:
        SETUP[notebook](tmp_path, micro_run)
    src = NOTEBOOKS / notebook
    prepared = tmp_path / notebook
    params = {**TINY[notebook], OUTPUT_PARAM.get(notebook, "output_dir"): "{tmp}/out"}
    params = {k: _with_tmp(v, tmp_path) for k, v in params.items()}
    papermill.execute_notebook(src, prepared, parameters=params, prepare_only=True, cwd=NOTEBOOKS)
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--nbval-lax", "--nbval-current-env",
           "--nbval-sanitize-with", str(ROOT / "tests" / "nbval_sanitize.cfg"), str(prepared),
           "-o", "addopts=", "--rootdir", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=NOTEBOOKS, capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, f"nbval failed for {notebook}:\n{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}"
    if not missing_data(PINS_NEED_DATA.get(notebook, ())):
        check_pinned(notebook, tmp_path / "out")


def _get(record: dict, dotted: str):
    for part in dotted.split("."):
        record = record[part]
    return record


def check_pinned(notebook: str, out: Path) -> None:
    for name, keys in PINNED.get(notebook, {}).items():
        record = json.loads((out / name).read_text())
        if name.endswith("summary.json"):  # an engine's run: the resolved precision it trained in
            assert record.get("amp") == "none", (f"{notebook}: {name} ran with amp={record.get('amp')!r}; the pins "
                                                 "are fp32 numbers: pass amp='none' in TINY")
        for key, expected in keys.items():
            got = _get(record, key)
            assert got == pytest.approx(expected, rel=PIN_RTOL), f"{notebook}: {name} {key} = {got}, pinned {expected}"


def parameters_source(notebook: str) -> str:
    cells = json.loads((NOTEBOOKS / notebook).read_text())["cells"]
    return "".join(next(c["source"] for c in cells if "parameters" in c.get("metadata", {}).get("tags", [])))


def test_tiny_runs_are_fp32():
    """A notebook with an ``amp`` parameter defaults to "auto" (bf16 on CUDA and on CPUs with native
    bf16): its tiny run must pin fp32, or the pins break on such machines."""
    with_amp = [nb for nb in sorted(TINY) if any(line.split("=")[0].strip() == "amp"
                                                 for line in parameters_source(nb).splitlines() if "=" in line)]
    assert with_amp, "no notebook has an amp parameter: the check below checks nothing"
    assert [nb for nb in with_amp if TINY[nb].get("amp") != "none"] == []


def test_every_notebook_is_tested_and_parameterized():
    found = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))
    assert found == sorted(TINY)
    for name in found:
        cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
        assert any("parameters" in c.get("metadata", {}).get("tags", []) for c in cells), name


@pytest.mark.parametrize("notebook", sorted(TINY))
def test_notebook_under_nbval(notebook, tmp_path, micro_run):
    run_nbval(notebook, tmp_path, micro_run)


def test_committed_notebooks_hold_no_machine_paths():
    """Outputs and papermill's metadata (input_path, output_path) name files relative to the repository:
    a notebook executed from a temporary copy recorded /tmp/... as its input."""
    bad = []
    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        text = path.read_text()
        bad += [f"{path.name}: {p}" for p in (str(ROOT), "/tmp/", "/root/", "/home/") if p in text]
        meta = json.loads(text)["metadata"].get("papermill", {})
        bad += [f"{path.name}: {k}={meta[k]}" for k in ("input_path", "output_path")
                if meta.get(k) not in (None, f"notebooks/{path.name}")]
    assert not bad, bad
