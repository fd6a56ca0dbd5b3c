"""The engines by name: their command lines, and running one from a notebook (in the kernel for
one process, through torchrun for several).

Notebooks hold their settings as papermill parameters; ``notebook_params`` picks the ones named
like the engine's config fields, so a notebook passes its parameters cell through without listing
the knobs again, and a notebook run and a shell run are the same run.
"""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from types import ModuleType
from typing import Any, Mapping, Sequence

from ..files import project_path, repo_relative
from ..run.config import config_from_args, config_from_params, pick_params, to_argv
from ..run.rundir import ENCODER, RunDir, run_location
from ..run.scaffold import cli_main
from . import detect, finetune, pretrain, segment

log = logging.getLogger(__name__)
# every training engine: a module with CONFIG (its config dataclass) and run(cfg) -> summary
ENGINES: dict[str, ModuleType] = {"pretrain": pretrain, "finetune": finetune, "segment": segment, "detect": detect}


def engine_module(engine: str) -> ModuleType:
    if engine not in ENGINES:
        raise ValueError(f"engine={engine!r}; allowed values: {', '.join(ENGINES)}")
    return ENGINES[engine]


def parse_engine_args(engine: str, argv: Sequence[str] | None = None):
    """The config of ``colormae <engine> ARGS...`` (argparse generated from the config's fields)."""
    module = engine_module(engine)
    return config_from_args(module.CONFIG, argv, module.__doc__, f"colormae {engine}")


def engine_main(engine: str, argv: Sequence[str] | None = None) -> dict:
    """``colormae <engine> ARGS...``: parse, run, and turn expected errors into one line and status 2."""
    return cli_main(engine_module(engine).run, parse_engine_args(engine, argv))


def notebook_params(engine: str, namespace: Mapping[str, Any]) -> dict:
    """The entries of ``namespace`` (a notebook's ``globals()``) that are ``engine``'s config fields."""
    return pick_params(engine_module(engine).CONFIG, namespace)


def run_engine(engine: str, params: Mapping[str, Any], nproc: int = 1) -> dict:
    """Run engine ``engine`` with ``params`` (config field -> value); returns the run summary.

    nproc == 1 trains inside this process (errors surface as Python exceptions); nproc > 1 starts
    ``torchrun --standalone --nproc_per_node nproc -m colormae <engine> ...`` and reads the summary
    the run wrote to its ``output_dir``.
    """
    module = engine_module(engine)
    if not isinstance(nproc, int) or nproc < 1:
        raise ValueError(f"nproc={nproc!r} must be an integer >= 1")
    cfg = config_from_params(module.CONFIG, params)  # bad names fail here, before any process starts
    if nproc == 1:
        return module.run(cfg)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "-m", "colormae", engine, *to_argv(module.CONFIG, params)]
    log.info("running %s", " ".join(cmd))
    subprocess.run(cmd, check=True, env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return RunDir(cfg.output_dir).read_summary()


def pretrained_encoder(encoder: str, *, default: str, pretrain_if_missing: bool = True,
                       pretrain_params: Mapping[str, Any] | None = None, update_records: bool = False) -> str:
    """The encoder a notebook evaluates, as a path. When ``encoder`` is the notebook's own
    ``default`` (notebook 01's run directory) and holds no weights, that default pretraining is run
    (or resumed) first: in its local mirror when the folder holds a committed record (a fresh clone;
    ``rundir.run_location``), there itself with ``update_records``. Any other missing path is an
    error naming it, so a typo never turns into a freshly trained model."""
    path = project_path(encoder)
    if path.is_file() or (path / ENCODER).is_file():
        return str(path)
    if path != project_path(default):
        raise FileNotFoundError(f"encoder {path} not found (a run directory with {ENCODER}, an {ENCODER} or a "
                                f"checkpoint). Only the notebook's default, {default}, is pretrained when missing.")
    run_dir = run_location(path, update_records)
    if (run_dir / ENCODER).is_file():
        return str(run_dir)
    if not pretrain_if_missing:
        raise FileNotFoundError(f"encoder {path} has no {ENCODER}: run notebook 01 (papermill "
                                "notebooks/01_pretrain.ipynb out.ipynb) or set pretrain_if_missing=True")
    log.info("running notebook 01's default pretraining in %s (for its %s)", repo_relative(run_dir), ENCODER)
    run_engine("pretrain", {"output_dir": str(run_dir), "resume": "auto", **(pretrain_params or {})})
    return str(run_dir)


def run_engine_per_encoder(engine: str, params: Mapping[str, Any], encoders: Mapping[str, str],
                           output_dir: str, nproc: int = 1) -> dict[str, dict]:
    """``run_engine`` once per encoder (label -> path), each in ``<output_dir>/<label>`` with
    ``params`` (a fine-tuning engine's knobs, e.g. ``notebook_params``); returns label -> summary.
    Each run is resumable: a finished one is read back, not repeated."""
    return {label: run_engine(engine, {**params, "encoder": str(path), "output_dir": f"{output_dir}/{label}"},
                              nproc=nproc)
            for label, path in encoders.items()}


def pretrained_encoders(encoders: Mapping[str, str], *, default: str = "results/pretrain/embedded_{label}",
                        pretrain_if_missing: bool = True, pretrain_params: Mapping[str, Any] | None = None,
                        update_records: bool = False) -> dict[str, str]:
    """``pretrained_encoder`` for each (label -> encoder) of ``encoders``; the default of a label is
    ``default`` formatted with it, and its pretraining (when missing) uses ``pretrain_params`` with
    the mask set to the label (``encoders = {"random": ..., "green": ...}``: notebook 01's run
    with that mask)."""
    return {label: pretrained_encoder(enc, default=default.format(label=label), pretrain_if_missing=pretrain_if_missing,
                                      pretrain_params={**(pretrain_params or {}), "mask": label},
                                      update_records=update_records)
            for label, enc in encoders.items()}
