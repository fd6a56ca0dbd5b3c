"""The engines: they train and evaluate, one run directory each. ``ENGINES`` names them; a notebook
runs one with ``run_engine``, the command line with ``colormae <engine>``; ``submit`` sends one to Slurm."""
from .detect import DetectConfig
from .finetune import FinetuneConfig
from .launch import ENGINES, engine_main, notebook_params, parse_engine_args, run_engine
from .pretrain import PretrainConfig
from .segment import SegmentConfig

__all__ = ["DetectConfig", "FinetuneConfig", "PretrainConfig", "SegmentConfig", "ENGINES", "engine_main",
           "notebook_params", "parse_engine_args", "run_engine"]
