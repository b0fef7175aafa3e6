"""Optimizers and schedules for flat-minima training: SAM/ASAM, Lookahead, weight averaging
(SWA and Kobayashi's phase-wise bias-corrected EMA) and learning-rate schedules."""

from landscape.optim.averaging import (
    bias_corrected_ema,
    copy_average_into,
    phase_gamma,
    uniform_average,
)
from landscape.optim.lookahead import Lookahead
from landscape.optim.sam import ASAM_SCOPES, SAM, asam_param_groups, frozen_bn_stats
from landscape.optim.schedules import (
    LRSchedule,
    constant,
    cosine,
    linear,
    parse_phases,
    phases,
    swa,
)

__all__ = [
    "ASAM_SCOPES",
    "SAM",
    "asam_param_groups",
    "LRSchedule",
    "Lookahead",
    "bias_corrected_ema",
    "constant",
    "copy_average_into",
    "cosine",
    "frozen_bn_stats",
    "linear",
    "parse_phases",
    "phase_gamma",
    "phases",
    "swa",
    "uniform_average",
]
