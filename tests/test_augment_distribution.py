"""MAE's pretraining augmentation on every path: RandomResizedCrop(scale=(0.2, 1), ratio=(3/4, 4/3),
bicubic) + horizontal flip (p = 0.5).

The fast paths ("memory", "gpu-decode") draw their crop boxes in ``data.memory.TrainAugment.params``;
the per-file path uses torchvision's transforms (``data.datasets.pretrain_transform``). The boxes are
compared in distribution with torchvision's ``RandomResizedCrop.get_params`` (20,000 each, two-sample
KS tests on area fraction, log aspect ratio and the box centre; a binomial test on the flip rate)."""
import math

import numpy as np
import pytest
import torch
from scipy.stats import binomtest, ks_2samp
from torchvision.transforms import InterpolationMode, RandomHorizontalFlip, RandomResizedCrop

from colormae.data import memory as im
from colormae.data.datasets import pretrain_transform
from colormae.runtime import sample_seed

N = 20_000
MAE_SCALE, MAE_RATIO = (0.2, 1.0), (3 / 4, 4 / 3)


def _box_statistics(boxes: np.ndarray, height: int, width: int) -> dict[str, np.ndarray]:
    """Per box (top, left, h, w): area fraction, log aspect w / h, centre as a fraction of the image."""
    top, left, h, w = boxes[:, :4].T
    return {"area": h * w / (height * width), "log_aspect": np.log(w / h),
            "centre_y": (top + h / 2) / height, "centre_x": (left + w / 2) / width}


@pytest.fixture(scope="module")
def draws():
    """(ours, torchvision's) boxes for a square CIFAR-size and a non-square ImageNet-size image."""
    out = {}
    for height, width in ((64, 64), (375, 500)):
        aug = im.TrainAugment(32)
        ours = np.array([aug.params(height, width, sample_seed(7, 0, p)) for p in range(N)], dtype=float)
        torch.manual_seed(2024)  # independent of ours: another stream, the same distribution expected
        img = torch.zeros(3, height, width)
        theirs = np.array([RandomResizedCrop.get_params(img, MAE_SCALE, MAE_RATIO) for _ in range(N)], dtype=float)
        out[height, width] = ours, theirs
    return out


@pytest.mark.parametrize("hw", [(64, 64), (375, 500)])
def test_fast_path_crop_boxes_have_torchvisions_distribution(draws, hw):
    ours, theirs = draws[hw]
    a, b = _box_statistics(ours, *hw), _box_statistics(theirs, *hw)
    for name in a:
        p = ks_2samp(a[name], b[name]).pvalue
        assert p > 1e-3, (hw, name, float(a[name].mean()), float(b[name].mean()), p)
    # the range itself: the scale bound MAE sets (0.2, not torchvision's default 0.08) and the ratio bounds
    assert a["area"].min() >= 0.2 - 0.02 and a["area"].max() <= 1.0
    assert math.log(3 / 4) - 0.05 <= a["log_aspect"].min() and a["log_aspect"].max() <= math.log(4 / 3) + 0.05


def test_fast_path_flip_rate_is_one_half(draws):
    flips = int(draws[64, 64][0][:, 4].sum())
    assert binomtest(flips, N, 0.5).pvalue > 1e-3, flips / N


def test_per_file_path_is_maes_recipe():
    """The per-file transform's parameters, written out: MAE's main_pretrain.py."""
    crop, flip = pretrain_transform(224).transforms[:2]
    assert isinstance(crop, RandomResizedCrop) and isinstance(flip, RandomHorizontalFlip)
    assert crop.size == (224, 224) and crop.scale == MAE_SCALE and crop.ratio == pytest.approx(MAE_RATIO)
    assert crop.interpolation == InterpolationMode.BICUBIC and flip.p == 0.5
    fast = im.TrainAugment(224)
    assert fast.scale == MAE_SCALE and fast.flip_p == 0.5
    assert fast.log_ratio == pytest.approx((math.log(3 / 4), math.log(4 / 3)))
