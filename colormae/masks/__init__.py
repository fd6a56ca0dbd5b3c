"""Data-independent masks: color noise, its filters and banks, the maskers, mask statistics and the
mask-spec grammar. Knows no run directory and no file format beyond its own noise bank."""
from .bank import NoiseBank, load_noise_bank, make_noise_bank, save_noise_bank
from .maskers import KINDS, SOURCES, Masker, make_masker, masks_from_scores
from .noise import COLORS, DEFAULT_PARAMS, color_noise, filter_noise, radial_spectrum, white_noise
from .schedule import band_centre, parse_mask_params, parse_mask_schedule
from .stats import mask_statistics
from .void_and_cluster import void_and_cluster

__all__ = ["NoiseBank", "load_noise_bank", "make_noise_bank", "save_noise_bank", "KINDS", "SOURCES", "Masker",
           "make_masker", "masks_from_scores", "COLORS", "DEFAULT_PARAMS", "color_noise", "filter_noise",
           "radial_spectrum", "white_noise", "band_centre", "parse_mask_params", "parse_mask_schedule",
           "mask_statistics", "void_and_cluster"]
