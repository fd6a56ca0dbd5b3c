"""What every notebook does in its first cell: check its parameters, and keep committed records as
they are.

``check_params(name, globals())`` validates a notebook's parameters before any heavy work, as the
command line validates flags: the knobs of the engine it runs through that engine's config
(``config_from_params``, the engine's ``resolve_defaults`` / ``validate``), and the notebook's own
parameters against ``NOTEBOOKS`` (type, allowed values, range, paths that must exist). A wrong
value is one ValueError naming the parameter and what it allows.

``Records(update)`` is where a notebook writes: a folder that holds committed files (results/,
paper_figures/) is replaced by its mirror under results/local/ (git-ignored) unless ``update`` is
asked for, and ``Records.report()`` says, per folder, whether the committed record was reproduced.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from ..engines.launch import engine_module
from ..files import compare_records, project_path, record_dir, repo_relative
from ..masks.maskers import KINDS, SOURCES
from ..run.config import check_choice, check_common, check_kind, check_range, config_from_params, pick_params
from ..run.rundir import run_location

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Param:
    """One notebook parameter: its type (``item``: of each list item / dict value), whether None is
    allowed, its allowed values (of the value, or of each item), numeric range (as
    ``config.RANGES``: low, high, low included, high included), and for a path whether it must exist
    ("" leaves an optional input out)."""
    kind: type
    optional: bool = False
    item: type | None = None
    choices: tuple | None = None
    range: tuple | None = None
    exists: bool = False


@dataclass(frozen=True)
class NotebookSpec:
    """A notebook's own parameters; ``engine``: the engine whose config fields it passes through
    (validated by that engine); ``pretrain``: dict parameters holding pretraining settings."""
    params: dict[str, Param]
    engine: str | None = None
    pretrain: tuple[str, ...] = ()


POSITIVE = (1, None, True, True)
FRACTION = (0, 1, False, False)
SEED = (0, None, True, True)
DIR = Param(str)                      # a folder (written, or read when present)
INPUT = Param(str, exists=True)       # a folder the notebook reads: must exist ("" leaves it out)
UPDATE = Param(bool)                  # update_records: replace committed files (else results/local/)

NOTEBOOKS: dict[str, NotebookSpec] = {
    "00_color_noise": NotebookSpec({
        "grid": Param(int, range=(2, None, True, True)), "mask_ratio": Param(float, range=FRACTION),
        "seed": Param(int, range=SEED), "batch": Param(int, range=POSITIVE), "out_dir": DIR,
        "update_records": UPDATE}),
    "01_pretrain": NotebookSpec({"nproc": Param(int, range=POSITIVE), "n_show": Param(int, range=POSITIVE),
                                 "update_records": UPDATE}, engine="pretrain"),
    "02_finetune": NotebookSpec({"pretrain_if_missing": Param(bool), "pretrain_params": Param(dict),
                                 "nproc": Param(int, range=POSITIVE), "update_records": UPDATE},
                                engine="finetune", pretrain=("pretrain_params",)),
    "03_table1_cifar10": NotebookSpec({
        "grid_dir": DIR, "gpu_grid_dir": INPUT, "confirm_dir": INPUT,
        "confirm_seeds": Param(list, item=int), "results_dir": INPUT, "minirepro_dir": INPUT,
        "run_grid": Param(bool), "grid_args": Param(list, item=str), "fig_dir": DIR}),
    "04_segmentation": NotebookSpec({
        "grid_dir": DIR, "masks": Param(list, item=str, choices=KINDS + ("none",)), "fallback_encoder": DIR,
        "n_show": Param(int, range=POSITIVE), "table_dir": DIR, "update_records": UPDATE}, engine="segment"),
    "05_detection": NotebookSpec({
        "encoders": Param(dict, item=str), "pretrain_if_missing": Param(bool), "pretrain_params": Param(dict),
        "table_csv": DIR, "n_show": Param(int, range=POSITIVE),
        "score_threshold": Param(float, range=(0, 1, True, True)),
        "top_k": Param(int, range=POSITIVE), "update_records": UPDATE}, engine="detect", pretrain=("pretrain_params",)),
    "06_band_sweep": NotebookSpec({
        "sweep_dir": INPUT, "grid_dir": INPUT, "fig_dir": DIR, "grid": Param(int, range=(2, None, True, True)),
        "mask_ratio": Param(float, range=FRACTION), "stat_masks": Param(int, range=POSITIVE),
        "seed": Param(int, range=SEED), "update_records": UPDATE}),
    "07_reconstructions_attention": NotebookSpec({
        "grid_dir": INPUT, "masks": Param(list, item=str, choices=KINDS + ("none",)), "seed": Param(int, range=SEED),
        "n_show": Param(int, range=POSITIVE), "n_eval": Param(int, range=POSITIVE),
        "attention_masks": Param(list, item=str, choices=KINDS + ("none",)), "n_attention": Param(int, range=POSITIVE),
        "attention_seeds": Param(list, item=int), "n_pennfudan": Param(int, range=POSITIVE),
        "data_root": Param(str, optional=True, exists=True), "pennfudan_root": Param(str, optional=True, exists=True),
        "finetune_dirs": Param(dict, item=str), "fig_dir": DIR, "output_dir": DIR, "update_records": UPDATE,
        "checkpoint": Param(str, optional=True, exists=True), "checkpoints": Param(dict, item=str)}),
    "08_cost_and_tables": NotebookSpec({
        "cost_dir": INPUT, "device_run_dir": DIR, "grid_dir": INPUT, "gpu_grid_dir": DIR, "dense_dir": INPUT,
        "fig_dir": DIR, "output_dir": DIR, "update_records": UPDATE}),
    "09_explore": NotebookSpec({
        "kind": Param(str, choices=KINDS), "grid": Param(int, range=(2, None, True, True)),
        "mask_ratio": Param(float, range=FRACTION), "seed": Param(int, range=SEED),
        "source": Param(str, choices=SOURCES), "n_masks": Param(int, range=POSITIVE), "sweep_dir": DIR,
        "grid_dir": DIR, "continuous_update": Param(bool)}),
    "10_explore_reconstructions": NotebookSpec({
        "checkpoint_a": INPUT, "checkpoint_b": INPUT,
        "image_source": Param(str, choices=("photos", "cifar10", "pennfudan")), "image_index": Param(int, range=SEED),
        "kind": Param(str, choices=KINDS), "mask_ratio": Param(float, range=FRACTION), "seed": Param(int, range=SEED),
        "data_root": Param(str, optional=True, exists=True), "pennfudan_root": Param(str, optional=True, exists=True),
        "continuous_update": Param(bool)}),
}


def _check_param(notebook: str, name: str, value: Any, spec: Param) -> None:
    what = f"notebook {notebook} parameter {name}"
    check_kind(name, value, spec.kind, spec.optional, what)
    if value is None:
        return
    items = list(value) if spec.kind is list else list(value.values()) if spec.kind is dict else [value]
    if spec.item is not None:
        for item in items:
            check_kind(name, item, spec.item, False, f"{what} (each {'value' if spec.kind is dict else 'item'})")
    if spec.choices is not None:
        for item in items:
            check_choice(name if spec.kind is not list else f"{name} item", item, spec.choices)
    if spec.range is not None:
        check_range(name, value, spec.range)
    if spec.exists and value != "" and not project_path(value).exists():
        raise FileNotFoundError(f"{name}={value!r}: {project_path(value)} does not exist (relative paths are taken "
                                "from the repository root; \"\" leaves it out where the notebook allows that)")


def _check_engine(engine: str, params: Mapping[str, Any]):
    """The engine's config from ``params``, validated as the engine validates it before it starts
    (a missing encoder, which the notebook finds itself, stands in as a placeholder)."""
    module = engine_module(engine)
    cfg = config_from_params(module.CONFIG, params)
    if any(f.name == "encoder" for f in dataclasses.fields(cfg)) and cfg.encoder is None:
        cfg = dataclasses.replace(cfg, encoder="(the notebook's encoder)")
    if hasattr(module, "resolve_defaults"):
        cfg = module.resolve_defaults(cfg)
    check_common(cfg)
    module.validate(cfg)
    return cfg


def check_params(notebook: str, namespace: Mapping[str, Any]) -> None:
    """Validate notebook ``notebook``'s parameters (its ``globals()``) before any heavy work: its own
    (``NOTEBOOKS``), the engine knobs it passes through, and pretraining settings it holds as a dict.
    A wrong value raises one ValueError (FileNotFoundError for a missing input) naming the parameter."""
    if notebook not in NOTEBOOKS:
        raise ValueError(f"notebook={notebook!r}; allowed values: {', '.join(NOTEBOOKS)}")
    spec = NOTEBOOKS[notebook]
    for name, param in spec.params.items():
        if name in namespace:
            _check_param(notebook, name, namespace[name], param)
    for name in spec.pretrain:
        _check_engine("pretrain", {"output_dir": "results/pretrain/default", **namespace.get(name, {})})
    if spec.engine is not None:
        module = engine_module(spec.engine)
        _check_engine(spec.engine, {k: v for k, v in pick_params(module.CONFIG, namespace).items()
                                    if k not in spec.params})


@dataclass
class Records:
    """Where a notebook writes: ``dir(path)`` / ``run_dir(path)`` give ``path`` itself with
    ``update=True`` or when git tracks nothing there, else its mirror under results/local/;
    ``report()`` logs one line per such folder: reproduced, or what differs."""
    update: bool = False
    folders: dict[Path, Path] = field(default_factory=dict)  # written folder -> committed folder
    # files older than this were written by other runs (1 s before: file times lag the clock by a tick)
    started: float = field(default_factory=lambda: time.time() - 1.0)

    def dir(self, path: str | os.PathLike) -> Path:
        """The folder to write what belongs in ``path`` into."""
        committed = project_path(path)
        written = record_dir(committed, self.update)
        if written != committed:
            self.folders[written] = committed
        return written

    def run_dir(self, path: str | os.PathLike) -> Path:
        """The folder to run (or read back) the run(s) of ``path`` in (``rundir.run_location``): a
        finished run with its weights is read where it is; one to recompute goes to the mirror."""
        committed = project_path(path)
        written = run_location(committed, self.update)
        if written != committed:
            self.folders[written] = committed
        return written

    def report(self) -> list[str]:
        """One line per folder written beside a committed one (logged, and returned)."""
        lines = []
        for written, committed in self.folders.items():
            count, diffs = compare_records(written, committed, since=self.started)
            where, here = repo_relative(committed), repo_relative(written)
            if not count:
                line = f"{where}: no file written here has a committed twin (written to {here})"
            elif not diffs:
                line = (f"{where}: committed record reproduced ({count} file{'s' * (count != 1)} compared; this run's "
                        f"copy is in {here})")
            else:
                line = (f"{where} differs from the committed record: {'; '.join(diffs[:4])}"
                        f"{'; ...' if len(diffs) > 4 else ''}. The committed files are left unchanged (this run's are "
                        f"in {here}); pass update_records=True to replace them")
            log.info("%s", line)
            lines.append(line)
        return lines


__all__ = ["Param", "NotebookSpec", "NOTEBOOKS", "check_params", "Records"]
