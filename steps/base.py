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
