"""Issue #22: the mechanisms that keep inputs and records safe and errors clear, one test each
(each was checked against the code before the fix: it fails there)."""
from __future__ import annotations

import ast
import dataclasses
import errno
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import MICRO, ROOT
from PIL import Image

from colormae.data import datasets as data_lib
from colormae.data.coco import CocoInstances, check_annotations
from colormae.data.dense import build_segmentation
from colormae.engines import detect, finetune, pretrain, segment
from colormae.engines.launch import ENGINES
from colormae.experiments import grids, release
from colormae.files import DiskFullError, OutputError, read_json, save_torch, write_json
from colormae.models.mae import untrained_encoder
from colormae.run import compact
from colormae.run.config import (
    CLASSIFICATION_DATA_FIELDS,
    RunConfig,
    check_common,
    config_from_params,
)
from colormae.run.rundir import (
    LOCK,
    RunDir,
    check_same_engine,
    check_same_experiment,
    config_record,
    foreign_fields,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def _fake_run(run_dir: Path, mask="green", seed=0, finished=True, weights_seed=None):
    from colormae.models.mae import mae_model
    torch.manual_seed(seed if weights_seed is None else weights_seed)
    model = mae_model(MICRO, norm_pix_loss=True)
    save_torch({"model": model.state_dict(), "mae_config": dataclasses.asdict(model.cfg)},
               run_dir / "checkpoint-last.pth")
    write_json({"finished": finished, "final_loss": 0.5, "epochs_done": 1, "engine": "pretrain",
                "config": {"mask": mask, "seed": seed}}, run_dir / "summary.json")
    return model


# == data loss =====================================================================================

def test_compact_weights_are_named_by_mask_and_seed(tmp_path):
    """`colormae weights GRID --seed 1` wrote weights/<mask>.pth, the seed-0 file."""
    grid = tmp_path / "grid"
    _fake_run(grid / "runs" / "green_seed0")
    _fake_run(grid / "runs" / "green_seed1", seed=1)
    seed0 = release.export_grid(grid, seed=0)
    assert [p.name for p in seed0] == ["green.pth"]
    before = seed0[0].read_bytes()
    seed1 = release.export_grid(grid, seed=1)
    assert [p.name for p in seed1] == ["green_seed1.pth"]
    assert seed0[0].read_bytes() == before  # the seed-0 file (committed in the real grid) is untouched
    assert torch.load(seed1[0], weights_only=False)["seed"] == 1
    assert compact.find_compact(grid, "green", 0) == seed0[0]
    assert compact.find_compact(grid, "green", 1) == seed1[0]
    # a legacy <mask>.pth whose own record says another seed is not the seed-0 model, and is not overwritten
    shutil.copy(seed1[0], seed0[0])
    assert compact.find_compact(grid, "green", 0) is None
    with pytest.raises(ValueError, match="refusing to write mask='green' seed=0 into .*green.pth: the record in it "
                                         "says mask='green' seed=1"):
        release.export_grid(grid, seed=0)
    with pytest.raises(ValueError, match="its name says mask='green' seed=0"):
        release.save_compact(grid / "runs" / "green_seed1", grid / "weights" / "green.pth")


def test_committed_seed0_weights_stay_valid():
    grid = ROOT / "results" / "cifar10_grid16"
    if not (grid / "weights" / "green.pth").is_file():
        pytest.skip("no committed grid weights in this checkout")
    for path in sorted((grid / "weights").glob("*.pth")):
        assert compact.find_compact(grid, path.stem, 0) == path  # the names fine-tuning configs record


def test_overwrite_never_clears_an_input_or_another_engines_run(micro_run, tmp_path):
    """finetune --encoder R --output-dir R --overwrite deleted the pretraining run R."""
    run = tmp_path / "pre"
    shutil.copytree(micro_run("green"), run)
    files = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    cfg = dict(encoder=str(run), protocol="knn", dataset="embedded", train_length=32, test_length=16, device="cpu",
               amp="none", overwrite=True)
    with pytest.raises(ValueError, match="--encoder .* is in --output-dir .*would delete its own input"):
        finetune.run(finetune.FinetuneConfig(**cfg, output_dir=str(run)))
    # another engine's run in --output-dir: neither --overwrite nor --resume touches it
    other = tmp_path / "other"
    shutil.copytree(micro_run("green"), other)
    with pytest.raises(ValueError, match="holds a pretrain run .*same engine"):
        finetune.run(finetune.FinetuneConfig(**cfg, output_dir=str(other)))
    with pytest.raises(ValueError, match="holds a pretrain run"):
        finetune.run(finetune.FinetuneConfig(**{**cfg, "overwrite": False, "resume": "auto"}, output_dir=str(other)))
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == files
    # allowed: overwriting a run of the same engine (another protocol) in another folder
    out = tmp_path / "ft"
    finetune.run(finetune.FinetuneConfig(**{**cfg, "overwrite": False}, output_dir=str(out)))
    s = finetune.run(finetune.FinetuneConfig(**{**cfg, "protocol": "linprobe-cached", "epochs": 1},
                                             output_dir=str(out)))
    assert s["protocol"] == "linprobe-cached"


def test_overwrite_deletes_the_old_run_only_when_the_new_one_writes(micro_run, tmp_path):
    """A replacement that fails on its inputs (here: data) leaves the old run as it was."""
    out = tmp_path / "ft"
    cfg = dict(encoder=str(micro_run("green")), protocol="knn", dataset="embedded", train_length=32, test_length=16,
               device="cpu", amp="none", output_dir=str(out))
    finetune.run(finetune.FinetuneConfig(**cfg))
    before = (out / "summary.json").read_bytes()
    with pytest.raises(ValueError, match="imagefolder needs root"):
        finetune.run(finetune.FinetuneConfig(**{**cfg, "dataset": "imagefolder", "overwrite": True}))
    assert (out / "summary.json").read_bytes() == before


def test_rebuild_writes_beside_the_record(tmp_path, monkeypatch):
    """--rebuild-weights replaced summary.json and metrics.jsonl of a run whose loss did not reproduce."""
    spec = dataclasses.replace(grids.GRIDS["cifar10-minirepro"], out=str(tmp_path / "g"), masks=("green",), seeds=(0,))
    run = tmp_path / "g" / "runs" / "green_seed0"
    cfg = spec.pretrain_config("green", 0, output_dir=str(run), resume="auto")
    run.mkdir(parents=True)
    write_json(config_record(cfg), run / "config.json")
    write_json({"finished": True, "final_loss": 0.5, "engine": "pretrain"}, run / "summary.json")
    (run / "metrics.jsonl").write_text('{"step": 1, "loss": 0.5}\n')
    write_json({"mask": "green", "seed": 0, "final_loss": 0.5, "pretrain_epochs": cfg.epochs,
                "evaluate_config": spec.evaluate, "finetune_config": None}, run / "eval.json")
    record = {p.name: p.read_bytes() for p in run.iterdir()}
    losses = iter([0.75, 0.5])

    def fake_pretrain(c):
        out = Path(c.output_dir) if Path(c.output_dir).is_absolute() else ROOT / c.output_dir
        out.mkdir(parents=True, exist_ok=True)
        (out / "encoder.pth").write_bytes(b"weights")
        (out / "summary.json").write_text("{}")
        return {"final_loss": next(losses), "finished": True}
    monkeypatch.setattr(grids.pretrain, "run", fake_pretrain)
    grids.run_one(spec, "green", 0, rebuild_weights=True)  # not reproduced: stays in rebuild/
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == record
    assert (run / "rebuild" / "encoder.pth").is_file()
    grids.run_one(spec, "green", 0, rebuild_weights=True)  # reproduced: the weights join the run
    assert (run / "encoder.pth").read_bytes() == b"weights"
    assert all((run / n).read_bytes() == b for n, b in record.items())


# == silent-wrong ==================================================================================

def test_experiments_reject_the_flags_the_chosen_grid_does_not_read(monkeypatch, capsys):
    called = []
    monkeypatch.setattr(grids, "run_dense", lambda name, args: called.append(name))
    monkeypatch.setattr(grids, "run_grid", lambda *a, **k: called.append("grid"))
    for argv, bad in [(["pennfudan-segment", "--epochs", "1", "--batch-size", "2", "--scale", "gpu"],
                       "--batch-size, --epochs, --scale"),
                      (["cifar10-minirepro", "--pretrain-seeds", "0"], "--pretrain-seeds"),
                      (["cifar10-grid16", "--finetune-epochs", "1"], "--finetune-epochs"),
                      (["cifar10-band-sweep", "--scale", "gpu"], "--scale")]:
        with pytest.raises(SystemExit) as e:
            grids.main(argv)
        assert e.value.code == 2 and f"does not use {bad}" in capsys.readouterr().err
    assert called == []
    # the nearest accepted: the flags each one reads
    grids.main(["pennfudan-segment", "--masks", "green", "--seeds", "0", "--pretrain-seeds", "1", "--device", "cpu"])
    assert called == ["pennfudan-segment"]
    with pytest.raises(Exception):  # parsed and validated: it gets as far as run_grid's table
        grids.main(["cifar10-grid16", "--scale", "gpu", "--finetune-epochs", "1", "--out", "/nonexistent/x"])
    assert "does not use" not in capsys.readouterr().err


def _attributes_read(path: Path, name: str = "cfg") -> set[str]:
    tree = ast.parse(path.read_text())
    reads = {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name)
             and n.value.id in (name, "self_cfg")}
    reads |= {n.args[1].value for n in ast.walk(tree)
              if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "getattr"
              and len(n.args) >= 2 and isinstance(n.args[1], ast.Constant)}
    reads |= {n.attr for n in ast.walk(tree) if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Attribute)
              and n.value.attr == "cfg"}  # self.cfg.<field>
    return reads


@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_every_flag_an_engine_accepts_is_read_by_it(engine):
    """segment/detect accepted --dataset, --pipeline, --skip-corrupt ... and ignored them. A field
    of the shared bookkeeping (RunConfig) is read by run/; any other must be read by the engine
    (or by the data loader it hands its config to)."""
    module = ENGINES[engine]
    pkg = ROOT / "colormae"
    shared = set().union(*(_attributes_read(p) for p in (pkg / "run").glob("*.py") if p.name != "config.py"))
    source = Path(module.__file__)
    own = _attributes_read(source)
    if "train_loader(" in source.read_text():
        own |= _attributes_read(pkg / "data" / "loaders.py")
    bookkeeping = {f.name for f in dataclasses.fields(RunConfig)}
    unread = [f.name for f in dataclasses.fields(module.CONFIG)
              if f.name not in own and not (f.name in shared and f.name in bookkeeping)]
    assert not unread, f"colormae {engine} accepts {unread} but never reads them"


def test_resume_rules_in_both_directions(tmp_path):
    cfg = pretrain.PretrainConfig(epochs=2, output_dir=str(tmp_path))
    saved = config_record(cfg)
    check_same_experiment({**saved, "epochs": 1}, cfg, "x")                  # epochs may grow on resume ...
    with pytest.raises(ValueError, match="epochs: 3 -> 2"):
        check_same_experiment({**saved, "epochs": 3}, cfg, "x")              # ... not shrink
    with pytest.raises(ValueError, match="epochs: 1 -> 2"):
        check_same_experiment({**saved, "epochs": 1}, cfg, "x", growable=())  # a reused evaluation: exact
    check_same_experiment({**saved, "num_workers": 7}, cfg, "x")             # non-experiment field: allowed
    with pytest.raises(ValueError, match="mask_ratio: 0.5 -> 0.75"):
        check_same_experiment({**saved, "mask_ratio": 0.5}, cfg, "x")
    # a segment config saved before the classification fields left it: still segment's; pretrain's is not
    seg_cfg = segment.SegmentConfig(encoder="e")
    old_seg = {**config_record(seg_cfg), **{k: None for k in CLASSIFICATION_DATA_FIELDS}}
    assert foreign_fields(old_seg, segment.SegmentConfig) == []
    assert "mask" in foreign_fields(saved, segment.SegmentConfig)
    write_json(old_seg, tmp_path / "config.json")
    check_same_engine(seg_cfg, RunDir(tmp_path))
    write_json(saved, tmp_path / "config.json")
    with pytest.raises(ValueError, match="holds a pretrain run"):
        check_same_engine(seg_cfg, RunDir(tmp_path))


def test_a_grid_reuses_an_evaluation_only_for_the_pretraining_it_records(tmp_path, monkeypatch):
    """With grid.json deleted, a 1-epoch evaluation was reused for a 3-epoch grid."""
    spec = dataclasses.replace(grids.GRIDS["cifar10-minirepro"], out=str(tmp_path / "g"), masks=("green",), seeds=(0,))
    run = tmp_path / "g" / "runs" / "green_seed0"
    run.mkdir(parents=True)
    cfg = spec.pretrain_config("green", 0, output_dir=str(run), resume="auto")
    rec = {"mask": "green", "seed": 0, "final_loss": 0.5, "pretrain_epochs": cfg.epochs,
           "evaluate_config": spec.evaluate, "finetune_config": None, "pretrain_config": config_record(cfg)}
    write_json(rec, run / "eval.json")
    assert grids.run_one(spec, "green", 0)["final_loss"] == 0.5  # the same pretraining: reused
    longer = dataclasses.replace(spec, pretrain={**spec.pretrain, "epochs": cfg.epochs + 2})
    with pytest.raises(ValueError, match=f"epochs: {cfg.epochs} -> {cfg.epochs + 2}"):
        grids.run_one(longer, "green", 0)
    write_json({k: v for k, v in rec.items() if k != "pretrain_config"}, run / "eval.json")  # an older record
    with pytest.raises(ValueError, match="does not record the pretraining it evaluated"):
        grids.run_one(spec, "green", 0)
    write_json(config_record(cfg), run / "config.json")  # ... whose run still has its config.json
    assert grids.run_one(spec, "green", 0)["final_loss"] == 0.5
    with pytest.raises(ValueError, match=f"evaluated {cfg.epochs:g} pretraining epochs; this grid asks for"):
        write_json({**config_record(cfg), "epochs": cfg.epochs + 2}, run / "config.json")
        grids.run_one(longer, "green", 0)


def _png16(path: Path, value: int = 32768, size=(8, 8)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, dtype=np.uint16)).save(path)
    with Image.open(path) as img:
        assert img.mode.startswith("I")  # a real 16-bit PNG


def test_a_16_bit_png_through_every_dataset_kind(tmp_path):
    """Segmentation and detection decoded with convert("RGB"): 16-bit clipped to white."""
    want = round(32768 * 255 / 65535)  # 128, not 255
    for cls in ("a", "b"):  # classification image folder
        for split in ("train", "val"):
            _png16(tmp_path / "cls" / split / cls / "0.png")
    ds = data_lib.build_dataset("imagefolder", tmp_path / "cls", "train", labeled=True)
    assert np.asarray(ds._read(0)[0]).max() == want
    for split in ("train", "val"):  # segmentation folder
        _png16(tmp_path / "seg" / "images" / split / "0.png")
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "seg" / "masks" / split / "0.png") \
            if (tmp_path / "seg" / "masks" / split).mkdir(parents=True) is None else None
    _, image, _ = build_segmentation("folder", tmp_path / "seg", "train", num_classes=2)[0]
    assert int(image.max()) == want
    coco = tmp_path / "coco"  # detection
    _png16(coco / "train2017" / "0.png")
    (coco / "annotations").mkdir()
    (coco / "annotations" / "instances_train2017.json").write_text(json.dumps({
        "images": [{"id": 1, "file_name": "0.png", "height": 8, "width": 8}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 4, 4], "iscrowd": 0, "area": 16,
                         "segmentation": [[1, 1, 5, 1, 5, 5, 1, 5]]}],
        "categories": [{"id": 1, "name": "x"}]}))
    image, _ = CocoInstances(coco, "train2017")[0]
    assert int(image.max()) == want


def test_train_and_val_classes_must_match(tmp_path):
    """val/kitten beside train/cat: label 0 meant two classes, rc 0."""
    for split, names in (("train", ("cat", "dog")), ("val", ("dog", "kitten"))):
        for name in names:
            (tmp_path / split / name).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / name / "0.png")
    from colormae.engines.frozen import check_num_classes
    train = data_lib.build_dataset("imagefolder", tmp_path, "train")
    val = data_lib.build_dataset("imagefolder", tmp_path, "val")
    with pytest.raises(ValueError, match=r"only in train \['cat'\], only in test \['kitten'\]"):
        check_num_classes(train, val)
    shutil.rmtree(tmp_path / "val" / "kitten")
    (tmp_path / "val" / "cat").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "val" / "cat" / "0.png")
    assert check_num_classes(train, data_lib.build_dataset("imagefolder", tmp_path, "val")) == 2


@pytest.mark.parametrize("edit, message", [
    (lambda d: d["annotations"].append(dict(d["annotations"][0])), r"duplicate annotation id\(s\) \['1'\]"),
    (lambda d: d["images"].append(dict(d["images"][0])), r"duplicate image id\(s\) \['1'\]"),
    (lambda d: d["annotations"][0].update(bbox=[1, float("nan"), 2, 2]), "annotation id 1: bbox .* not 4 finite"),
    (lambda d: d["annotations"][0].update(bbox=[1, 1, float("inf"), 2]), "annotation id 1: bbox .* not 4 finite"),
    (lambda d: d["annotations"][0].update(bbox="1 1 2 2"), "annotation id 1: bbox '1 1 2 2' is not 4 finite"),
    (lambda d: d["annotations"][0].pop("bbox"), "annotation id 1 has no bbox"),
])
def test_coco_ids_unique_and_boxes_four_finite_numbers(edit, message):
    data = {"images": [{"id": 1, "file_name": "0.png", "height": 8, "width": 8}],
            "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [1, 1, 2, 2]}],
            "categories": [{"id": 1, "name": "x"}]}
    check_annotations(json.loads(json.dumps(data)), "inst.json")  # valid as it is
    edit(data)
    with pytest.raises(ValueError, match=("inst.json: .*" if "duplicate" in message else "inst.json: ") + message):
        check_annotations(data, "inst.json")


@pytest.mark.parametrize("fields, message", [
    (dict(min_lr=1.0, blr=1e-4), r"min_lr=1.0 is above the peak lr 2.5e-05"),
    (dict(checkpoint_minutes=float("nan")), "checkpoint_minutes=nan must be a finite number"),
    (dict(checkpoint_minutes=float("inf")), "checkpoint_minutes=inf must be a finite number"),
    (dict(max_corrupt_fraction=1.5), r"max_corrupt_fraction=1.5 must be in \[0, 1\]"),
    (dict(warmup_epochs=float("nan")), "warmup_epochs=nan must be a finite"),
])
def test_numeric_knobs_are_range_checked(fields, message):
    with pytest.raises(ValueError, match=message):
        check_common(pretrain.PretrainConfig(**fields))


def test_range_checks_allow_the_edges():
    check_common(pretrain.PretrainConfig(min_lr=2.5e-5, blr=1e-4))  # min_lr == peak lr
    check_common(pretrain.PretrainConfig(checkpoint_minutes=0.0, max_corrupt_fraction=1.0))
    check_common(finetune.resolve_defaults(finetune.FinetuneConfig(encoder="e", protocol="knn")))  # blr 0


def test_folder_scan_does_not_follow_directory_symlinks(tmp_path):
    """train/cat/up -> .. made 16,400 images of 400."""
    for cls in ("cat", "dog"):
        (tmp_path / "train" / cls).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (4, 4)).save(tmp_path / "train" / cls / f"{i}.png")
    (tmp_path / "train" / "cat" / "up").symlink_to("..")
    os.symlink(tmp_path / "train" / "dog" / "0.png", tmp_path / "train" / "cat" / "linked.png")  # a file link: kept
    ds = data_lib.build_dataset("imagefolder", tmp_path, "train")
    assert len(ds) == 7 and ds.classes == ["cat", "dog"]


def test_weights_command_errors_are_one_line(micro_run, tmp_path, capsys, caplog):
    for argv, message in [([str(tmp_path / "no" / "grid")], "is not a grid folder"),
                          (["--classifier", str(tmp_path / "none")], "no such run directory"),
                          (["--classifier", str(micro_run("green"))], "is a pretrain run, not a fine-tuning run")]:
        caplog.clear()
        with pytest.raises(SystemExit) as e:
            release.main(argv)
        assert e.value.code == 2 and message in caplog.text and "Traceback" not in caplog.text


@pytest.mark.parametrize("cls, params, message", [
    (pretrain.PretrainConfig, {"epochs": "abc"}, "epochs='abc': PretrainConfig parameter epochs takes int, not str"),
    (pretrain.PretrainConfig, {"batch_size": 16.5}, "batch_size=16.5: .* takes int, not float"),
    (segment.SegmentConfig, {"iterations": "ten"}, "iterations='ten': .* takes int or None, not str"),
    (pretrain.PretrainConfig, {"norm_pix_loss": 1}, "norm_pix_loss=1: .* takes bool or None, not int"),
    (pretrain.PretrainConfig, {"epochs": None}, "epochs=None: .* takes int, not NoneType"),
])
def test_notebook_parameters_are_type_checked_like_flags(cls, params, message):
    with pytest.raises(ValueError, match=message):
        config_from_params(cls, params)


def test_notebook_parameters_accept_what_the_flags_accept():
    cfg = config_from_params(pretrain.PretrainConfig, {"epochs": np.int64(3), "blr": 1, "norm_pix_loss": None,
                                                      "amp": "none", "output_dir": Path("results/x")})
    assert cfg.epochs == 3 and type(cfg.epochs) is int and cfg.blr == 1.0 and type(cfg.blr) is float
    assert cfg.output_dir == "results/x"  # a Path for a file or folder knob


# == unclear ======================================================================================

def test_torch_short_write_is_the_disk_full_error(tmp_path, monkeypatch):
    def short(obj, path, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2048 vs 1983")
    monkeypatch.setattr(torch, "save", short)
    with pytest.raises(DiskFullError, match="the disk is full: could not write .*x.pth"):
        save_torch({"a": 1}, tmp_path / "x.pth")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("something else")))
    with pytest.raises(RuntimeError, match="something else"):  # other errors stay what they are
        save_torch({"a": 1}, tmp_path / "x.pth")


def test_a_real_file_size_limit_is_the_disk_full_error_and_leaves_no_lock(tmp_path):
    """RLIMIT_FSIZE in a subprocess: torch.save and the lock file hit the limit as a full disk would."""
    pytest.importorskip("resource")
    script = textwrap.dedent(f"""
        import resource, signal, torch
        from colormae.files import DiskFullError, save_torch
        from colormae.run.rundir import RunDir
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, resource.RLIM_INFINITY))
        try:
            save_torch(torch.zeros(100000), {str(tmp_path / 'big.pth')!r})
        except DiskFullError as e:
            print("SAVE", e)
        try:
            RunDir({str(tmp_path / 'run')!r}).acquire_lock()
        except DiskFullError as e:
            print("LOCK", e)
    """)
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "SAVE the disk is full: could not write" in proc.stdout, proc.stderr
    assert "LOCK the disk is full: could not write" in proc.stdout, proc.stderr
    assert not (tmp_path / "run" / LOCK).exists() and not (tmp_path / "big.pth").exists()
    assert not list((tmp_path / "run").glob(".*.tmp"))


@pytest.mark.parametrize("content", ["", "{", "[]", '{"pid": null}'])
def test_an_empty_or_unparseable_lock_is_stale(tmp_path, content, caplog):
    (tmp_path / LOCK).write_text(content)
    RunDir(tmp_path).acquire_lock()
    assert json.loads((tmp_path / LOCK).read_text())["pid"] == os.getpid()
    RunDir(tmp_path).release_lock()


def test_a_live_lock_still_refuses(tmp_path):
    from colormae.run.rundir import RunInUseError
    (tmp_path / LOCK).write_text(json.dumps({"pid": os.getppid(), "host": os.uname().nodename}))
    with pytest.raises(RunInUseError, match=f"in use by process {os.getppid()}"):
        RunDir(tmp_path).acquire_lock()


def test_read_only_output_and_a_file_as_output_dir_say_so(micro_run, tmp_path, monkeypatch):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(OutputError, match="is a file, not a folder"):
        RunDir(f).acquire_lock()

    def read_only(*a, **k):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(OutputError, match="cannot write .*: Read-only file system. Choose a writable --output-dir"):
        RunDir(tmp_path / "r").acquire_lock()
    with pytest.raises(OutputError, match="Read-only file system"):
        write_json({}, tmp_path / "r" / "x.json")


def test_a_finished_run_is_reported_without_the_lock(micro_run, tmp_path, monkeypatch):
    out = tmp_path / "ft"
    cfg = finetune.FinetuneConfig(encoder=str(micro_run("green")), protocol="knn", dataset="embedded", train_length=32,
                                  test_length=16, device="cpu", amp="none", output_dir=str(out))
    first = finetune.run(cfg)

    def no_lock(self):
        raise OSError(errno.EROFS, "Read-only file system")
    monkeypatch.setattr(RunDir, "acquire_lock", no_lock)
    again = finetune.run(dataclasses.replace(cfg, resume="auto"))
    assert again["top1"] == first["top1"]


def test_another_engines_run_as_encoder_is_named(micro_run, tmp_path):
    out = tmp_path / "knn"
    cfg = dict(protocol="knn", dataset="embedded", train_length=32, test_length=16, device="cpu", amp="none")
    finetune.run(finetune.FinetuneConfig(encoder=str(micro_run("green")), output_dir=str(out), **cfg))
    with pytest.raises(ValueError, match=f"--encoder {out}: .* is a knn run, not a pretraining run"):
        finetune.run(finetune.FinetuneConfig(encoder=str(out), output_dir=str(tmp_path / "x"), **cfg))
    with pytest.raises(FileNotFoundError, match="--encoder .*nothing: no such file or folder"):
        finetune.run(finetune.FinetuneConfig(encoder=str(tmp_path / "nothing"), output_dir=str(tmp_path / "x"), **cfg))


@pytest.fixture(scope="module")
def seg_folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("segfolder")
    rng = np.random.default_rng(0)
    for split, n in (("train", 8), ("val", 2)):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
        for i in range(n):
            image = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            Image.fromarray(image).save(root / "images" / split / f"{i}.png")
            Image.fromarray((rng.random((32, 32)) > 0.5).astype(np.uint8)).save(root / "masks" / split / f"{i}.png")
    return root


def _seg_cfg(encoder, root, out, **kw):
    base = dict(encoder=str(encoder), recipe="cpu", data="folder", num_classes=2, data_root=str(root), crop_size=32,
                test_scale=32, slide_stride=16, iterations=2, batch_size=4, warmup_iters=1, head_channels=16,
                output_dir=str(out), device="cpu", amp="none", log_every=1)
    return segment.SegmentConfig(**{**base, **kw})


def test_segmentation_errors_say_what_to_change(seg_folder, tmp_path):
    enc = tmp_path / "enc.pth"
    save_torch(untrained_encoder(MICRO, 0), enc)  # 8 x 8 grid: 4-px patches at crop 32
    with pytest.raises(ValueError, match=r"test_scale=4 is too small .*use --test-scale >= 8"):
        segment.run(_seg_cfg(enc, seg_folder, tmp_path / "a", test_scale=4))
    segment.run(_seg_cfg(enc, seg_folder, tmp_path / "b", test_scale=8, iterations=1))  # the bound itself works
    broken = tmp_path / "broken"
    shutil.copytree(seg_folder, broken)
    (broken / "images" / "train" / "3.png").write_bytes(b"")
    with pytest.raises(data_lib.CorruptImageError, match="cannot read image .*train/3.png"):
        segment.run(_seg_cfg(enc, broken, tmp_path / "c"))
    with pytest.raises(ValueError, match="1 of 8 images .* more than the allowed 1.00% .*train/3.png"):
        segment.run(_seg_cfg(enc, broken, tmp_path / "c", skip_corrupt=True))
    s = segment.run(_seg_cfg(enc, broken, tmp_path / "c", skip_corrupt=True, max_corrupt_fraction=0.2, iterations=1))
    assert s["num_train"] == 7
    ignored = tmp_path / "ignored"
    shutil.copytree(seg_folder, ignored)
    for p in (ignored / "masks" / "train").glob("*.png"):
        Image.fromarray(np.full((32, 32), 255, np.uint8)).save(p)
    with pytest.raises(ValueError, match="hold no labelled pixel .*ignore value 255") as e:
        segment.run(_seg_cfg(enc, ignored, tmp_path / "d", iterations=8))
    assert "--blr" not in str(e.value)


def test_detection_checks_the_token_count_before_the_model(monkeypatch, tmp_path):
    export = untrained_encoder(MICRO, 0)  # 4-px patches
    cfg = detect.DetectConfig(encoder="e", data="pennfudan", img_size=1024, batch_size=2)
    monkeypatch.setattr(detect, "available_memory", lambda device: 8 * 2**30)
    with pytest.raises(ValueError, match=r"img_size=1024 with 4-px patches is 256x256 = 65536 tokens .*Pass "
                                         r"--patch-size \d+"):
        detect.check_tokens(export, cfg, torch.device("cpu"))
    detect.check_tokens(export, dataclasses.replace(cfg, patch_size=16), torch.device("cpu"))  # 4096 tokens: fits


def test_grid_errors_name_the_file_and_leave_no_grid_json(tmp_path, monkeypatch, caplog):
    (tmp_path / "bad.json").write_text('{"knn_top1": 0.5,')
    with pytest.raises(ValueError, match=r"bad.json is not valid JSON"):
        read_json(tmp_path / "bad.json")
    spec = dataclasses.replace(grids.GRIDS["cifar10-minirepro"], out=str(tmp_path / "g"), masks=("green",), seeds=(0,))

    def fails(*a, **k):
        raise ValueError("batch_size=1000 x accum_iter=1 x 1 process(es) exceeds the dataset")
    monkeypatch.setattr(grids, "run_one", fails)
    with pytest.raises(ValueError, match="batch_size=1000"):
        grids.run_grid(spec)
    assert not (tmp_path / "g" / "grid.json").exists()  # the corrected command is not refused
    monkeypatch.setattr(grids, "run_one", lambda *a, **k: {})
    monkeypatch.setattr(grids, "write_table", lambda spec: tmp_path / "t.csv")
    grids.run_grid(spec)
    assert read_json(tmp_path / "g" / "grid.json")["masks"] == ["green"]


def test_frozen_protocols_apply_the_corrupt_image_ceiling(micro_run, tmp_path):
    """--max-corrupt-fraction was read by the trained protocols only; kNN skipped any number."""
    for split in ("train", "val"):
        for cls in ("a", "b"):
            (tmp_path / "data" / split / cls).mkdir(parents=True)
            for i in range(4):
                Image.new("RGB", (32, 32), (40 * i, 0, 0)).save(tmp_path / "data" / split / cls / f"{i}.png")
    (tmp_path / "data" / "train" / "a" / "bad.png").write_bytes(b"")
    cfg = dict(encoder=str(micro_run("green")), protocol="knn", dataset="imagefolder", data_root=str(tmp_path / "data"),
               pipeline="files", skip_corrupt=True, knn_k=2, device="cpu", amp="none")
    with pytest.raises(ValueError, match="1 of 9 images .* skipped as corrupt, more than the allowed 1.00%"):
        finetune.run(finetune.FinetuneConfig(**cfg, output_dir=str(tmp_path / "a")))
    s = finetune.run(finetune.FinetuneConfig(**cfg, max_corrupt_fraction=0.2, output_dir=str(tmp_path / "b")))
    assert s["num_train"] == 9


def test_detection_skips_unreadable_coco_images_when_asked(micro_run, tmp_path):
    """detect had no --skip-corrupt (classification and segmentation have it): a zero-byte image
    stopped the run mid-epoch. Skipped images are named, counted in the summary and capped."""
    from test_detect import TINY, write_coco
    write_coco(tmp_path / "coco", "train2017", 4, seed=0)
    write_coco(tmp_path / "coco", "val2017", 2, seed=1)
    (tmp_path / "coco" / "train2017" / "1.png").write_bytes(b"")
    cfg = dict(encoder=str(micro_run("green")), data="coco", data_root=str(tmp_path / "coco"), epochs=1,
               device="cpu", **TINY)
    with pytest.raises(data_lib.CorruptImageError, match="cannot read image .*train2017/1.png"):
        detect.run(detect.DetectConfig(**cfg, output_dir=str(tmp_path / "a")))
    with pytest.raises(ValueError, match=r"1 of 4 images \(25.00%\) are unreadable, more than the allowed 1.00% "
                                         r".*train2017/1.png"):
        detect.run(detect.DetectConfig(**cfg, skip_corrupt=True, output_dir=str(tmp_path / "b")))
    s = detect.run(detect.DetectConfig(**cfg, skip_corrupt=True, max_corrupt_fraction=0.25,
                                       output_dir=str(tmp_path / "c")))
    assert s["num_train"] == 3 and s["skipped_annotations"]["train"]["unreadable_images"] == 1
    with pytest.raises(ValueError, match="skip_corrupt applies to data='coco'"):
        detect.validate(detect.DetectConfig(encoder="e", data="pennfudan", skip_corrupt=True))
