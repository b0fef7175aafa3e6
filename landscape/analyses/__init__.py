"""One module per analysis; each writes one HDF5 result file (schema in landscape.store)."""

from landscape.analyses.common import AnalysisOptions, parse_int_list, parse_range, wrap_checkpoint
from landscape.analyses.interpolate import interpolate
from landscape.analyses.rays import rays
from landscape.analyses.segments import segments
from landscape.analyses.sharpness import SharpnessOptions, sharpness  # noqa: F401
from landscape.analyses.surface import surface
from landscape.analyses.trajectory import trajectory
from landscape.analyses.twopoint import twopoint

__all__ = ["AnalysisOptions", "interpolate", "parse_int_list", "parse_range", "rays", "segments", "surface",
           "trajectory", "twopoint", "wrap_checkpoint"]
