"""landscape: train with flat-minima optimizers, measure loss landscapes, store them in HDF5."""

__version__ = "0.1.0"
