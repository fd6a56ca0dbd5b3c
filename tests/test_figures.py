"""The notebooks' figure and table helpers (colormae.analysis.figures / attention / cam, the dense
tables of colormae.experiments.dense, colormae.engines.launch's per-encoder runs): figure data out
(axes, titles, images) on tiny inputs."""
import json
import shutil

import numpy as np
import pytest
import torch
from conftest import MICRO
from matplotlib.figure import Figure
from PIL import Image

from colormae.analysis import attention, cam, figures
from colormae.engines import launch
from colormae.experiments import dense
from colormae.files import save_torch, write_json
from colormae.masks.maskers import make_masker, masker_from_description
from colormae.models.mae import untrained_encoder

pytestmark = pytest.mark.usefixtures("one_thread")  # conftest: tiny ops run faster on one thread


def _titles(fig: Figure) -> list[str]:
    return [ax.get_title() for ax in fig.axes]


@pytest.fixture(scope="module")
def grid_dir(tmp_path_factory, micro_run):
    """A grid folder with the seed-0 runs of random and green (norm-pix micro runs, conftest.micro_run)."""
    grid = tmp_path_factory.mktemp("grid")
    for mask in ("random", "green"):
        shutil.copytree(micro_run(mask, norm_pix_loss=True), grid / "runs" / f"{mask}_seed0")
    return grid


# -- masks: the recorded description -----------------------------------------------------------------

@pytest.mark.parametrize("kind, kw", [("green", {}), ("block", {}), ("random", {}), ("grid", {}),
                                      ("blue", {"source": "bank", "bank_patterns": 4, "bank_size": 16}),
                                      ("green", {"sigma1": 0.5, "sigma2": 1.0})])
def test_masker_from_description_draws_the_same_masks(kind, kw):
    masker = make_masker(kind, 8, 0.75, **kw)
    again = masker_from_description(json.loads(json.dumps(masker.describe())))  # as read back from summary.json
    a = masker(3, generator=torch.Generator().manual_seed(1))
    b = again(3, generator=torch.Generator().manual_seed(1))
    assert again.describe() == masker.describe()
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_plot_recorded_masks_one_row_per_recorded_kind():
    described = [make_masker("green", 8).describe(), make_masker("blue", 8).describe()]
    fig = figures.plot_recorded_masks(described, n=3, seed=0)
    assert len(fig.axes) == 6
    assert [fig.axes[i].get_ylabel() for i in (0, 3)] == ["Green\nonline", "Blue\nonline"]
    first = fig.axes[0].images[0].get_array()
    expected = make_masker("green", 8)(3, generator=torch.Generator().manual_seed(0))[0][0]
    assert np.array_equal(np.asarray(first), 1 - expected.reshape(8, 8).numpy())  # visible = 1 (light)


def test_plot_run_reconstructions_uses_the_recorded_masker(micro_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(micro_run("blue"), run)
    imgs = torch.randn(2, 3, 32, 32)
    fig, mse, kind = figures.plot_run_reconstructions(run, imgs)
    assert kind == "blue" and set(mse) == {"step 0", "trained"}
    assert [ax.get_ylabel() for ax in fig.axes[::2]] == ["original", "visible (blue)", "step 0", "trained"]
    summary = json.loads((run / "summary.json").read_text())
    summary["masks"] = []
    (run / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(FileNotFoundError, match="recorded masks"):
        figures.plot_run_reconstructions(run, imgs)


# -- saving ------------------------------------------------------------------------------------------

def test_save_figure_and_jpeg(tmp_path):
    fig = Figure(figsize=(1, 1))
    fig.subplots().plot([0, 1])
    paths = figures.save_figure(fig, "a", tmp_path)
    assert [p.name for p in paths] == ["a.png", "a.pdf"] and all(p.is_file() for p in paths)
    jpg = figures.save_jpeg(fig, tmp_path / "sub" / "c.jpg", dpi=50)
    assert Image.open(jpg).format == "JPEG" and Image.open(jpg).size == (50, 50)


# -- notebook 07: the grid's models, Fig. 3, Fig. 5, Fig. 6 -------------------------------------------

def test_grid_models_leaves_out_missing_masks(grid_dir, caplog):
    models, sources = figures.grid_models(grid_dir, ["random", "green", "red", "green"], seed=0)
    assert list(models) == ["random", "green"] and sources["green"].endswith("runs/green_seed0")
    assert "red" in caplog.text
    text = figures.describe_models(models, sources)
    assert text.splitlines()[0].startswith("models (32 px, patch 4, 8x8 grid") and len(text.splitlines()) == 3
    with pytest.raises(FileNotFoundError, match="no pretrained model"):
        figures.grid_models(grid_dir, ["red"])


def test_heldout_dataset_falls_back_to_the_photographs(tmp_path, caplog):
    assert figures.heldout_dataset(str(tmp_path / "no_cifar")) == "embedded"
    assert "CIFAR-10 not found" in caplog.text


def test_reconstruction_rows_and_mse_use_each_models_own_mask(grid_dir):
    models, _ = figures.grid_models(grid_dir, ["random", "green"])
    imgs = torch.randn(3, 3, 32, 32)
    rows = figures.reconstruction_rows(models, imgs, seed=0)
    assert list(rows) == ["original", "random: visible", "random: reconstruction", "green: visible",
                          "green: reconstruction"]
    assert all(r.shape == imgs.shape for r in rows.values())
    masks = figures.own_masks(models, 3, seed=0)
    assert torch.equal(masks["green"][0], make_masker("green", 8)(3, generator=torch.Generator().manual_seed(0))[0])
    mse = figures.masked_patch_mse(models, imgs, seed=1)
    assert set(mse) == {"random", "green"} and all(set(v) == {"loss", "pixel_mse"} for v in mse.values())
    assert mse != figures.masked_patch_mse(models, imgs, seed=2)  # the seed draws the masks


def test_plot_grid_reconstructions_one_figure_per_image_set(grid_dir):
    models, _ = figures.grid_models(grid_dir, ["random", "green"])
    figs = figures.plot_grid_reconstructions(models, "embedded", None, n=2, seed=0)
    assert list(figs) == ["fig3_reconstructions"]  # the held-out set is the photographs: no second figure
    fig = figs["fig3_reconstructions"]
    assert len(fig.axes) == 5 * 2 and fig._suptitle.get_text().startswith("embedded photographs")


def test_attention_groups_and_figure(grid_dir):
    models, _ = figures.grid_models(grid_dir, ["random", "green"])
    penn = [type("S", (), {"image": torch.randint(0, 255, (3, 40, 56), dtype=torch.uint8)})() for _ in range(5)]
    groups = attention.attention_groups("embedded", None, penn, 32, 2)
    assert list(groups) == ["embedded photographs (test crops)", "Penn-Fudan test"]
    assert all(g.shape == (2, 3, 32, 32) for g in groups.values())
    assert list(attention.attention_groups("embedded", None, [], 32, 2)) == ["embedded photographs (test crops)"]
    fig = attention.plot_group_attention(models, groups, title="t")
    assert len(fig.axes) == 3 * 4
    assert _titles(fig)[:4] == ["embedded photographs (test crops)"] * 2 + ["Penn-Fudan test"] * 2
    assert [fig.axes[i].get_ylabel() for i in (0, 4, 8)] == ["image", "random", "green"]


def test_pennfudan_test_is_empty_when_missing(tmp_path, caplog):
    assert attention.pennfudan_test(str(tmp_path / "nowhere")) == []
    assert "Penn-Fudan unavailable" in caplog.text


def test_foreground_attention_rows_and_missing_seeds(grid_dir):
    samples = []
    for i in range(3):
        inst = torch.zeros(40, 56, dtype=torch.uint8)
        inst[:, : 14 * (i + 1)] = 1  # the left quarter, half, three quarters
        samples.append(type("S", (), {"image": torch.randint(0, 255, (3, 40, 56), dtype=torch.uint8),
                                      "instances": inst})())
    r = attention.foreground_attention(grid_dir, ["random", "green", "red"], [0, 1], samples, 32, 8)
    assert r["images"] == 3 and r["uniform"] == pytest.approx(0.5, abs=1e-6)
    assert list(r["rows"]) == ["uniform map (person area share)", "random", "green"]  # red: no model
    assert r["rows"]["random"]["seeds"] == "0" and list(r["per_mask_per_seed"]["green"]) == ["0"]  # no seed 1
    assert 0 < r["per_mask_per_seed"]["green"]["0"] < 1


def test_fig6_classifiers_fall_back_to_the_pretrained_encoder(grid_dir, caplog):
    models, sources = figures.grid_models(grid_dir, ["random", "green"])
    classifiers, used = cam.fig6_classifiers(models, {"green": str(grid_dir / "nowhere")}, sources)
    assert list(classifiers) == ["random\n(stand-in: not\nfine-tuned)", "green\n(stand-in: not\nfine-tuned)"]
    assert used["green"] == f"stand-in: pretrained encoder {sources['green']}" and "green: no fine-tuned" in caplog.text
    fig = cam.plot_classifier_cams(classifiers, torch.randn(2, 3, 32, 32), title="t")
    assert len(fig.axes) == 3 * 2 and fig.axes[2].get_ylabel() == "random\n(stand-in: not\nfine-tuned)"


# -- notebooks 04 and 05: dense tasks ------------------------------------------------------------------

def test_overlay_labels_tints_the_class_only():
    image = torch.full((3, 4, 6), 255, dtype=torch.uint8)
    labels = torch.zeros(4, 6, dtype=torch.long)
    labels[0, 0] = 1
    over = figures.overlay_labels(image, labels, step=2)
    assert over.shape == (2, 3, 3)
    assert np.allclose(over[0, 0], 0.45 + 0.55 * np.array([1.0, 0.1, 0.1])) and np.allclose(over[1, 1], 1.0)


def test_segmentation_runs_per_encoder_tables_and_figure(tmp_path):
    from test_dense_data import make_pennfudan

    from colormae.data.dense import build_segmentation
    pf = make_pennfudan(tmp_path / "pf", n=60, size=(40, 56))
    encoders = {}
    for label, seed in (("a", 0), ("b", 1)):
        encoders[label] = tmp_path / f"{label}.pth"
        save_torch(untrained_encoder(MICRO, seed), encoders[label])
    params = dict(recipe="cpu", data_root=str(pf), crop_size=32, test_scale=32, slide_stride=16, iterations=1,
                  batch_size=2, warmup_iters=1, head_channels=16, test_length=2, device="cpu", amp="none")
    summaries = launch.run_engine_per_encoder("segment", params, encoders, str(tmp_path / "out"))
    assert list(summaries) == ["a", "b"] and summaries["b"]["config"]["encoder"].endswith("b.pth")
    assert (tmp_path / "out" / "b" / "summary.json").is_file()
    table = dense.segmentation_runs(summaries)
    assert list(table.index) == ["a", "b"] and table["iterations"].tolist() == [1, 1]
    assert list(table.columns)[:2] == ["mIoU %", "IoU background %"]
    fig = figures.plot_segmentation_runs({k: tmp_path / "out" / k for k in summaries},
                                         build_segmentation("pennfudan", str(pf), "test"), n_show=2)
    assert len(fig.axes) == 2 * 3 and _titles(fig)[:3] == ["ground truth", "a", "b"]
    assert fig.axes[0].images[0].get_array().shape == (40, 56, 3)


def test_plot_detection_runs_panels(micro_run, tmp_path):
    from test_detect import TINY, write_coco
    write_coco(tmp_path / "coco", "train2017", 2, seed=0)
    write_coco(tmp_path / "coco", "val2017", 2, seed=1)
    params = {**TINY, "data": "coco", "data_root": str(tmp_path / "coco"), "epochs": 1}
    summaries = launch.run_engine_per_encoder("detect", params, {"g": micro_run()}, str(tmp_path / "out"))
    fig = figures.plot_detection_runs({"g": tmp_path / "out" / "g"}, n_show=2, score_threshold=0.0, top_k=1)
    assert len(fig.axes) == 2 * 2 and _titles(fig)[0] == "ground truth" and _titles(fig)[1].startswith("g: ")
    assert len(_titles(fig)[1].split(", ")) <= 1  # top_k=1: at most one score
    table = dense.detection_runs(summaries)
    assert list(table.columns) == ["ap_box", "ap50_box", "ap_mask", "ap50_mask", "steps", "num_train", "num_test",
                                   "wall_time_s"]


def test_dense_experiment_reads_back_runs_of_other_fine_tuning_seeds(tmp_path):
    """A design of one fine-tuning seed keeps the finished runs of other seeds in its table; unfinished
    runs and other encoders' runs are not counted."""
    runs = tmp_path / "runs"
    for name, finished in (("green_pseed0_seed1", True), ("green_pseed0_seed2", False), ("green_pseed1_seed3", True),
                           ("green_pseed0_seedx", True)):
        write_json({"finished": finished}, runs / name / "summary.json")
    assert dense.finished_seeds(runs, "green_pseed0_seed", (0,)) == [0, 1]
    assert dense.finished_seeds(runs, "random_pseed0_seed", (0,)) == [0]
    assert dense.finished_seeds(tmp_path / "absent", "green_p0_s", (0, 4)) == [0, 4]


def test_notebook_encoders_choice(grid_dir, tmp_path):
    assert dense.notebook_encoders(str(tmp_path / "x.pth"), grid_dir, ["green"], tmp_path, "unused") == {
        "encoder": str(tmp_path / "x.pth")}
    found = dense.notebook_encoders(None, grid_dir, ["random", "red"], tmp_path / "out", "unused")
    assert list(found) == ["random"] and found["random"].endswith("encoders/random.pth")
    with pytest.raises(FileNotFoundError, match="not found"):  # nothing in the grid, the fallback is not the default
        dense.notebook_encoders(None, grid_dir, ["red"], tmp_path / "out", str(tmp_path / "nowhere"))


def test_pretrained_encoders_defaults_per_label(micro_run, tmp_path):
    existing = micro_run()
    assert launch.pretrained_encoders({"green": str(existing)}) == {"green": str(existing)}
    with pytest.raises(FileNotFoundError, match=r"embedded_red"):  # another label's default is named
        launch.pretrained_encoders({"red": str(tmp_path / "nowhere")})
