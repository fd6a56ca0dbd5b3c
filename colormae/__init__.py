"""ColorMAE: data-independent color-noise masks for Masked AutoEncoders (ECCV 2024), reference compendium.

The public face: masks for your own MAE, the noise behind them, and loading our models. Everything
else lives in the sub-packages (masks, models, data, run, engines, experiments, analysis)."""
from .masks.bank import NoiseBank, load_noise_bank, make_noise_bank, save_noise_bank
from .masks.maskers import KINDS, SOURCES, Masker, make_masker, masks_from_scores, vitmae_noise
from .masks.noise import (
                          COLORS,
                          DEFAULT_PARAMS,
                          aperiodic_color_noise,
                          color_noise,
                          filter_noise,
                          radial_spectrum,
                          white_noise,
)
from .masks.void_and_cluster import void_and_cluster
from .models.mae import MAEConfig, MaskedAutoencoder
from .run.artifacts import load_compact, load_encoder, load_mae
from .run.pretrained import load_pretrained, save_pretrained
from .runtime import __version__

__all__ = ["NoiseBank", "load_noise_bank", "make_noise_bank", "save_noise_bank", "KINDS", "SOURCES", "Masker",
           "make_masker", "masks_from_scores", "COLORS", "DEFAULT_PARAMS", "aperiodic_color_noise", "color_noise",
           "filter_noise", "radial_spectrum", "white_noise", "void_and_cluster", "MAEConfig", "MaskedAutoencoder",
           "load_compact", "load_encoder", "load_mae", "load_pretrained", "save_pretrained", "vitmae_noise",
           "__version__"]
