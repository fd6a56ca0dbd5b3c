"""Datasets and input pipelines: classification datasets (embedded photographs, CIFAR-10, image
folders), the in-memory and GPU-decode pipelines, Penn-Fudan / ADE20K / COCO for the dense tasks,
seeded samplers and the training loader every engine uses."""
from .coco import CocoInstances, load_coco
from .datasets import DATASETS, CorruptImageError, build_dataset, default_data_root, num_classes
from .dense import build_segmentation, load_pennfudan
from .loaders import train_loader
from .memory import PIPELINES, InMemoryImages, choose_pipeline, decode_to_memory
from .samplers import GlobalBatchSampler, SeededSamples

__all__ = ["CocoInstances", "load_coco", "DATASETS", "CorruptImageError", "build_dataset", "default_data_root",
           "num_classes", "build_segmentation", "load_pennfudan", "train_loader", "PIPELINES", "InMemoryImages",
           "choose_pipeline", "decode_to_memory", "GlobalBatchSampler", "SeededSamples"]
