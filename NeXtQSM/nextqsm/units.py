"""Unit conversions between phase (rad), frequency (Hz) and field (ppm).

gamma = 42.576 MHz/T (proton gyromagnetic ratio / 2 pi).
phase [rad] = 2 pi * f [Hz] * TE [s];  f [Hz] = field [ppm] * 1e-6 * gamma * B0 [T].
"""
from __future__ import annotations

import math

import numpy as np

GAMMA_HZ_PER_T: float = 42.576e6
"""Proton gyromagnetic ratio over 2 pi, in Hz/T."""


def _check_positive(name: str, value: float, unit: str) -> float:
    from .errors import QSMInputError

    if value is None or not np.isfinite(value) or value <= 0:
        raise QSMInputError(name, f"must be a positive number in {unit}, got {value!r}",
                            f"give {name} in {unit} (for example 3.0 for B0, 0.02 for TE)")
    return float(value)


def hz_per_ppm(b0_t: float) -> float:
    """Frequency shift in Hz that corresponds to 1 ppm at field strength ``b0_t`` [T]."""
    return GAMMA_HZ_PER_T * _check_positive("B0", b0_t, "tesla") * 1e-6


def hz_to_ppm(f_hz, b0_t: float):
    """Frequency offset [Hz] -> field [ppm]."""
    return f_hz / hz_per_ppm(b0_t)


def ppm_to_hz(f_ppm, b0_t: float):
    """Field [ppm] -> frequency offset [Hz]."""
    return f_ppm * hz_per_ppm(b0_t)


def rad_to_hz(phase_rad, te_s: float):
    """Phase [rad] accrued at echo time ``te_s`` [s] -> frequency [Hz]."""
    return phase_rad / (2.0 * math.pi * _check_positive("TE", te_s, "seconds"))


def hz_to_rad(f_hz, te_s: float):
    """Frequency [Hz] -> phase [rad] at echo time ``te_s`` [s]."""
    return f_hz * (2.0 * math.pi * _check_positive("TE", te_s, "seconds"))


def rad_to_ppm(phase_rad, te_s: float, b0_t: float):
    """Unwrapped phase [rad] at TE [s] and B0 [T] -> field [ppm]."""
    return hz_to_ppm(rad_to_hz(phase_rad, te_s), b0_t)


def ppm_to_rad(f_ppm, te_s: float, b0_t: float):
    """Field [ppm] -> phase [rad] at TE [s] and B0 [T]."""
    return hz_to_rad(ppm_to_hz(f_ppm, b0_t), te_s)


def te_to_seconds(te: float) -> float:
    """Echo time given in s or ms -> seconds (values > 1 are taken as ms)."""
    te = float(te)
    return te * 1e-3 if te > 1.0 else te
