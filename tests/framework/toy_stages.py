"""Two tiny stages (A -> B) for framework tests; importable from a subprocess."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from pydantic import BaseModel

from stages.framework import Stage, StageContext, run_stage


class AConfig(BaseModel):
    value: int = 1


class BConfig(BaseModel):
    factor: int = 2


def _log_call(ctx: StageContext) -> None:
    # Every compute appends a line: tests count how often each stage really ran.
    with open(ctx.work_root / "calls.log", "a") as f:
        f.write(f"{ctx.stage} {ctx.key}\n")


def compute_a(ctx: StageContext) -> dict:
    _log_call(ctx)
    cfg: AConfig = ctx.config  # type: ignore[assignment]
    (ctx.staging / "part1.txt").write_text(str(cfg.value))
    # A window in which a test kills the process (not config: the key must not change).
    time.sleep(float(os.environ.get("TOY_SLEEP_S", "0")))
    (ctx.staging / "value.txt").write_text(str(cfg.value))
    return {"value": cfg.value}


def compute_b(ctx: StageContext) -> dict:
    _log_call(ctx)
    cfg: BConfig = ctx.config  # type: ignore[assignment]
    value = int((ctx.input("a").path / "value.txt").read_text())
    (ctx.staging / "value.txt").write_text(str(value * cfg.factor))
    return {"value": value * cfg.factor}


STAGE_A = Stage(name="a", code_version="1", config_type=AConfig, compute=compute_a)
STAGE_B = Stage(name="b", code_version="1", config_type=BConfig, compute=compute_b)


def run_chain(work_root: Path, a: AConfig, b: BConfig):
    ref_a = run_stage(STAGE_A, a, {}, work_root)
    ref_b = run_stage(STAGE_B, b, {"a": ref_a}, work_root)
    return ref_a, ref_b


if __name__ == "__main__":
    root, value = Path(sys.argv[1]), int(sys.argv[2])
    ref_a, ref_b = run_chain(root, AConfig(value=value), BConfig())
    print(ref_a.cached, ref_b.cached, ref_b.summary["value"], os.getpid())
