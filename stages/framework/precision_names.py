"""The autocast precisions a stage config names, without importing torch
(:mod:`stages.framework.precision` runs them)."""

from __future__ import annotations

from typing import Literal

Precision = Literal["fp32", "bf16", "fp16"]
