"""Base of every step's parameter model: unknown keys are errors, not silently ignored.

A misspelt ``trust_hi`` that were silently dropped would run a day-long distillation with the
default; so every parameter model forbids extra keys and the CLI names the offending one.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Params(BaseModel):
    model_config = ConfigDict(extra="forbid")
