"""colormae.analysis.explore (notebook 09's mask explorer): values in -> view -> figure, and the widget's
callbacks (a control's value in -> the view and the image out), without a browser (tests/test_browser.py
drives the real thing in JupyterLab). Small grids and few masks: seconds."""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import PIL.Image
import pytest
from matplotlib.figure import Figure

from colormae.analysis import explore
from colormae.masks.noise import DEFAULT_PARAMS
from colormae.masks.schedule import band_centre
from colormae.runtime import notebook_logging

ROOT = Path(__file__).resolve().parents[1]
SMALL = {"grid": 8, "n_masks": 4}


@pytest.mark.parametrize("kind", explore.KINDS)
def test_view_of_every_kind(kind):
    view = explore.mask_view(kind, **SMALL, mask_ratio=0.75, seed=1)
    g = 8
    assert view.noise.shape == view.mask.shape == view.clusters.shape == view.periodogram.shape == (g, g)
    assert int((view.mask == 0).sum()) == view.stats["n_keep"] == 16
    assert view.stats["visible_fraction"] == 0.25
    assert set(explore.STAT_LABELS) <= set(view.stats)  # mask_statistics' keys and ours
    assert view.num_clusters == len(np.unique(view.clusters[view.clusters > 0]))
    assert (view.clusters > 0).sum() == 16
    assert len(view.freqs) == len(view.noise_power) == len(view.mask_power) == g // 2
    assert view.params == ({k: v for k, v in DEFAULT_PARAMS[kind].items()} if kind in DEFAULT_PARAMS else {})
    assert (view.theory_power is not None) == (kind in ("red", "blue", "green", "purple"))
    assert (view.band_centre is not None) == (kind in ("green", "purple"))
    with pytest.raises(ValueError):
        view.noise[0, 0] = 1.0  # read-only: the cached arrays cannot be changed through a view


def test_parameters_band_centre_and_irrelevant_values():
    view = explore.mask_view("green", **SMALL, sigma1=0.5, sigma2=1.0, sigma=3.0, iterations=4)
    assert view.params == {"sigma1": 0.5, "sigma2": 1.0}  # sigma / iterations are red's and blue's
    assert view.band_centre == pytest.approx(band_centre(0.5, 1.0))
    red = explore.mask_view("red", **SMALL, sigma=1.0, iterations=3.0, sigma1=9.0)
    assert red.params == {"sigma": 1.0, "iterations": 3}
    with pytest.raises(ValueError, match="sigma1 < sigma2"):
        explore.mask_view("green", **SMALL, sigma1=1.4, sigma2=0.7)
    with pytest.raises(ValueError, match="leaves no visible patch"):
        explore.mask_view("random", grid=8, mask_ratio=0.99, n_masks=2)
    with pytest.raises(ValueError, match="kind="):
        explore.mask_view("pink", **SMALL)


def test_adjusted_values_are_said_in_notes():
    grid = explore.mask_view("grid", **SMALL, mask_ratio=0.5)
    assert grid.mask_ratio == 0.75 and "0.75" in grid.notes[0]
    block = explore.mask_view("block", **SMALL, source="bank")
    assert block.source == "online" and "no noise bank" in block.notes[0]


def test_the_same_seed_gives_the_same_view_and_another_seed_another():
    a, b = explore.mask_view("blue", **SMALL, seed=3), explore.mask_view("blue", **SMALL, seed=3)
    c = explore.mask_view("blue", **SMALL, seed=4)
    assert np.array_equal(a.mask, b.mask) and not np.array_equal(a.noise, c.noise)


def test_ratio_change_reuses_the_filtered_noise():
    explore.mask_view("purple", grid=10, n_masks=4, seed=7, mask_ratio=0.75)
    before = explore._noise.cache_info()
    view = explore.mask_view("purple", grid=10, n_masks=4, seed=7, mask_ratio=0.5)
    after = explore._noise.cache_info()
    assert after.hits == before.hits + 1 and after.misses == before.misses
    assert view.stats["n_keep"] == 50 and int((view.mask == 0).sum()) == 50
    # the kept patches are the highest scores of the same (cached) noise
    kept = np.sort(view.noise[view.mask == 0])
    assert kept.min() >= view.noise[view.mask == 1].max()


def test_bank_source_crops_the_default_bank():
    view = explore.mask_view("green", grid=12, n_masks=4, source="bank")
    assert view.source == "bank" and int((view.mask == 0).sum()) == view.stats["n_keep"] == 36


def test_band_sweep_points_from_the_committed_results():
    sweep = explore.band_sweep_points()
    if sweep.empty:
        pytest.skip("no band-sweep results committed")
    default = sweep[(sweep.sigma1 == 0.7) & (sweep.sigma2 == 1.4)].iloc[0]
    assert default["band_centre"] == pytest.approx(band_centre(0.7, 1.4), abs=1e-3) and default["n"] >= 2
    assert list(sweep["band_centre"]) == sorted(sweep["band_centre"], reverse=True)
    assert explore.nearest_band(sweep, 0.22)["sigma1"] == 0.7
    assert explore.nearest_band(sweep, None) is None


def test_band_sweep_points_without_results(tmp_path):
    empty = explore.band_sweep_points(tmp_path / "none", tmp_path / "none")
    assert empty.empty and "knn_top1_mean" in empty.columns
    view = explore.mask_view("green", **SMALL)
    explore.draw_mask_view(view, empty)  # the sweep panel says there are no results
    assert "nearest swept band" not in explore.stats_html(view, empty)


def png_pixels(data: bytes) -> np.ndarray:
    return np.asarray(PIL.Image.open(io.BytesIO(data)).convert("RGB"))


def test_draw_mask_view_is_a_plain_figure():
    view = explore.mask_view("green", **SMALL)
    fig = explore.draw_mask_view(view, explore.band_sweep_points())
    assert isinstance(fig, Figure) and len(fig.axes) == 6
    assert fig.axes[1].images[0].get_array().shape == (8, 8)
    assert explore.describe(view) == fig._suptitle.get_text()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")  # every artist drawn (none left animated)
    assert buf.getvalue()[:4] == b"\x89PNG"


def test_blitted_png_follows_the_view_and_the_grid():
    """A reused MaskFigure renders a view exactly as a fresh one does, also after the grid changed
    (the background is rendered again), and a new seed changes the pixels."""
    sweep = explore.band_sweep_points()
    reused = explore.MaskFigure(sweep)
    v16, v8 = explore.mask_view("green", grid=16, n_masks=4), explore.mask_view("green", **SMALL)
    first = reused.png(v16)
    assert first[:4] == b"\x89PNG"
    assert np.array_equal(png_pixels(reused.png(v8)), png_pixels(explore.MaskFigure(sweep).png(v8)))
    other = reused.png(explore.mask_view("green", **SMALL, seed=5))
    assert not np.array_equal(png_pixels(other), png_pixels(reused.png(v8)))


@pytest.fixture
def explorer():
    return explore.MaskExplorer("green", grid=8, n_masks=4, sweep=explore.band_sweep_points())


def test_explorer_starts_with_the_given_values(explorer):
    assert explorer.view.kind == "green" and explorer.view.grid == 8
    assert explorer.image.value[:4] == b"\x89PNG"
    assert "band centre 0.219" in explorer.stats.value and "ms" in explorer.status.value
    assert explorer.controls["sigma"].layout.display == "none"  # green takes sigma1 / sigma2
    assert "MaskExplorer(Green" in repr(explorer)  # what nbval stores instead of the widget


def test_explorer_slider_updates_view_and_image(explorer):
    png = explorer.image.value
    explorer.controls["seed"].value = 3
    assert explorer.view.seed == 3 and explorer.image.value != png
    explorer.controls["sigma1"].value = 0.5
    assert explorer.view.params == {"sigma1": 0.5, "sigma2": 1.4}
    assert explorer.view.band_centre == pytest.approx(band_centre(0.5, 1.4))
    explorer.controls["mask_ratio"].value = 0.5
    assert explorer.view.stats["n_keep"] == 32
    explorer.controls["grid"].value = 12
    assert explorer.view.mask.shape == (12, 12)
    explorer.controls["source"].value = "bank"
    assert explorer.view.source == "bank"


def test_explorer_kind_change_resets_parameters_in_one_update(explorer, monkeypatch):
    explorer.controls["sigma1"].value = 0.4
    calls = []
    original = explorer.update
    monkeypatch.setattr(explorer, "update", lambda: calls.append(1) or original())
    explorer.controls["kind"].value = "red"
    assert len(calls) == 1  # sigma and iterations reset without an update each
    assert explorer.view.params == DEFAULT_PARAMS["red"]
    assert explorer.controls["sigma"].layout.display is None and explorer.controls["sigma1"].layout.display == "none"
    explorer.controls["kind"].value = "grid"
    assert explorer.controls["mask_ratio"].value == 0.75 and explorer.controls["mask_ratio"].disabled
    assert explorer.controls["source"].disabled and explorer.view.kind == "grid"
    explorer.controls["kind"].value = "green"
    assert explorer.controls["sigma1"].value == DEFAULT_PARAMS["green"]["sigma1"]  # the defaults, not 0.4


def test_explorer_shows_invalid_values_in_the_status_line(explorer):
    view, png = explorer.view, explorer.image.value
    explorer.controls["sigma1"].value = 2.0  # >= sigma2 = 1.4
    assert "sigma1 &lt; sigma2" in explorer.status.value
    assert explorer.view is view and explorer.image.value == png  # the last valid view stays
    explorer.controls["sigma2"].value = 3.0
    assert explorer.view.params == {"sigma1": 2.0, "sigma2": 3.0} and "ms" in explorer.status.value


def test_mask_explorer_reads_the_sweep(tmp_path):
    e = explore.mask_explorer("blue", grid=8, n_masks=2, sweep_dir=tmp_path / "none", grid_dir=None)
    assert e.sweep.empty and e.view.kind == "blue"
    assert explore.mask_explorer("blue", grid=8, n_masks=2, sweep_dir=None).sweep is None


@pytest.fixture
def clean_colormae_logger():
    logger = logging.getLogger("colormae")
    saved = (list(logger.handlers), logger.level, logger.propagate)
    yield logger
    logger.handlers[:], logger.level, logger.propagate = saved[0], saved[1], saved[2]


def test_notebook_logging_writes_short_lines_to_stdout(clean_colormae_logger, capsys):
    notebook_logging()
    notebook_logging()  # idempotent: one handler
    assert sum(type(h).__name__ == "_StdoutHandler" for h in clean_colormae_logger.handlers) == 1
    log = logging.getLogger("colormae.masks.bank")
    log.debug("not shown")
    log.info("made a bank")
    log.warning("careful")
    log.info("saved %s", ROOT / "paper_figures" / "fig1.png")  # no machine path in a saved output
    log.info("decoded %s", ROOT.parent / "shared" / "data" / "x.tar")
    out, err = capsys.readouterr()
    assert out == "made a bank\nWARNING: careful\nsaved paper_figures/fig1.png\ndecoded ../shared/data/x.tar\n"
    assert err == ""


def test_notebook_09_is_thin():
    """Parameters cell, calls into colormae, display: no def, no loop, <= 15 code lines per cell."""
    cells = json.loads((ROOT / "notebooks" / "09_explore.ipynb").read_text())["cells"]
    assert "parameters" in cells[1]["metadata"].get("tags", [])
    for cell in (c for c in cells if c["cell_type"] == "code"):
        source = "".join(cell["source"])
        lines = [ln for ln in source.splitlines() if ln.strip() and not ln.strip().startswith("#")]
        assert len(lines) <= 15 and not any(ln.lstrip().startswith(("def ", "for ", "while ", "class "))
                                            for ln in lines), source
