"""Notebook parameters are validated in the core before any heavy work (issue 22), and notebooks
never rewrite committed records unless asked (issue 23, item 6): colormae.analysis.notebook.

The papermill test runs every notebook with one wrong parameter: each must stop in its first cell
after the parameters with one line naming the parameter (a kernel start and the imports: seconds)."""
from __future__ import annotations

import ast
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import papermill
import pytest
from conftest import ROOT

from colormae import files
from colormae.analysis import notebook
from colormae.analysis.notebook import NOTEBOOKS, Records, check_params
from colormae.engines.launch import engine_module
from colormae.files import compare_records, local_mirror, record_dir, write_json

NOTEBOOK_DIR = ROOT / "notebooks"


def _parameters(name: str) -> dict:
    cells = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())["cells"]
    cell = next(c for c in cells if "parameters" in c.get("metadata", {}).get("tags", []))
    namespace: dict = {}
    exec("".join(cell["source"]), namespace)  # noqa: S102 - the notebook's own literal parameters
    return {k: v for k, v in namespace.items() if not k.startswith("__")}


def _first_cell_after_parameters(name: str) -> str:
    cells = json.loads((NOTEBOOK_DIR / f"{name}.ipynb").read_text())["cells"]
    i = next(i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", []))
    return "".join(next(c for c in cells[i + 1:] if c["cell_type"] == "code"
                        and "injected-parameters" not in c["metadata"].get("tags", []))["source"])


def test_every_notebook_declares_and_checks_every_parameter():
    found = sorted(p.stem for p in NOTEBOOK_DIR.glob("*.ipynb"))
    assert found == sorted(NOTEBOOKS)
    for name in found:
        spec = NOTEBOOKS[name]
        engine = {f.name for f in dataclasses.fields(engine_module(spec.engine).CONFIG)} if spec.engine else set()
        params = _parameters(name)
        assert set(params) - set(spec.params) - engine == set(), f"{name}: parameters no rule checks"
        assert set(spec.params) <= set(params), f"{name}: rules for parameters it does not have"
        code = "\n".join(line for line in _first_cell_after_parameters(name).splitlines() if not line.startswith("%"))
        calls = [n for n in ast.walk(ast.parse(code))
                 if isinstance(n, ast.Call) and getattr(n.func, "attr", None) == "check_params"]
        assert [ast.literal_eval(c.args[0]) for c in calls] == [name], f"{name}: first cell must call check_params"
        check_params(name, params)  # the defaults pass


# one wrong value per notebook -> (exception type, the one line it says)
WRONG = {
    "00_color_noise": ({"grid": "ten"}, "ValueError",
                       "grid='ten': notebook 00_color_noise parameter grid takes int, not str"),
    "01_pretrain": ({"epochs": "abc"}, "ValueError",
                    "epochs='abc': PretrainConfig parameter epochs takes int, not str"),
    "02_finetune": ({"nproc": 1.5}, "ValueError",
                    "nproc=1.5: notebook 02_finetune parameter nproc takes int, not float"),
    "03_table1_cifar10": ({"run_grid": "yes"}, "ValueError", "run_grid='yes': notebook 03_table1_cifar10 parameter "
                                                             "run_grid takes bool, not str"),
    "04_segmentation": ({"iterations": "ten"}, "ValueError", "iterations='ten': SegmentConfig parameter iterations "
                                                             "takes int or None, not str"),
    "05_detection": ({"top_k": 0}, "ValueError", "top_k=0 must be >= 1 (out of range)"),
    "06_band_sweep": ({"mask_ratio": 1.5}, "ValueError", "mask_ratio=1.5 must be in (0, 1) (out of range)"),
    "07_reconstructions_attention": ({"masks": ["orange"]}, "ValueError", "masks item='orange' is not supported; "
                                                                          "allowed values: random, block, grid"),
    "08_cost_and_tables": ({"cost_dir": "/nonexistent"}, "FileNotFoundError", "cost_dir='/nonexistent': /nonexistent "
                                                                              "does not exist"),
    "09_explore": ({"kind": "orange"}, "ValueError", "kind='orange' is not supported; allowed values: random"),
    "10_explore_reconstructions": ({"image_index": -1}, "ValueError", "image_index=-1 must be >= 0 (out of range)"),
}


@pytest.mark.parametrize("name, params, kind, message", [
    ("01_pretrain", {"batch_size": 16.5}, ValueError, "batch_size=16.5: PretrainConfig parameter batch_size takes int"),
    ("01_pretrain", {"mask": "orange"}, ValueError, "orange"),
    ("01_pretrain", {"epochs": 1, "mask": "green,blue@2"}, ValueError, "switches at epoch 2"),  # the engine's checks
    ("01_pretrain", {"n_show": 0}, ValueError, "n_show=0 must be >= 1"),
    ("02_finetune", {"pretrain_params": {"epochs": "abc"}}, ValueError, "epochs='abc': PretrainConfig parameter"),
    ("02_finetune", {"protocol": "svm"}, ValueError, "protocol='svm' is not supported; allowed values"),
    ("04_segmentation", {"masks": "green"}, ValueError, "masks='green': notebook 04_segmentation parameter masks takes "
                                                        "list, not str"),  # a string was iterated letter by letter
    ("05_detection", {"encoders": {"green": 3}}, ValueError, "encoders=3: .* takes str, not int"),
    ("07_reconstructions_attention", {"attention_seeds": [0, "1"]}, ValueError, "attention_seeds='1'"),
    ("07_reconstructions_attention", {"data_root": "/no/such"}, FileNotFoundError, "/no/such does not exist"),
    ("08_cost_and_tables", {"grid_dir": "results/nope"}, FileNotFoundError, "grid_dir='results/nope'"),
    ("03_table1_cifar10", {"minirepro_dir": ""}, None, None),  # "" leaves an optional input out
    ("06_band_sweep", {"update_records": 1}, ValueError, "update_records=1: .* takes bool, not int"),
])
def test_check_params_names_the_parameter(name, params, kind, message):
    values = {**_parameters(name), **params}
    if kind is None:
        check_params(name, values)
        return
    with pytest.raises(kind, match=message.replace("(", r"\(").replace(")", r"\)")):
        check_params(name, values)


@pytest.mark.slow  # a kernel start and colormae's imports per notebook: ~10 s on a quiet core, ~60 s on a busy one
@pytest.mark.parametrize("name", sorted(NOTEBOOKS))
def test_a_wrong_parameter_stops_the_notebook_in_its_first_cell(name, tmp_path):
    params, ename, message = WRONG[name]
    with pytest.raises(papermill.PapermillExecutionError) as e:
        papermill.execute_notebook(NOTEBOOK_DIR / f"{name}.ipynb", tmp_path / "out.ipynb", parameters=params,
                                   cwd=NOTEBOOK_DIR, progress_bar=False, kernel_name="python3")
    assert e.value.ename == ename and message in e.value.evalue, e.value.evalue
    assert "check_params" in e.value.source  # before any training, figure or table


# -- committed records --------------------------------------------------------------------------

def test_record_dir_mirrors_committed_folders_only(tmp_path):
    assert files.committed_files("results/figures")  # the tracked records this relies on
    assert record_dir("results/figures") == files.LOCAL_RECORDS / "figures"
    assert record_dir("paper_figures") == files.LOCAL_RECORDS / "paper_figures"
    assert record_dir("results/figures", update=True) == ROOT / "results" / "figures"
    assert record_dir("results/no_such_record") == ROOT / "results" / "no_such_record"  # nothing committed there
    assert record_dir(tmp_path) == tmp_path  # outside the repository
    assert files.committed_files(files.LOCAL_RECORDS) == []  # the mirror itself is ignored (.gitignore)


def test_record_dir_is_safe_when_git_cannot_answer(monkeypatch):
    """Notebook 01 once wrote over its committed figures: git could not answer, and "no answer" read
    as "nothing committed". Without an answer every file in the folder counts as a record."""
    def fails(*args, **kwargs):
        raise subprocess.TimeoutExpired("git", 120)
    monkeypatch.setattr(files.subprocess, "run", fails)
    monkeypatch.setattr(files.time, "sleep", lambda s: None)
    assert files.committed_files("results/figures") is None
    assert record_dir("results/figures") == files.LOCAL_RECORDS / "figures"
    assert record_dir("results/no_such_record") == ROOT / "results" / "no_such_record"


def _mirror_of(committed: str, tmp_path: Path) -> Path:
    """A copy of committed folder ``committed`` as a notebook would write it into its mirror."""
    out = tmp_path / "mirror"
    for name in files.committed_files(committed):
        rel = (ROOT / name).relative_to(ROOT / committed)
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / name, out / rel)
    return out


def test_compare_records_reproduced_and_differences(tmp_path):
    out = _mirror_of("results/figures", tmp_path)
    assert compare_records(out, "results/figures") == (3, [])
    assert compare_records(out, "results/figures", since=time.time() + 60) == (0, [])  # written by an earlier run
    fg = out / "fig5_pennfudan_foreground_attention.json"
    record = json.loads(fg.read_text())
    mask, seeds = next(iter(record["per_mask_per_seed"].items()))
    seed = next(iter(seeds))
    value = seeds[seed]
    record["per_mask_per_seed"][mask][seed] = value * (1 + 1e-6)  # within RECORD_RTOL: reproduced
    record["wall_time_s"] = 1.0  # a timing: never compared
    write_json(record, fg)
    assert compare_records(out, "results/figures") == (3, [])
    record["per_mask_per_seed"][mask][seed] = value + 0.01
    record["per_mask_per_seed"][mask]["99"] = 0.5  # a seed the committed record does not have
    write_json(record, fg)
    count, diffs = compare_records(out, "results/figures")
    assert count == 3 and len(diffs) == 2
    assert diffs[0].startswith(f"fig5_pennfudan_foreground_attention.json: per_mask_per_seed.{mask}.{seed}: "
                               f"committed {value:.6g}, here {value + 0.01:.6g}")
    assert diffs[1].endswith(f"per_mask_per_seed.{mask}.99: not in the committed record, here 0.5")


def test_paths_into_the_mirror_read_as_the_committed_paths():
    assert files.committed_spelling("results/local/pretrain/embedded_green") == "results/pretrain/embedded_green"
    assert files.committed_spelling("results/local/paper_figures/fig1.png") == "paper_figures/fig1.png"
    assert local_mirror("results/pretrain/embedded_green") == files.LOCAL_RECORDS / "pretrain" / "embedded_green"


def test_records_report_says_what_differs(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(files, "LOCAL_RECORDS", tmp_path / "local")
    records = Records(update=False)
    out = records.dir("results/figures")
    assert out == tmp_path / "local" / "figures"
    shutil.copytree(_mirror_of("results/figures", tmp_path), out)
    assert records.report() == ["results/figures: committed record reproduced (3 files compared; this run's copy is "
                                f"in {files.repo_relative(out)})"]
    fg = out / "fig5_pennfudan_foreground_attention.json"
    write_json({**json.loads(fg.read_text()), "images": -1}, fg)
    (line,) = records.report()
    assert line.startswith("results/figures differs from the committed record: "
                           "fig5_pennfudan_foreground_attention.json: images: committed ")
    assert line.endswith("pass update_records=True to replace them")
    assert Records(update=True).dir("results/figures") == ROOT / "results" / "figures"


def _text_outputs(notebook: Path) -> str:
    outputs = [o for c in json.loads(notebook.read_text())["cells"] for o in c.get("outputs", [])]
    return "".join("".join(o["text"]) if isinstance(o.get("text"), list) else o.get("text", "") for o in outputs)


@pytest.mark.slow  # a clone and two notebooks: ~2 min on a quiet machine, 7 min on 2 busy cores
def test_a_fresh_clone_keeps_its_committed_records(tmp_path, monkeypatch):
    """git clone, then the cheapest notebooks that write records (00: paper figures, 08: tables and
    Table 4's figure) and the record mechanism for a recomputed run and notebook 07's foreground
    table: `git status --porcelain` stays empty, and the notebooks say the record was reproduced."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True, timeout=300)
    monkeypatch.setenv("PYTHONPATH", str(clone))  # kernels import the clone's colormae, not the editable install's
    env = {**os.environ}
    for name in ("00_color_noise", "08_cost_and_tables"):
        out = tmp_path / f"{name}.ipynb"
        papermill.execute_notebook(clone / "notebooks" / f"{name}.ipynb", out, cwd=clone / "notebooks",
                                   progress_bar=False, kernel_name="python3")
        text = _text_outputs(out)
        assert "committed record reproduced" in text and "differs" not in text, text[-3000:]
        assert str(clone) not in text  # no machine paths in the outputs
    script = """
import json, logging
from colormae.analysis.notebook import Records
from colormae.files import write_json
from colormae.run.rundir import run_location
logging.basicConfig(level=logging.INFO, format="%(message)s")
records = Records(False)
print("RUN", run_location("results/pretrain/embedded_green"))  # no weights in a clone
out = records.dir("results/figures")
fg = json.load(open("results/figures/fig5_pennfudan_foreground_attention.json"))
fg["per_mask_per_seed"]["random"]["7"] = 0.5  # a table over other seeds than the committed one
write_json(fg, out / "fig5_pennfudan_foreground_attention.json")
print("REPORT", records.report())
"""
    proc = subprocess.run([sys.executable, "-c", script], cwd=clone, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"RUN {clone}/results/local/pretrain/embedded_green" in proc.stdout
    assert "weights are not committed; recomputing in results/local/pretrain/embedded_green" in proc.stderr
    assert "results/figures differs from the committed record: fig5_pennfudan_foreground_attention.json: " \
           "per_mask_per_seed.random." in proc.stdout and "committed files are left unchanged" in proc.stdout
    status = subprocess.run(["git", "status", "--porcelain"], cwd=clone, capture_output=True, text=True, check=True)
    assert status.stdout == "", status.stdout


def test_notebook_module_has_no_state_between_records():
    assert Records().folders == {} and Records().folders is not Records().folders
    assert notebook.NOTEBOOKS["08_cost_and_tables"].params["cost_dir"].exists
