"""Paper-default linear / ACRN / ACAR / PCCA heads on one AVA-sized keyframe (CPU).

SlowFast-R50 res5 (dilated): C = 2304, 16 x 22 context, 3 actors, 80 classes.
Prints parameter counts and the median eval forward time.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch
from torch import nn

from models.heads.acar import ACARHead
from models.heads.acrn import ACRNHead
from models.heads.batch import ActorBatch
from models.heads.linear import LinearHead
from models.heads.pcca import PCCAHead

C, K, H, W, ACTORS = 2304, 80, 16, 22, 3
HEADS: dict[str, tuple[type[nn.Module], dict[str, str]]] = {
    "linear": (LinearHead, {}),
    "acrn": (ACRNHead, {}),  # MMAction2's release
    "acrn-paper": (ACRNHead, {"variant": "paper"}),
    "acar-nl": (ACARHead, {"hr2o": "nl"}),  # ACAR-Net's release
    "acar-nl-paper": (ACARHead, {"hr2o": "nl", "variant": "paper"}),
    "acar-rn": (ACARHead, {"hr2o": "rn", "variant": "paper"}),
    "pcca": (PCCAHead, {}),
}


def ava_sized_batch() -> ActorBatch:
    g = torch.Generator().manual_seed(0)
    xy = torch.rand(ACTORS, 2, generator=g) * 0.5
    return ActorBatch(
        context=torch.randn(1, C, H, W, generator=g),
        pooled=torch.randn(ACTORS, C, generator=g),
        boxes=torch.cat([xy, xy + 0.3], dim=1),
        batch_index=torch.zeros(ACTORS, dtype=torch.long),
    )


@pytest.mark.bench
@pytest.mark.parametrize("name", list(HEADS))
def test_bench_head_forward(name: str) -> None:
    cls, extra = HEADS[name]
    torch.manual_seed(0)
    head = cls(in_channels=C, num_classes=K, **extra).eval()
    batch = ava_sized_batch()
    params = sum(p.numel() for p in head.parameters())
    times = []
    with torch.no_grad():
        for _ in range(3):
            start = time.perf_counter()
            out = head(batch)
            times.append(time.perf_counter() - start)
    assert out.logits.shape == (ACTORS, K) and torch.isfinite(out.logits).all()
    print(
        f"\n{name:8s} params {params / 1e6:7.2f} M   forward {statistics.median(times) * 1e3:8.1f} ms"
        f" / keyframe ({ACTORS} actors, {C}x{H}x{W}, {torch.get_num_threads()} threads)"
    )
