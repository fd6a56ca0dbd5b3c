"""Engine configurations: one dataclass per engine, argparse generated from its fields.

A knob is declared once, as a dataclass field made by ``knob`` (default, help, choices, argparse
group, and whether it changes the experiment); the CLI, the notebooks (through
``colormae.engines.launch``) and the run directory's resume check all read that one declaration.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import numbers
import os
import types
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np

from ..data.dali import require_dali
from ..data.memory import PIPELINES

# argparse groups in the order --help shows them (timm's train.py groups its flags the same way)
GROUPS = ("model", "masking", "data", "optimization", "evaluation", "run")


def knob(default: Any, help: str, *, choices: Sequence | None = None, group: str = "run",
         experiment: bool = True, path: bool = False, input: str | None = None,
         range: tuple | None = None) -> Any:
    """A config field. ``experiment=False`` marks knobs that do not change what is computed
    (workers, logging, device, paths): a run may be resumed with other values of those.
    ``path=True``: a file or folder, recorded relative to the repository (``rundir.config_record``).
    ``input=ENGINE``: an input of the run, a file or a run directory of that engine (checked, and
    protected from --overwrite, before the output folder is touched). ``range``: allowed values
    (see ``RANGES``; overrides the shared rule of that field name)."""
    if group not in GROUPS:
        raise ValueError(f"group={group!r}; allowed values: {', '.join(GROUPS)}")
    return dataclasses.field(default=default, metadata={
        "help": help, "choices": tuple(choices) if choices is not None else None, "group": group,
        "experiment": experiment, "path": path or input is not None, "input": input, "range": range})


AMP_MODES = ("auto", "bf16", "fp16", "none")
# torch.compile modes; "reduce-overhead" replays CUDA graphs (CUDA only: elsewhere it compiles as "default")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_knob() -> Any:
    """The ``compile`` field of an engine that can compile its model: how it runs, not what (not
    bit-identical to eager, so recorded, but a run resumes with or without it)."""
    return knob(False, "torch.compile the model's forward and loss (static shapes: every sample keeps n_keep "
                "patches). Close to eager, not bit-identical; a run may resume with or without it",
                group="optimization", experiment=False)


def compile_mode_knob() -> Any:
    return knob("default", "with --compile: the torch.compile mode; 'reduce-overhead' replays CUDA graphs (CUDA "
                "only)", choices=COMPILE_MODES, group="optimization", experiment=False)


@dataclass
class RunConfig:
    """The fields every engine has: run bookkeeping, seed, precision, device, data location.
    Engines on other data than the classification datasets (segment, detect) build on this."""
    data_root: str | None = knob(None, "dataset folder or tar location (default: ../shared/data or $COLORMAE_DATA)",
                                 group="data", experiment=False, path=True)
    num_workers: int = knob(0, "DataLoader worker processes", group="data", experiment=False)
    amp: str = knob("auto", "mixed precision; 'auto': bf16 on CUDA; on CPUs with native bf16 (AVX512-BF16, AMX) "
                    "bf16 only for encoders where it was measured faster (width x tokens >= 8192), else fp32; "
                    "a resumed run keeps the precision it recorded (docs/runs.md)", choices=AMP_MODES,
                    group="optimization")
    seed: int = knob(0, "seeds model init, data order, augmentation and masks", group="run")
    output_dir: str = knob("results/default", "the run directory (relative paths: from the repository root)",
                           experiment=False, path=True)
    resume: str | None = knob(None, "continue a run: 'auto' (<output-dir>/checkpoint-last.pth if present) or a "
                              "checkpoint path; the saved config must match", experiment=False, path=True)
    overwrite: bool = knob(False, "replace the run already in --output-dir (of the same engine; deleted when the new "
                           "run writes its first file, after its inputs loaded)", experiment=False)
    device: str = knob("auto", "auto, cpu, cuda or cuda:N", experiment=False)
    max_steps: int | None = knob(None, "stop after this many optimizer steps (the run stays resumable)",
                                 experiment=False)
    log_every: int = knob(10, "optimizer steps between metric records", experiment=False)
    save_every: int = knob(0, "epochs between numbered snapshots checkpoint-NNNN.pth (0: none); "
                           "checkpoint-last.pth is written every epoch regardless", experiment=False)
    checkpoint_minutes: float = knob(30.0, "also write checkpoint-last.pth every this many minutes within "
                                     "an epoch (0: only at epoch ends)", experiment=False)


# the classification data fields (EngineConfig adds them to RunConfig): a config type without them
# (segment, detect) still resumes runs whose saved config has them (see rundir.foreign_fields)
CLASSIFICATION_DATA_FIELDS = ("dataset", "pipeline", "skip_corrupt", "max_corrupt_fraction")


@dataclass
class EngineConfig(RunConfig):
    """RunConfig plus the classification data fields (pretraining and fine-tuning)."""
    dataset: str = knob("embedded", "embedded, cifar10 or imagefolder", group="data",
                        choices=("embedded", "cifar10", "imagefolder"))
    pipeline: str = knob("auto", "input pipeline: 'memory' decodes small datasets once and augments whole "
                         "batches on the device, 'files' decodes every image in DataLoader workers, "
                         "'gpu-decode' decodes JPEGs on CUDA (experimental), 'dali' decodes, crops and resizes "
                         "them with NVIDIA DALI (optional extra colormae[dali]; pretraining); 'auto' picks memory for "
                         "cifar10/embedded and small one-size image folders, files otherwise", choices=PIPELINES,
                         group="data")
    skip_corrupt: bool = knob(False, "skip (and count) unreadable images instead of stopping", group="data",
                              experiment=False)
    max_corrupt_fraction: float = knob(0.01, "with --skip-corrupt: stop when more than this fraction of the "
                                       "dataset was skipped", group="data", experiment=False)


def _field_type(cls: type, name: str) -> tuple[type, bool]:
    """(the field's value type, whether None is allowed) from its annotation."""
    hint = typing.get_type_hints(cls)[name]
    args = typing.get_args(hint)
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        non_none = [a for a in args if a is not type(None)]
        return non_none[0], len(non_none) < len(args)
    return hint, False


def path_fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("path", False)]


def experiment_fields(cls: type) -> list[str]:
    """Names of the fields that change the experiment (see ``knob``)."""
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("experiment", True)]


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    pass


def build_parser(cls: type, description: str | None = None, prog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of ``cls`` (``mask_ratio`` -> ``--mask-ratio``),
    grouped, defaults and choices shown in ``--help``; booleans get ``--x / --no-x``."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=_Formatter)
    groups = {g: parser.add_argument_group(g) for g in GROUPS}
    for f in sorted(dataclasses.fields(cls), key=lambda f: GROUPS.index(f.metadata.get("group", "run"))):
        kind, _ = _field_type(cls, f.name)
        meta = f.metadata
        flag = "--" + f.name.replace("_", "-")
        kw: dict[str, Any] = {"default": f.default, "help": meta.get("help", " "), "dest": f.name}
        if kind is bool:
            kw["action"] = argparse.BooleanOptionalAction
        else:
            kw["type"] = kind
            if meta.get("choices"):
                kw["choices"] = meta["choices"]
        groups[meta.get("group", "run")].add_argument(flag, **kw)
    return parser


def config_from_args(cls: type, argv: Sequence[str] | None = None, description: str | None = None,
                     prog: str | None = None):
    return cls(**vars(build_parser(cls, description, prog).parse_args(argv)))


def check_type(cls: type, name: str, value: Any) -> Any:
    """``value`` as field ``name`` of ``cls`` takes it, checked as the command line checks a flag
    (an int where a float is wanted is taken; 16.5 for an int, "abc" for a number, 1 for a bool
    are not): ValueError naming the parameter, its type and the value."""
    kind, optional = _field_type(cls, name)
    return check_kind(name, value, kind, optional, f"{cls.__name__} parameter {name}",
                      path=name in path_fields(cls))


def check_kind(name: str, value: Any, kind: type, optional: bool = False, what: str | None = None,
               path: bool = False) -> Any:
    """``value`` as a ``kind`` (bool, int, float, str, or any class) takes it, with the command line's
    rules (see ``check_type``); ``path``: a Path is taken for a str. ValueError naming ``name``."""
    if value is None:
        if optional:
            return None
    elif kind is bool:
        if isinstance(value, (bool, np.bool_)):
            return bool(value)
    elif kind is int:
        if isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_)):
            return int(value)
    elif kind is float:
        if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
            return float(value)
    elif isinstance(value, kind):
        return value
    elif kind is str and isinstance(value, os.PathLike) and path:
        return os.fspath(value)  # a Path for a file or folder knob
    wanted = kind.__name__ + (" or None" if optional else "")
    raise ValueError(f"{name}={value!r}: {what or 'parameter ' + name} takes {wanted}, not {type(value).__name__}")


def config_from_params(cls: type, params: Mapping[str, Any]):
    """A config from a dict (notebook parameters), each value type-checked as its command-line flag
    would be (``check_type``); unknown keys are an error naming them."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - names)
    if unknown:
        raise ValueError(f"unknown {cls.__name__} parameter(s) {unknown}; allowed: {', '.join(sorted(names))}")
    return cls(**{k: check_type(cls, k, v) for k, v in params.items()})


def pick_params(cls: type, namespace: Mapping[str, Any]) -> dict:
    """The entries of ``namespace`` (a notebook's ``globals()``) named like fields of ``cls``: a
    notebook passes its parameters cell through without listing the knobs a second time."""
    return {f.name: namespace[f.name] for f in dataclasses.fields(cls) if f.name in namespace}


def to_argv(cls: type, params: Mapping[str, Any]) -> list[str]:
    """The command line equivalent to ``params`` (fields at their default are left out)."""
    cfg = config_from_params(cls, params)
    argv: list[str] = []
    for f in dataclasses.fields(cls):
        value = getattr(cfg, f.name)
        if value == f.default:
            continue
        flag = "--" + f.name.replace("_", "-")
        if isinstance(value, bool):
            argv.append(flag if value else "--no-" + flag[2:])
        elif value is None:
            raise ValueError(f"{f.name}=None cannot be passed on a command line (its default is {f.default!r})")
        else:
            argv += [flag, str(value)]
    return argv


def differences(old: Mapping[str, Any], new: Mapping[str, Any], names: Sequence[str]) -> list[tuple[str, Any, Any]]:
    """(name, old, new) for each of ``names`` whose value differs (a missing old key counts as
    equal to the new default: configs written before a knob existed stay resumable)."""
    return [(n, old[n], new[n]) for n in names if n in old and n in new and old[n] != new[n]]


def check_positive(cfg, *names: str, allow_zero: Sequence[str] = ()) -> None:
    """ValueError naming the first field in ``names`` that is not > 0 (>= 0 for ``allow_zero``)."""
    for name in names:
        value = getattr(cfg, name)
        if value is None:
            continue
        if value < 0 or (value == 0 and name not in allow_zero):
            bound = ">= 0" if name in allow_zero else ">= 1" if isinstance(value, int) else "> 0"
            raise ValueError(f"{name}={value} must be {bound}")


def check_choice(name: str, value: Any, allowed: Sequence) -> None:
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not supported; allowed values: {', '.join(map(str, allowed))}")


# Allowed values of numeric knobs, by field name, for every config that has that field (a knob's own
# ``range=`` wins): (low, high, low included, high included); None = unbounded. Every float knob
# must also be finite (nan / inf are never a setting).
RANGES: dict[str, tuple] = {
    "checkpoint_minutes": (0, None, True, True), "log_every": (1, None, True, True),
    "save_every": (0, None, True, True), "max_steps": (1, None, True, True), "num_workers": (0, None, True, True),
    "max_corrupt_fraction": (0, 1, True, True), "epochs": (0, None, True, True), "batch_size": (1, None, True, True),
    "accum_iter": (1, None, True, True), "blr": (0, None, True, True), "lr": (0, None, False, True),
    "min_lr": (0, None, True, True), "weight_decay": (0, None, True, True), "warmup_epochs": (0, None, True, True),
    "warmup_steps": (0, None, True, True), "warmup_iters": (0, None, True, True), "iterations": (1, None, True, True),
    "mask_ratio": (0, 1, False, False), "drop_path": (0, 1, True, False), "layer_decay": (0, 1, False, True),
    "smoothing": (0, 1, True, False), "reprob": (0, 1, True, True), "mixup": (0, None, True, True),
    "cutmix": (0, None, True, True), "knn_k": (1, None, True, True), "knn_temperature": (0, None, False, True),
    "train_length": (1, None, True, True), "test_length": (1, None, True, True),
    "dataset_length": (1, None, True, True), "crop_scale_min": (0, 1, False, True),
    # segmentation: the lower bound of test_scale depends on the encoder's patch (segment.check_scales)
    "test_scale": (1, None, True, True), "crop_size": (1, None, True, True), "cat_max_ratio": (0, 1, False, True),
    "img_size": (1, None, True, True), "jitter_min": (0, None, False, True), "jitter_max": (0, None, False, True),
}


def _describe(lo, hi, lo_in, hi_in) -> str:
    if hi is None:
        return f"{'>=' if lo_in else '>'} {lo:g}"
    return f"in {'[' if lo_in else '('}{lo:g}, {hi:g}{']' if hi_in else ')'}"


def check_range(name: str, value: float, rule: tuple) -> None:
    """ValueError unless ``value`` is finite and within ``rule`` = (low, high, low included, high
    included), as in ``RANGES``."""
    if not math.isfinite(value):
        raise ValueError(f"{name}={value} must be a finite number")
    lo, hi, lo_in, hi_in = rule
    if (lo is not None and (value < lo or (value == lo and not lo_in))) or (
            hi is not None and (value > hi or (value == hi and not hi_in))):
        raise ValueError(f"{name}={value} must be {_describe(lo, hi, lo_in, hi_in)} (out of range)")


def check_ranges(cfg) -> None:
    """ValueError naming the first numeric field outside its allowed range (``RANGES`` or the
    knob's ``range=``), or not finite; and min_lr above the peak lr it is the floor of."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            continue
        if not math.isfinite(value):
            raise ValueError(f"{f.name}={value} must be a finite number")
        rule = f.metadata.get("range") or RANGES.get(f.name)
        if rule is not None:
            check_range(f.name, value, rule)
    blr, min_lr, batch = (getattr(cfg, n, None) for n in ("blr", "min_lr", "batch_size"))
    if None not in (blr, min_lr, batch) and blr > 0 and (getattr(cfg, "epochs", 1) or 0) > 0:
        peak = blr * batch * (getattr(cfg, "accum_iter", 1) or 1) / 256
        if min_lr > peak:
            raise ValueError(f"min_lr={min_lr} is above the peak lr {peak:g} (= blr {blr:g} x batch {batch} / 256 "
                             f"on one process): the schedule would climb to it. Allowed: 0 <= min_lr <= {peak:g}")
    jmin, jmax = getattr(cfg, "jitter_min", None), getattr(cfg, "jitter_max", None)
    if jmin is not None and jmax is not None and jmin > jmax:
        raise ValueError(f"jitter_min={jmin:g} > jitter_max={jmax:g}")


def check_common(cfg: RunConfig) -> None:
    """Validation of the shared fields (before any data, model or file is touched)."""
    check_ranges(cfg)
    check_choice("amp", cfg.amp, AMP_MODES)
    if hasattr(cfg, "compile_mode"):
        check_choice("compile_mode", cfg.compile_mode, COMPILE_MODES)
        if cfg.compile_mode != "default" and not cfg.compile:
            raise ValueError(f"compile_mode={cfg.compile_mode!r} without compile=True is unused: add --compile "
                             "or drop --compile-mode")
    if isinstance(cfg, EngineConfig):
        check_choice("pipeline", cfg.pipeline, PIPELINES)
        if cfg.pipeline == "dali":
            require_dali()  # the optional extra: one clear error before any work
        check_choice("dataset", cfg.dataset, ("embedded", "cifar10", "imagefolder"))
    check_positive(cfg, "log_every", "max_steps")
    check_positive(cfg, "save_every", "checkpoint_minutes", "num_workers", allow_zero=("save_every",
                   "checkpoint_minutes", "num_workers"))
    if cfg.resume is not None and cfg.overwrite:
        raise ValueError("resume and overwrite contradict each other: --resume continues the run in "
                         "--output-dir, --overwrite deletes it")
