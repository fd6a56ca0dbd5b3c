"""Run machinery: engine configs and their command lines, the run directory and its rules, the
training-loop scaffold, and loading what runs produced."""
from .artifacts import grid_model, load_compact, load_encoder, load_mae
from .config import EngineConfig, knob
from .rundir import RunDir, read_metrics
from .scaffold import cli_main, start_run

__all__ = ["grid_model", "load_compact", "load_encoder", "load_mae", "EngineConfig", "knob", "RunDir",
           "read_metrics", "cli_main", "start_run"]
