"""ColorMAE: data-independent color-noise masks for Masked AutoEncoders (ECCV 2024), reference compendium."""
from .bank import NoiseBank, load_noise_bank, make_noise_bank, save_noise_bank
from .masking import KINDS, SOURCES, Masker, make_masker, masks_from_scores
from .noise import (COLORS, DEFAULT_PARAMS, aperiodic_color_noise, color_noise, filter_noise, radial_spectrum,
                    white_noise)
from .void_and_cluster import void_and_cluster

__version__ = "0.1.0"
__all__ = ["NoiseBank", "load_noise_bank", "make_noise_bank", "save_noise_bank", "KINDS", "SOURCES", "Masker",
           "make_masker", "masks_from_scores", "COLORS", "DEFAULT_PARAMS", "aperiodic_color_noise", "color_noise", "filter_noise",
           "radial_spectrum", "white_noise", "void_and_cluster"]
