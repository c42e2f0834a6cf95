"""Base of every step's parameter model: unknown keys are errors, not silently ignored.

A misspelt ``trust_hi`` that were silently dropped would run a day-long distillation with the
default; so every parameter model forbids extra keys and the CLI names the offending one.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")


def unique_elements(type_map: list[str]) -> list[str]:
    """Validator shared by every model with a ``type_map``: no element twice."""
    if len(set(type_map)) != len(type_map):
        raise ValueError(f"duplicate elements in {type_map}")
    return type_map


def ordered_trust_levels(lo: float, hi: float) -> None:
    """Validator shared by the select step and the distill config."""
    if lo >= hi:
        raise ValueError(f"trust_lo ({lo}) must be below trust_hi ({hi})")


def positive_kelvin(temps: list[float]) -> list[float]:
    """Validator shared by every MD's ``temps`` (exploration, teacher MD)."""
    if any(t <= 0 for t in temps):
        raise ValueError(f"temperatures must be positive kelvin, got {temps}")
    return temps


def frames_after_start(trj_freq: int, nsteps: int, what: str) -> None:
    """An MD that keeps no frame after its start produces nothing: refuse it when it is configured."""
    if trj_freq > nsteps:
        raise ValueError(f"trj_freq ({trj_freq}) must not exceed nsteps ({nsteps}): no frame would be {what}")
