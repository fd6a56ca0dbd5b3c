"""The experiments behind the tables: mask x seed grids (``colormae experiments``), the dense
Penn-Fudan transfers, compact release weights (``colormae weights``) and ``colormae reproduce``."""
from .dense import run_detection_experiment, run_segmentation_experiment
from .grids import GRIDS, GridSpec, run_grid
from .release import export_grid, save_compact

__all__ = ["run_detection_experiment", "run_segmentation_experiment", "GRIDS", "GridSpec", "run_grid", "export_grid",
           "save_compact"]
