"""Run an engine from a notebook: in the kernel for one process, through torchrun for several.

Notebooks hold their settings as papermill parameters (a dict); this turns them into the CLI's
arguments, so a notebook run and a shell run are the same run.
"""
from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

log = logging.getLogger(__name__)
ENGINES = {"pretrain": "train", "finetune": "run"}  # module -> its function taking a config


def to_argv(params: dict) -> list[str]:
    """{"mask_ratio": 0.75, "norm_pix_loss": True, "resume": None} -> ["--mask-ratio", "0.75", "--norm-pix-loss"]."""
    argv = []
    for key, value in params.items():
        flag = "--" + key.replace("_", "-")
        if value is None or value is False:
            continue
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def run_engine(engine: str, params: dict, nproc: int = 1) -> dict:
    """Run ``colormae.<engine>`` with ``params``; returns the run summary.

    nproc == 1 trains inside this process (errors surface as Python exceptions); nproc > 1 starts
    ``torchrun --standalone --nproc_per_node nproc -m colormae.<engine>`` and reads the summary the
    run wrote to its ``output_dir``.
    """
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}; allowed values: {', '.join(ENGINES)}")
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc={nproc!r} must be an integer >= 1")
    module = importlib.import_module(f"colormae.{engine}")
    argv = to_argv(params)
    if nproc == 1:
        return getattr(module, ENGINES[engine])(module.config_from_args(argv))
    module.config_from_args(argv)  # fail on bad arguments here, before starting N processes
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", f"colormae.{engine}", *argv]
    log.info("running %s", " ".join(cmd))
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return json.loads((Path(params["output_dir"]) / "summary.json").read_text())
