"""Mask invariants for every kind and source, MAE semantics, determinism, bank vs online, errors."""
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from colormae import COLORS, KINDS, make_masker, make_noise_bank, save_noise_bank
from colormae.masks.maskers import block_masks
from colormae.masks.stats import visible_clusters

CASES = [(k, "online") for k in KINDS] + [(c, "bank") for c in COLORS]


def gen(seed=0):
    return torch.Generator().manual_seed(seed)


def load_masking_benchmark():
    """benchmarks/masking.py as a module (it holds the former numpy block masker, the reference)."""
    path = Path(__file__).resolve().parents[1] / "benchmarks" / "masking.py"
    spec = importlib.util.spec_from_file_location("bench_masking", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SHAPES = [(14, 0.75), (8, 0.75), (16, 0.6), (7, 0.9)]


# grid masking exists for ratio 0.75 only (its error is in test_bad_arguments)
@pytest.mark.parametrize("kind, source, grid, ratio",
                         [(k, s, g, r) for k, s in CASES for g, r in SHAPES if k != "grid" or r == 0.75])
def test_mask_invariants(kind, source, grid, ratio):
    m = make_masker(kind, grid, ratio, source=source, bank_patterns=8, bank_size=32)
    L, n_keep = grid * grid, int(grid * grid * (1 - ratio))
    mask, ids_keep, ids_restore = m(5, generator=gen())
    assert m.n_keep == n_keep
    assert mask.shape == (5, L) and mask.dtype == torch.float32
    assert ids_keep.shape == (5, n_keep) and ids_keep.dtype == torch.long
    assert ids_restore.shape == (5, L) and ids_restore.dtype == torch.long
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask.sum(1) == L - n_keep).all()  # exactly n_keep visible in every sample
    # ids_keep are exactly the visible patches
    assert (torch.gather(mask, 1, ids_keep) == 0).all()
    # ids_restore is a permutation that unshuffles [visible, masked] back into place (MAE semantics)
    assert (ids_restore.sort(1).values == torch.arange(L)).all()
    ids_shuffle = torch.argsort(ids_restore, 1)
    assert torch.equal(ids_shuffle[:, :n_keep], ids_keep)
    tokens = torch.arange(L).expand(5, L)
    shuffled = torch.gather(tokens, 1, ids_shuffle)
    assert torch.equal(torch.gather(shuffled, 1, ids_restore), tokens)
    binary = torch.ones(5, L)
    binary[:, :n_keep] = 0
    assert torch.equal(torch.gather(binary, 1, ids_restore), mask)


def test_random_is_exactly_maes_random_masking():
    B, L, ratio = 4, 196, 0.75
    len_keep = int(L * (1 - ratio))
    noise = torch.rand(B, L, generator=gen(5))  # MAE: noise = torch.rand(N, L)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(B, L)
    mask[:, :len_keep] = 0
    mask = torch.gather(mask, 1, ids_restore)
    m, keep, restore = make_masker("random", 14, ratio)(B, generator=gen(5))
    assert torch.equal(m, mask) and torch.equal(keep, ids_shuffle[:, :len_keep]) and torch.equal(restore, ids_restore)


@pytest.mark.parametrize("kind, source", CASES)
def test_same_seed_same_masks(kind, source):
    m = make_masker(kind, 14, source=source, bank_patterns=8)
    a, b = m(16, generator=gen(3)), m(16, generator=gen(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    c = m(16, generator=gen(4))
    assert not torch.equal(a[0], c[0])


def test_each_sample_gets_its_own_window():
    """Unlike the reference code (one crop per batch), every sample has its own bank window."""
    mask = make_masker("green", 14, source="bank", bank_patterns=4)(64, generator=gen())[0]
    assert len({tuple(row.tolist()) for row in mask}) == 64


def test_bank_windows_are_crops_of_the_bank():
    bank = make_noise_bank("red", 2, 16, seed=0)
    m = make_masker("red", 6, source="bank", bank=bank)
    windows = m._bank_windows(50, gen(), None)
    flat = {round(v, 5) for v in bank.patterns.flatten().tolist()}
    assert all(round(v, 5) in flat for v in windows.flatten().tolist())
    # wrap-around crops keep neighbours: each window row is a (possibly reversed) run of a bank row
    row = windows[0, 0]
    assert any(torch.allclose(row, torch.roll(p[r], -s)[:6]) or torch.allclose(row, torch.roll(p[r], -s)[:6].flip(0))
               for p in bank.patterns for r in range(16) for s in range(16))


def test_bank_from_path_and_params(tmp_path):
    path = save_noise_bank(make_noise_bank("blue", 4, 20, seed=1), tmp_path / "blue.npz")
    m = make_masker("blue", 14, source="bank", bank=path)
    assert m.bank.patterns.shape == (4, 20, 20) and m.describe()["bank"]["seed"] == 1


@pytest.mark.parametrize("color", COLORS)
def test_bank_and_online_give_the_same_statistics(color):
    """Visible fraction with a visible neighbour: same for bank windows and online noise."""
    def neighbour_rate(mask):
        vis = (mask == 0).reshape(-1, 14, 14)
        right = (vis[:, :, 1:] & vis[:, :, :-1]).sum()
        down = (vis[:, 1:, :] & vis[:, :-1, :]).sum()
        return float((right + down) / vis.sum())
    online = make_masker(color, 14)(512, generator=gen(1))[0]
    bank = make_masker(color, 14, source="bank", bank_patterns=256, bank_size=64)(512, generator=gen(2))[0]
    a, b = neighbour_rate(online), neighbour_rate(bank)
    assert abs(a - b) < 0.1 * max(a, b) + 0.01, (color, a, b)


def test_block_mask_is_blocky_and_exact():
    masked = block_masks(64, 14, 147, 16, generator=gen())
    assert masked.shape == (64, 14, 14) and masked.dtype == torch.bool
    assert (masked.sum((1, 2)) <= 147).all() and masked.sum((1, 2)).float().mean() > 140  # BEiT rarely stops short
    assert torch.equal(masked, block_masks(64, 14, 147, 16, generator=gen()))  # the seed fixes the masks
    assert not torch.equal(masked, block_masks(64, 14, 147, 16, generator=gen(1)))
    m = make_masker("block", 14)
    mask = m(8, generator=gen())[0]
    assert (mask.sum(1) == 147).all()


def _block_statistics(masked: torch.Tensor) -> dict[str, np.ndarray]:
    """Per-sample statistics of BEiT masks [B, g, g] (before the fill) that the block shapes and
    positions set: how many patches BEiT masked, the visible clusters, the mean run length of masked
    patches along rows vs along columns (aspect), and how central the masked patches lie."""
    m = masked.numpy()
    g = m.shape[-1]

    def mean_run(a):  # mean length of runs of True along the last axis
        edges = np.diff(np.pad(a.astype(np.int8), [(0, 0), (0, 0), (1, 1)]), axis=-1)
        return (a.sum((1, 2)) / np.maximum((edges == 1).sum((1, 2)), 1))
    centre = np.abs(np.arange(g) - (g - 1) / 2)
    return {"masked": m.sum((1, 2)), "clusters": visible_clusters(~masked, g)[1],
            "aspect": np.log(mean_run(m.transpose(0, 2, 1)) / mean_run(m)),
            "row_distance": (m.sum(2) * centre).sum(1) / m.sum((1, 2)),
            "col_distance": (m.sum(1) * centre).sum(1) / m.sum((1, 2))}


def test_block_masks_have_the_former_numpy_maskers_distribution():
    """The batched torch masker draws another random stream than the numpy loop it replaced
    (benchmarks/masking.py keeps that one as the reference): same seeds, other masks. Its
    distribution must be the same: per-sample statistics of 2,000 masks each, two-sample KS tests."""
    from scipy.stats import ks_2samp
    reference = load_masking_benchmark().reference_block_masks
    ours = _block_statistics(block_masks(2000, 14, 147, 16, generator=gen(5)))
    theirs = _block_statistics(reference(2000, 14, 147, 16, generator=gen(6)))
    for name in ours:
        assert ks_2samp(ours[name], theirs[name]).pvalue > 1e-3, (name, ours[name].mean(), theirs[name].mean())


def test_grid_keeps_one_of_every_2x2():
    mask = make_masker("grid", 14)(8, generator=gen())[0].reshape(8, 7, 2, 7, 2)
    visible_per_cell = (mask == 0).sum((2, 4))
    assert (visible_per_cell == 1).all()


def expected_bank_windows(bank, grid, batch, seed):
    """Bank windows written out from the documented draws (pattern, torus offset, h/v flip per
    sample, in that order, from a CPU generator), with python indexing instead of the gathers."""
    g = gen(seed)
    n, size = bank.patterns.shape[0], bank.size
    idx = torch.randint(0, n, (batch,), generator=g)
    offset = torch.randint(0, size, (batch, 2), generator=g)
    flip = torch.randint(0, 2, (batch, 2), generator=g).bool()
    out = torch.empty(batch, grid, grid)
    for b in range(batch):
        for r in range(grid):
            for c in range(grid):
                rr = (grid - 1 - r if flip[b, 0] else r) + int(offset[b, 0])
                cc = (grid - 1 - c if flip[b, 1] else c) + int(offset[b, 1])
                out[b, r, c] = bank.patterns[idx[b], rr % size, cc % size]
    return out


def expected_online_scores(color, grid, batch, seed):
    """Online color scores from the definition, in numpy: white noise from the generator on a
    (grid + margin)^2 canvas, Eq. 1-4 as an FFT filter, the top-left grid x grid window."""
    margin = math.ceil(4 * {"white": 0, "red": 1.5 * 2, "blue": 0.7 * math.sqrt(2),
                            "green": 1.4 * math.sqrt(2), "purple": 1.4 * math.sqrt(2)}[color])
    c = grid + margin
    x = (torch.rand(batch, c, c, generator=gen(seed)).double().numpy() - 0.5) * math.sqrt(12)
    f2 = np.fft.fftfreq(c)[:, None] ** 2 + np.fft.fftfreq(c)[None, :] ** 2
    g = lambda s: np.exp(-2 * np.pi ** 2 * s ** 2 * f2)  # noqa: E731
    t = {"white": np.ones_like(f2), "red": g(1.5) ** 2, "blue": 1 - g(0.7), "green": g(0.7) - g(1.4),
         "purple": 1 - (g(0.7) - g(1.4))}[color]
    y = np.real(np.fft.ifft2(np.fft.fft2(x) * t)) / np.sqrt(np.mean(t ** 2))
    return torch.from_numpy(y[:, :grid, :grid].reshape(batch, -1)).float()


@pytest.mark.parametrize("kind, source", CASES)
def test_visible_patches_are_the_highest_scores(kind, source):
    """The visible set is the top-n_keep of ``scores`` drawn from the same generator state."""
    m = make_masker(kind, 14, 0.75, source=source, bank_patterns=8)
    scores = m.scores(16, generator=gen(11))
    mask, ids_keep, _ = m(16, generator=gen(11))
    top = scores.topk(m.n_keep, dim=1).indices
    for b in range(16):
        assert set(ids_keep[b].tolist()) == set(top[b].tolist())
        assert (mask[b, top[b]] == 0).all() and int(mask[b].sum()) == 196 - m.n_keep
    visible = mask == 0
    lowest_visible = torch.where(visible, scores, torch.inf).min(1).values
    highest_masked = torch.where(visible, -torch.inf, scores).max(1).values
    assert (lowest_visible > highest_masked).all()


@pytest.mark.parametrize("color", COLORS)
def test_online_scores_are_the_filtered_noise(color):
    """Sign included: a color mask keeps the HIGHEST values of its filtered noise."""
    m = make_masker(color, 14)
    torch.testing.assert_close(m.scores(6, generator=gen(4)), expected_online_scores(color, 14, 6, 4),
                               atol=1e-5, rtol=0)
    assert m.canvas == 14 + {"white": 0, "red": 12, "blue": 4, "green": 8, "purple": 8}[color]


@pytest.mark.parametrize("color", COLORS)
def test_bank_scores_are_the_bank_windows(color):
    m = make_masker(color, 14, source="bank", bank_patterns=4, bank_size=24)
    expected = expected_bank_windows(m.bank, 14, 6, 8).flatten(1)
    assert torch.equal(m.scores(6, generator=gen(8)), expected)


def test_random_scores_are_negated_maes_noise():
    assert torch.equal(make_masker("random", 14).scores(3, generator=gen(2)), -torch.rand(3, 196, generator=gen(2)))


def test_masks_on_device_follow_cpu_generator():
    """A CPU generator decides the masks; ``device`` only says where they land.

    Expected: the bank windows computed by hand from the generator's draws, their top n_keep.
    """
    m = make_masker("green", 14, source="bank", bank_patterns=4)
    windows = expected_bank_windows(m.bank, 14, 8, 9).flatten(1)
    for device in (None, "cpu"):
        mask, ids_keep, _ = m(8, generator=gen(9), device=device)
        assert mask.device == torch.device("cpu")
        for b in range(8):
            assert set(ids_keep[b].tolist()) == set(windows[b].topk(m.n_keep).indices.tolist())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind, source", CASES)
def test_cuda_masks_match_cpu(kind, source):
    m = make_masker(kind, 14, source=source, bank_patterns=8)
    cpu = m(32, generator=gen(1), device="cpu")
    cuda = m(32, generator=gen(1), device="cuda")
    assert torch.equal(cpu[0], cuda[0].cpu())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("kind, source", CASES)
def test_cuda_generator_draws_every_kind_on_cuda(kind, source):
    """A generator on the GPU (benchmarks/masking.py's case): every kind works and stays on the GPU
    (block masks once mixed a CPU tensor from numpy with a CUDA draw)."""
    m = make_masker(kind, 14, source=source, bank_patterns=8)
    mask, ids_keep, _ = m(8, generator=torch.Generator("cuda").manual_seed(1), device="cuda")
    assert mask.device.type == "cuda" and (mask == 0).sum(1).eq(m.n_keep).all()


@pytest.mark.parametrize("args, kwargs, match", [
    (("pink", 14), {}, "kind='pink'.*allowed values: random, block, grid, white, red, blue, green, purple"),
    (("green", 14, 1.0), {}, r"mask_ratio=1.0 must be in the open interval \(0, 1\)"),
    (("green", 14, 0.0), {}, "mask_ratio=0.0"),
    (("green", 1), {}, "grid=1 must be an integer >= 2"),
    (("green", 4, 0.97), {}, "leaves no visible patch"),
    (("grid", 14, 0.5), {}, "needs mask_ratio=0.75"),
    (("green", 14), {"sigma1": 2.0, "sigma2": 1.0}, "sigma1 < sigma2"),
    (("purple", 14), {"sigma1": 3.0, "sigma2": 1.0}, "sigma1 < sigma2"),
    (("green", 14), {"source": "disk"}, "source='disk'.*allowed values: online, bank"),
    (("random", 14), {"source": "bank"}, "source='bank' applies to the color kinds"),
    (("green", 14), {"source": "bank", "bank_size": 8}, "smaller than grid=14"),
    (("random", 14), {"sigma": 1.0}, "takes no parameters"),
    (("block", 14), {"sigma": 1.0}, "unknown parameter"),
])
def test_bad_arguments(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_masker(*args, **kwargs)


def test_bank_of_wrong_color():
    with pytest.raises(ValueError, match="bank holds 'red' noise but kind='green'"):
        make_masker("green", 14, source="bank", bank=make_noise_bank("red", 2, 16))
