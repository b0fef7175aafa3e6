"""Optimizers and schedules for flat-minima training: SAM/ASAM, Lookahead, weight averaging
(SWA and Kobayashi's phase-wise bias-corrected EMA) and learning-rate schedules."""

from landscape.optim.averaging import (
    bias_corrected_ema,
    copy_average_into,
    phase_gamma,
    uniform_average,
)
from landscape.optim.lookahead import Lookahead
from landscape.optim.sam import SAM, frozen_bn_stats
from landscape.optim.schedules import (
    LRSchedule,
    constant,
    cosine,
    parse_phases,
    phases,
    swa,
)

__all__ = [
    "SAM",
    "LRSchedule",
    "Lookahead",
    "bias_corrected_ema",
    "constant",
    "copy_average_into",
    "cosine",
    "frozen_bn_stats",
    "parse_phases",
    "phase_gamma",
    "phases",
    "swa",
    "uniform_average",
]
