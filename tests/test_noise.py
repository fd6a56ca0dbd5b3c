"""Spectra of every color (Eq. 1-4), σ in samples, banks, void-and-cluster."""
import numpy as np
import pytest
import torch

from colormae import color_noise, load_noise_bank, make_noise_bank, radial_spectrum, save_noise_bank
from colormae.noise import gaussian_transfer
from colormae.void_and_cluster import void_and_cluster


def spectrum(color, size=64, n=64, seed=0, **params):
    x = color_noise(color, (n, size, size), generator=torch.Generator().manual_seed(seed), **params)
    return radial_spectrum(x)


def test_shapes_and_standardization():
    x = color_noise("green", (3, 20, 24), generator=torch.Generator().manual_seed(0))
    assert x.shape == (3, 20, 24) and x.dtype == torch.float32
    torch.testing.assert_close(x.mean((-2, -1)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(x.std((-2, -1)), torch.ones(3), atol=1e-4, rtol=0)
    assert color_noise("red", (14, 14)).shape == (14, 14)


def test_radial_spectrum_frequencies_and_white_is_flat():
    f, p = spectrum("white")
    assert f.shape == p.shape and f[0] > 0 and f[-1] == pytest.approx(0.5)
    assert float(p.max() / p.min()) < 1.5  # flat within averaging noise
    for dist in ("uniform", "gaussian"):
        _, p = spectrum("white", distribution=dist)
        assert float(p.max() / p.min()) < 1.5


def test_red_is_low_pass():
    f, p = spectrum("red")
    assert p[:4].mean() > 100 * p[-8:].mean()
    assert (p[1:] <= p[:-1] * 1.2).all()  # essentially decreasing


def test_blue_is_high_pass():
    f, p = spectrum("blue")
    assert p[-8:].mean() > 20 * p[:2].mean()
    assert int(p.argmax()) > len(p) // 2


def test_green_has_interior_peak():
    f, p = spectrum("green")
    k = int(p.argmax())
    assert 0 < k < len(p) - 1
    assert p[k] > 10 * p[0] and p[k] > 10 * p[-1]
    # DoG passband peak of (σ1, σ2) = (0.7, 1.4): f* = sqrt(ln 4 / (2π²(σ2² − σ1²))) ≈ 0.219 cycles/sample
    assert abs(float(f[k]) - 0.219) < 0.04


def test_purple_has_interior_notch():
    f, p = spectrum("purple")
    k = int(p.argmin())
    assert 0 < k < len(p) - 1
    assert p[k] < 0.6 * p[0] and p[k] < 0.6 * p[-1]


def test_sigma_is_in_samples_independent_of_size():
    """A 14x14 crop of a big pattern and a 14x14 pattern made directly share their spectrum."""
    big = color_noise("green", (32, 112, 112), generator=torch.Generator().manual_seed(1))
    crops = big.unfold(-2, 14, 14).unfold(-2, 14, 14).reshape(-1, 14, 14)
    direct = color_noise("green", (crops.shape[0], 14, 14), generator=torch.Generator().manual_seed(2))
    (_, p_crop), (_, p_direct) = radial_spectrum(crops), radial_spectrum(direct)
    p_crop, p_direct = p_crop / p_crop.sum(), p_direct / p_direct.sum()
    assert int(p_crop.argmax()) == int(p_direct.argmax())
    assert (p_crop - p_direct).abs().sum() < 0.15


def test_gaussian_transfer_matches_spatial_gaussian():
    """The FFT filter equals circular convolution with a sampled Gaussian (for σ well above 0.5)."""
    n, sigma = 32, 2.0
    kernel = torch.fft.irfft2(gaussian_transfer(n, n, sigma, dtype=torch.float64), s=(n, n))
    d = torch.minimum(torch.arange(n), n - torch.arange(n)).double()
    spatial = torch.exp(-(d[:, None] ** 2 + d[None, :] ** 2) / (2 * sigma ** 2))
    torch.testing.assert_close(kernel, spatial / spatial.sum(), atol=1e-6, rtol=1e-3)


def test_seeded_noise_is_reproducible():
    a = color_noise("purple", (4, 14, 14), generator=torch.Generator().manual_seed(7))
    b = color_noise("purple", (4, 14, 14), generator=torch.Generator().manual_seed(7))
    assert torch.equal(a, b)


@pytest.mark.parametrize("bad, match", [
    (dict(color="pink"), "color='pink'.*allowed values: white, red, blue, green, purple"),
    (dict(color="green", sigma1=2.0, sigma2=1.0), "sigma1 < sigma2"),
    (dict(color="purple", sigma1=1.0, sigma2=1.0), "sigma1 < sigma2"),
    (dict(color="blue", sigma=0.0), "sigma=0.0 must be > 0"),
    (dict(color="red", sigma1=1.0), "unknown parameter"),
    (dict(color="white", distribution="laplace"), "distribution='laplace'"),
])
def test_bad_noise_arguments(bad, match):
    color = bad.pop("color")
    with pytest.raises(ValueError, match=match):
        color_noise(color, (8, 8), **bad)


def test_bank_roundtrip(tmp_path):
    bank = make_noise_bank("green", 8, 32, seed=3)
    assert bank.patterns.shape == (8, 32, 32)
    path = save_noise_bank(bank, tmp_path / "green.npz")
    loaded = load_noise_bank(path)
    assert torch.equal(loaded.patterns, bank.patterns)
    assert loaded.color == "green" and loaded.seed == 3 and loaded.params["sigma1"] == 0.7
    assert not list(tmp_path.glob("*.tmp"))
    assert torch.equal(make_noise_bank("green", 8, 32, seed=3).patterns, bank.patterns)


def test_bank_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="noise bank not found"):
        load_noise_bank(tmp_path / "missing.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(ValueError, match="not a ColorMAE noise bank"):
        load_noise_bank(tmp_path / "other.npz")
    with pytest.raises(ValueError, match="blue noise only"):
        make_noise_bank("red", 2, 16, method="void_and_cluster")


def test_void_and_cluster_is_a_blue_rank_array():
    r = void_and_cluster(32, seed=0)
    assert r.shape == (32, 32)
    assert np.array_equal(np.sort(r.ravel()), np.arange(32 * 32) / (32 * 32))  # every rank once
    f, p = radial_spectrum(torch.from_numpy(r))
    assert p[-8:].mean() > 10 * p[:3].mean()  # blue: power at high frequencies
    # any threshold gives evenly spread points: few 4-neighbours among the lowest 10 %
    pts = r < 0.1
    neighbours = sum((pts & np.roll(pts, s, a)).sum() for s in (1, -1) for a in (0, 1))
    assert neighbours / pts.sum() < 0.2
    bank = make_noise_bank("blue", 2, 16, seed=0, method="void_and_cluster")
    assert bank.patterns.shape == (2, 16, 16) and bank.params["method"] == "void_and_cluster"
