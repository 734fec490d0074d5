"""A toy stage output of many files, and a process that pushes one (kill / race tests).

python -m tests.flows.cache_worker push WORK_ROOT CACHE_URL [--wait-for FILE]
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
from pydantic import BaseModel

from stages.framework import Stage, StageContext, StageRef, run_stage


class BlobConfig(BaseModel):
    files: int = 64
    file_bytes: int = 64 << 10
    seed: int = 0


def compute_blob(ctx: StageContext) -> dict:
    cfg: BlobConfig = ctx.config  # type: ignore[assignment]
    rng = np.random.default_rng(cfg.seed)
    for i in range(cfg.files):
        path = ctx.staging / "parts" / f"{i // 16:02d}" / f"part{i:04d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(rng.integers(0, 256, cfg.file_bytes, dtype=np.uint8).tobytes())
    return {"files": cfg.files}


BLOB = Stage(name="blob", code_version="1", config_type=BlobConfig, compute=compute_blob)


def publish_blob(work_root: Path, **config: int) -> StageRef:
    return run_stage(BLOB, BlobConfig(**config), {}, work_root)


def main(argv: list[str]) -> int:
    from stages.framework.remote_cache import StageCache

    _, work_root, cache_url, *rest = argv
    ref = publish_blob(Path(work_root), files=int(rest[0]) if rest else 64)
    start = rest[1] if len(rest) > 1 else None
    while start and not Path(start).exists():  # both racers leave the gate together
        time.sleep(0.005)
    sent = StageCache(cache_url).push(work_root, ref.stage, ref.key)
    print(f"sent {sent}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
