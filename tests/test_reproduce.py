"""colormae.experiments.reproduce: the listing covers paper_figures/, notebooks are scanned, nothing heavy runs."""
import json

import nbformat
import pytest

from colormae.engines.launch import parse_engine_args
from colormae.experiments import reproduce


def test_list_names_every_file_in_paper_figures(capsys):
    reproduce.main(["--list"])
    out = capsys.readouterr().out
    stems = reproduce.figure_files()
    assert stems, "paper_figures/ is empty"
    for stem in stems:
        assert f"paper_figures/{stem}.{{png,pdf}}" in out, stem
    assert "NO NOTEBOOK SAVES IT" not in out, out


def test_every_paper_figure_has_a_description_and_a_notebook():
    nbs = reproduce.notebooks()
    for stem in reproduce.figure_files():
        assert reproduce.owner(stem, nbs) is not None, stem
        assert stem in reproduce.DESCRIPTIONS, f"{stem}: add a line to reproduce.DESCRIPTIONS"


def _notebook(tmp_path, params: str, code: str):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(code)]
    path = tmp_path / "09_x.ipynb"
    nbformat.write(nb, path)
    return path


def test_scan_reads_figures_into_paper_figures_and_result_inputs(tmp_path):
    path = _notebook(tmp_path,
                     'grid_dir = "results/g"  # a comment\nruns = {"a": "results/r"}\nfig_dir = "paper_figures"\n'
                     'output_dir = "results/out"\nn = 3',
                     'save_figure(fig, "fig9_a", fig_dir)\nsave_figure(fig, f"fig9_{k}", fig_dir)\n'
                     'save_figure(fig, "loss", output_dir)')
    nb = reproduce.scan_notebook(path)
    assert nb.figures == ["fig9_a", "fig9_*"]        # not the one saved into output_dir
    assert nb.reads == ["results/g", "results/r"]    # outputs are not inputs
    assert reproduce.owner("fig9_b", [nb]) is nb


def test_unknown_notebook_prefix_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--notebooks", "99"])
    assert e.value.code == 2 and "match no notebook" in capsys.readouterr().err


def test_dry_run_prints_experiments_with_estimates_and_runs_nothing(capsys, monkeypatch):
    monkeypatch.setattr(reproduce.subprocess, "run", lambda *a, **k: pytest.fail("dry run started a process"))
    monkeypatch.setattr(reproduce, "execute", lambda *a, **k: pytest.fail("dry run executed notebooks"))
    reproduce.main(["--run-experiments", "--dry-run", "--notebooks", "07", "08"])
    out = capsys.readouterr().out
    for name, estimate in reproduce.EXPERIMENTS.items():
        assert f"colormae experiments {name}" in out and estimate in out
    assert "python -m colormae finetune" in out
    assert "would run: 07_reconstructions_attention.ipynb, 08_cost_and_tables.ipynb" in out


def test_notebooks_run_in_name_order_into_results_notebooks():
    names = [nb.name for nb in reproduce.notebooks()]
    assert names == sorted(names) and names[0].startswith("00")
    assert reproduce.OUT_DIR.relative_to(reproduce.ROOT).as_posix() == "results/notebooks"


# -- compact weights (colormae.experiments.release) and the transcribed tables (colormae.analysis.paper_tables) --------

def _fake_run(run_dir, mask="green", seed=0, finished=True):
    import torch

    from colormae.files import save_torch, write_json
    from colormae.models.mae import mae_model
    from colormae.run.rundir import LAST
    torch.manual_seed(seed)
    model = mae_model("mae_vit_micro_patch4_32", norm_pix_loss=True)
    from dataclasses import asdict
    save_torch({"model": model.state_dict(), "mae_config": asdict(model.cfg)}, run_dir / LAST)
    write_json({"finished": finished, "final_loss": 0.5, "epochs_done": 1, "config": {"mask": mask, "seed": seed}},
               run_dir / "summary.json")
    return model


def test_compact_weights_round_trip_in_fp16(tmp_path):
    import torch

    from colormae.experiments.release import export_grid
    from colormae.run.artifacts import grid_model, load_compact
    grid = tmp_path / "grid"
    model = _fake_run(grid / "runs" / "green_seed0")
    _fake_run(grid / "runs" / "red_seed0", mask="red", finished=False)   # unfinished: not exported
    written = export_grid(grid)
    assert [p.name for p in written] == ["green.pth"]
    loaded = load_compact(written[0])
    assert loaded.cfg == model.cfg and not loaded.training
    for k, v in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v.half().float())   # exactly fp16 rounding
    rec = torch.load(written[0], weights_only=False)
    assert rec["mask"] == "green" and rec["seed"] == 0 and all(t.dtype == torch.float16 for t in rec["model"].values())
    imgs = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 64)
    mask[:, :48] = 1
    with torch.no_grad():  # fp16 weights barely move the loss
        assert abs(float(model.eval()(imgs, mask)[0]) - float(loaded(imgs, mask)[0])) < 1e-2
    # the compact file is preferred for seed 0; other seeds come from run directories
    assert grid_model(grid, "green")[1].endswith("weights/green.pth")
    _fake_run(grid / "runs" / "green_seed1", seed=1)
    assert grid_model(grid, "green", seed=1)[1].endswith("runs/green_seed1")
    with pytest.raises(FileNotFoundError, match="cifar10-grid16"):
        grid_model(grid, "blue")
    # the compact file is an encoder source for fine-tuning (Fig. 6 from a fresh clone): fp32 export
    from colormae.models.mae import export_encoder
    from colormae.run.artifacts import load_encoder
    export, reference = load_encoder(written[0]), export_encoder(loaded)
    assert export["timm_name"] == reference["timm_name"]
    for k, v in reference["state_dict"].items():
        assert export["state_dict"][k].dtype == torch.float32
        torch.testing.assert_close(export["state_dict"][k], v)


def test_reexporting_an_unchanged_run_leaves_the_compact_file_alone(tmp_path):
    """Committed compact files must not churn in git when the export is run again; a changed run
    (other weights or another final loss) is written again."""
    import torch

    from colormae.experiments.release import export_grid
    from colormae.files import write_json
    grid = tmp_path / "grid"
    run = grid / "runs" / "green_seed0"
    _fake_run(run)
    path = export_grid(grid)[0]
    before = path.stat()
    assert export_grid(grid) == [path]
    assert path.stat().st_ino == before.st_ino and path.stat().st_mtime_ns == before.st_mtime_ns
    summary = {"finished": True, "final_loss": 0.25, "epochs_done": 1, "config": {"mask": "green", "seed": 0}}
    write_json(summary, run / "summary.json")
    export_grid(grid)
    assert path.stat().st_ino != before.st_ino and torch.load(path, weights_only=False)["final_loss"] == 0.25
    written = path.stat()
    _fake_run(run, seed=3)  # other weights ...
    write_json(summary, run / "summary.json")  # ... same metadata
    export_grid(grid)
    assert path.stat().st_ino != written.st_ino


def test_paper_tables_are_labelled_and_complete():
    from colormae.analysis import paper_tables as pt
    t4 = pt.paper_table4()
    assert t4.index.name.startswith("paper") and t4.loc["random", "params_m"] == 111.91
    assert pt.PAPER_BANK_MEMORY_INCREASE == pytest.approx(0.028, abs=5e-4)   # the paper's +2.8 %
    for part in ("a", "b"):
        paper, commands = pt.paper_table2(part), pt.table2_commands(part)
        assert paper.index.names[0].startswith("paper")
        assert commands.shape == paper.shape and commands.notna().all().all()
        assert commands.index.equals(paper.index)
    assert "-m colormae detect " in pt.table2_commands("b").loc[("coco_ap_box_1024", 300), "green"]
    assert "--img-size 1024" in pt.table2_commands("b").loc[("coco_ap_box_1024", 300), "green"]
    assert "--mask-source bank" not in pt.table2_commands("a").loc[("ade20k_miou", 800), "random"]
    t3 = pt.paper_table3()
    assert (t3["scale"].str.startswith("paper")).all()
    assert t3.set_index(["method", "pretrain_epochs"]).loc[("ColorMAE-G", 800), "ade20k_miou"] == 49.2


def test_fig6_finetune_commands_are_valid_and_where_notebook_07_looks():
    from colormae.engines import finetune
    params = reproduce._parameters(json.loads((reproduce.NOTEBOOKS_DIR / "07_reconstructions_attention.ipynb")
                                              .read_text())["cells"])
    for mask, cmd in reproduce.FINETUNE_CAM.items():
        assert cmd[:3] == ["-m", "colormae", "finetune"]
        cfg = finetune.resolve_defaults(parse_engine_args("finetune", cmd[3:]))
        finetune.validate(cfg)
        assert cfg.protocol == "finetune" and cfg.dataset == "cifar10"
        assert params["finetune_dirs"][mask] == cfg.output_dir


def test_a_failing_notebook_does_not_stop_the_others(tmp_path, monkeypatch, capsys):
    import papermill
    ran = []

    def fake_execute(src, dst, **kwargs):
        ran.append(src)
        if "07_" in src:
            raise papermill.PapermillExecutionError(0, 1, "no model", "FileNotFoundError", "no model", [])
    monkeypatch.setattr(papermill, "execute_notebook", fake_execute)
    monkeypatch.setattr(reproduce, "OUT_DIR", tmp_path)
    with pytest.raises(SystemExit) as e:
        reproduce.main(["--notebooks", "07", "08"])
    assert e.value.code == 1 and len(ran) == 2
    assert "notebooks/07_reconstructions_attention.ipynb: FileNotFoundError: no model" in capsys.readouterr().out


def test_run_experiments_names_only_grids_that_exist():
    from colormae.experiments.grids import DENSE, GRIDS
    assert set(reproduce.EXPERIMENTS) <= set(GRIDS) | set(DENSE)
