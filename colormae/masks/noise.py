"""Color noise (paper §3, Eq. 1-4): random noise filtered by Gaussian low/high/band-pass/band-stop.

Filtering is periodic (the Gaussian transfer function applied in the FFT domain), so a pattern from
:func:`color_noise` is a torus: any crop, roll or flip of it has the same spectrum, and sigma is
measured in samples (one sample = one patch) whatever the array size. Noise banks and Fig. 2 use
these periodic patterns.

A mask must not be a torus: on an image, patches on opposite edges are far apart, but in a periodic
14x14 pattern they are neighbours (red's opposite-edge scores correlate at 0.92). Online masks
therefore use :func:`aperiodic_color_noise`, which filters a canvas larger than the window by
:func:`aperiodic_margin` samples (a few correlation lengths, :func:`correlation_length`) and crops
it: a window of an aperiodic pattern, like a window cropped from a bank pattern. A 14x14 window of
a big pattern and a 14x14 window cropped from a 14 + margin canvas therefore share their statistics.

Defaults are chosen for the paper's 14x14 grid (ViT-B/16 at 224 px); the extracted paper lost the
numbers, so they are matched to the descriptions of Fig. 1-3 (see ``DEFAULT_PARAMS``). Every value
is a keyword parameter.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

COLORS = ("white", "red", "blue", "green", "purple")
DISTRIBUTIONS = ("uniform", "gaussian")

# sigma in patches. Why these values (14x14 grid, 75 % masking -> 49 visible patches; the numbers
# below are from colormae.masks.stats on 2048 masks, online and bank windows alike, which agree):
# - blue sigma=0.7: x - G*x keeps mostly the top octave (> ~0.2 cycles/patch), so neighbouring
#   patches are anti-correlated and visible patches spread evenly: 48 % of visible patches touch
#   another visible one (random: 65 %), "no large empty areas or dense clusters".
# - green (0.7, 1.4): the DoG passband peaks at sqrt(ln 4 / (2 pi^2 (s2^2 - s1^2))) ~ 0.22
#   cycles/patch (period ~4.6 patches): ~15 small clusters of ~3.35 visible patches spread over the
#   grid, "a clustered version of blue" (1.82x random's cluster size). sigma2 = 2 sigma1 is the
#   usual DoG ratio. (1, 2) gives ~8 clusters of 6: coarser than the paper's figures.
# - purple uses the same pair: white minus that band (Eq. 4), i.e. red and blue at once.
# - red sigma=1.5, filtered twice (the paper's iterated "filter, then normalize"): effective
#   sigma = 1.5 * sqrt(2) ~ 2.1 patches, one or two big blobs per 14x14 window ("aggressive"):
#   ~2.4 visible clusters of ~24 patches.
DEFAULT_PARAMS: dict[str, dict] = {
    "white": {},
    "red": {"sigma": 1.5, "iterations": 2},
    "blue": {"sigma": 0.7},
    "green": {"sigma1": 0.7, "sigma2": 1.4},
    "purple": {"sigma1": 0.7, "sigma2": 1.4},
}


def _check_color(color: str) -> None:
    if color not in COLORS:
        raise ValueError(f"color={color!r} is not supported; allowed values: {', '.join(COLORS)}")


def color_params(color: str, **params) -> dict:
    """Defaults for ``color`` updated with ``params``; validates names and sigma order."""
    _check_color(color)
    merged = dict(DEFAULT_PARAMS[color])
    unknown = set(params) - set(merged) - {"distribution"}
    if unknown:
        allowed = sorted(set(merged) | {"distribution"})
        raise ValueError(f"unknown parameter(s) {sorted(unknown)} for color={color!r}; allowed: {allowed}")
    merged.update(params)
    merged.setdefault("distribution", "uniform")
    if merged["distribution"] not in DISTRIBUTIONS:
        raise ValueError(f"distribution={merged['distribution']!r}; allowed values: {', '.join(DISTRIBUTIONS)}")
    for key in ("sigma", "sigma1", "sigma2"):
        if key in merged and not merged[key] > 0:
            raise ValueError(f"{key}={merged[key]} must be > 0")
    if "sigma1" in merged and not merged["sigma1"] < merged["sigma2"]:
        raise ValueError(f"{color} noise needs sigma1 < sigma2, got sigma1={merged['sigma1']}, "
                         f"sigma2={merged['sigma2']}")
    if "iterations" in merged and int(merged["iterations"]) < 1:
        raise ValueError(f"iterations={merged['iterations']} must be >= 1")
    return merged


def white_noise(shape: Sequence[int], *, distribution: str = "uniform", generator: torch.Generator | None = None,
                device: torch.device | str | None = None) -> torch.Tensor:
    """I.i.d. noise, uniform on [0, 1) (MAE's ``torch.rand``) or standard normal.

    Drawn on the generator's device (CPU unless the generator lives elsewhere), then moved to
    ``device``: one CPU generator seed gives the same noise on every device.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution={distribution!r}; allowed values: {', '.join(DISTRIBUTIONS)}")
    draw_device = generator.device if generator is not None else torch.device("cpu")
    draw = torch.rand if distribution == "uniform" else torch.randn
    x = draw(tuple(shape), generator=generator, device=draw_device)
    return x.to(device) if device is not None else x


def gaussian_transfer(height: int, width: int, sigma: float, *, device=None, dtype=torch.float32) -> torch.Tensor:
    """Transfer function exp(-2 pi^2 sigma^2 |f|^2) on the ``rfft2`` grid (periodic Gaussian blur)."""
    fy = torch.fft.fftfreq(height, device=device, dtype=dtype)
    fx = torch.fft.rfftfreq(width, device=device, dtype=dtype)
    f2 = fy[:, None] ** 2 + fx[None, :] ** 2
    return torch.exp(-2.0 * math.pi ** 2 * sigma ** 2 * f2)


def _apply_transfer(x: torch.Tensor, transfer: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    return torch.fft.irfft2(torch.fft.rfft2(x) * transfer, s=(h, w))


def _standardize(x: torch.Tensor) -> torch.Tensor:
    """Zero mean, unit std per pattern (the paper's "normalize"; top-k is invariant to it)."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-12)
    return (x - mean) / std


def filter_noise(color: str, x: torch.Tensor, **params) -> torch.Tensor:
    """Turn white noise ``x`` [..., H, W] into ``color`` noise (Eq. 1-4), standardized per pattern."""
    p = color_params(color, **params)
    x = x.float()
    h, w = x.shape[-2:]
    if color == "red":  # Eq. 1, iterated: (blur, normalize) x iterations, normalizing in between
        for _ in range(int(p["iterations"])):  # keeps the far spectral tail above float32 rounding
            x = _standardize(_apply_transfer(x, gaussian_transfer(h, w, p["sigma"], device=x.device)))
        return x
    transfer = color_transfer(color, h, w, device=x.device, **p)  # Eq. 2-4 (None: white)
    return _standardize(x if transfer is None else _apply_transfer(x, transfer))


def color_noise(color: str, shape: Sequence[int], *, generator: torch.Generator | None = None,
                device: torch.device | str | None = None, **params) -> torch.Tensor:
    """Color noise of ``shape`` (H, W) or (B, H, W), standardized per pattern.

    ``params`` override ``DEFAULT_PARAMS[color]`` (sigma, iterations, sigma1, sigma2) and may set
    ``distribution`` ("uniform" or "gaussian") of the white noise that is filtered. Blue noise from
    the void-and-cluster algorithm is ``colormae.masks.void_and_cluster``.
    """
    _check_color(color)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape={tuple(shape)} must be (H, W) or (B, H, W) with positive sizes")
    p = color_params(color, **params)
    x = white_noise(shape, distribution=p.pop("distribution"), generator=generator, device=device)
    return filter_noise(color, x, **p)


# Online masks pad the window by this many correlation lengths before filtering periodically: the
# autocorrelation is Gaussian-bounded, so the wrapped correlation is below exp(-4^2 / 2) ~ 3e-4.
APERIODIC_MARGIN_LENGTHS = 4.0


def correlation_length(color: str, **params) -> float:
    """Width (samples) of the Gaussian envelope of ``color`` noise's autocorrelation; 0 for white.

    White noise filtered by Gaussians of sigmas s_i has an autocorrelation made of Gaussians of
    variance s_i^2 + s_j^2, so its envelope is sqrt(2) * the widest sigma: sqrt(2 * iterations) *
    sigma for red (the filter is applied ``iterations`` times), sqrt(2) * sigma for blue,
    sqrt(2) * sigma2 for green and purple.
    """
    p = color_params(color, **params)
    if color == "white":
        return 0.0
    if color == "red":
        return math.sqrt(2.0 * int(p["iterations"])) * p["sigma"]
    return math.sqrt(2.0) * (p["sigma"] if color == "blue" else p["sigma2"])


def aperiodic_margin(color: str, **params) -> int:
    """Samples added to a window's height and width before periodic filtering, so that it does not
    wrap: ``ceil(APERIODIC_MARGIN_LENGTHS * correlation_length)`` (0 for white, 4 for default blue,
    8 for green and purple, 12 for red). Opposite edges of the window are then ``margin + 1``
    samples apart around the torus."""
    return int(math.ceil(APERIODIC_MARGIN_LENGTHS * correlation_length(color, **params)))


def color_transfer(color: str, height: int, width: int, *, device=None, dtype=torch.float32,
                   **params) -> torch.Tensor | None:
    """The transfer function of Eq. 1-4 on the ``rfft2`` grid of a ``height`` x ``width`` pattern
    (None for white): G^iterations for red, 1 - G for blue, G1 - G2 for green, 1 - (G1 - G2) for
    purple, with G the Gaussian of :func:`gaussian_transfer`. ``filter_noise`` is this filter
    followed by per-pattern standardization (red's iterated "filter, normalize" is the same thing,
    since its transfer keeps the mean)."""
    p = color_params(color, **params)
    g = lambda s: gaussian_transfer(height, width, s, device=device, dtype=dtype)  # noqa: E731
    if color == "white":
        return None
    if color == "red":
        return g(p["sigma"]) ** int(p["iterations"])
    if color == "blue":
        return 1.0 - g(p["sigma"])
    band = g(p["sigma1"]) - g(p["sigma2"])
    return band if color == "green" else 1.0 - band


def aperiodic_color_noise(color: str, shape: Sequence[int], *, generator: torch.Generator | None = None,
                          device: torch.device | str | None = None, margin: int | None = None,
                          **params) -> torch.Tensor:
    """Color noise of ``shape`` (H, W) or (B, H, W) that does NOT wrap around.

    Draws white noise on an (H + margin) x (W + margin) canvas, centres and scales it with its
    population mean and std (uniform: 1/2 and 1/sqrt(12)), filters it periodically with
    :func:`color_transfer`, divides by the filter's gain sqrt(mean |T|^2) and keeps the top-left
    H x W window. The result has population mean 0 and variance 1. It is standardized with
    population, not sample, statistics on purpose: removing a small canvas's own mean would
    anti-correlate its far-apart samples (red on a 26x26 canvas: opposite edges at -0.08).
    ``margin`` defaults to :func:`aperiodic_margin`, so opposite edges of the window are as
    uncorrelated as in a crop of a much bigger pattern (or a bank window). ``params`` as in
    :func:`color_noise`.
    """
    _check_color(color)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"shape={tuple(shape)} must be (H, W) or (B, H, W) with positive sizes")
    p = color_params(color, **params)
    distribution = p.pop("distribution")
    margin = aperiodic_margin(color, **p) if margin is None else int(margin)
    if margin < 0:
        raise ValueError(f"margin={margin} must be >= 0")
    h, w = shape[-2:]
    ch, cw = h + margin, w + margin
    x = white_noise((*shape[:-2], ch, cw), distribution=distribution, generator=generator, device=device)
    if distribution == "uniform":
        x = (x - 0.5) * math.sqrt(12.0)
    transfer = color_transfer(color, ch, cw, device=x.device, **p)
    if transfer is not None:
        gain = torch.fft.irfft2(transfer.double() ** 2, s=(ch, cw))[0, 0]  # mean |T|^2 over the full grid
        x = _apply_transfer(x, transfer) / math.sqrt(float(gain))
    return x[..., :h, :w].contiguous()


def radial_spectrum(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Radially averaged power spectrum of ``x`` [..., H, W], averaged over leading dims.

    Returns (freqs, power): frequencies k / N in cycles/sample for k = 1..N//2 (N = min(H, W)),
    i.e. within (0, 0.5], and the mean periodogram |FFT|^2 / (H W) of each ring. The DC term is
    excluded (patterns are zero-mean after standardization).
    """
    x = torch.as_tensor(x).float()
    if x.dim() < 2:
        raise ValueError(f"radial_spectrum needs [..., H, W], got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    x = x.reshape(-1, h, w)
    x = x - x.mean(dim=(-2, -1), keepdim=True)
    power = (torch.fft.fft2(x).abs() ** 2).mean(0) / (h * w)
    n = min(h, w)
    fy = torch.fft.fftfreq(h, dtype=torch.float64)
    fx = torch.fft.fftfreq(w, dtype=torch.float64)
    radius = torch.sqrt(fy[:, None] ** 2 + fx[None, :] ** 2)
    ring = torch.round(radius * n).long().flatten()
    sums = torch.zeros(n + 1, dtype=torch.float64).index_add_(0, ring.clamp(max=n), power.flatten().double())
    ones = torch.ones_like(ring, dtype=torch.float64)
    counts = torch.zeros(n + 1, dtype=torch.float64).index_add_(0, ring.clamp(max=n), ones)
    k = torch.arange(1, n // 2 + 1)
    return (k.double() / n).float(), (sums[k] / counts[k]).float()
