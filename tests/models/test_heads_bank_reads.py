"""Each stage-2 head reads exactly the feature-store arrays it declares, and names its bank."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from models.heads import HEADS, build_head, head_reads
from models.heads.bank_features import BANK_KINDS
from tests.models.bank_testing import random_window, with_bank
from tests.models.heads_testing import offset_boxes, random_actor_batch

C, K, H, W = 8, 5, 4, 6
# name: (kwargs, bank arrays per entry)
STAGE2 = {
    "lfb": ({"hidden_dim": 8}, {"features": (C,)}),
    # the released ACAR's first-order maps: unpadded 3x3 then a stride-2 pool of H x W
    "acar_acfb": ({"reduce_dim": 8, "dim": 6}, {"maps": (6, (H - 1) // 2, (W - 1) // 2)}),
    "tonly_memory": ({"hidden_dim": 8, "num_heads": 2}, {"features": (C,)}),
    "amcr_hafb": (
        {"hidden_dim": 16, "num_layers": 1, "num_heads": 2},
        {"interaction": (16,), "movement": (C,)},
    ),
    "igmn": (
        {"hidden_dim": 8, "memory_dim": 4, "attention_hidden": 8, "fuse_hidden": 8},
        {"features": (C,)},
    ),
}


def test_every_bank_head_is_here() -> None:
    assert {n for n, h in HEADS.items() if getattr(h, "BANK_KIND", None)} == set(STAGE2)


@pytest.mark.parametrize("name", sorted(STAGE2))
def test_output_depends_only_on_declared_arrays(name: str, one_thread) -> None:
    kwargs, arrays = STAGE2[name]
    torch.manual_seed(0)
    head = build_head(name, in_channels=C, num_classes=K, **kwargs).eval()
    assert head.BANK_KIND in BANK_KINDS
    reads = head_reads(head)
    batch = random_actor_batch(
        [3, 1, 2], channels=C, height=H, width=W, roi_steps=2, corner=0.5, far_corner=offset_boxes
    )
    batch = with_bank(batch, random_window([4, 0, 3], arrays))
    stripped = replace(
        batch,
        context=batch.context if "context" in reads else torch.zeros(3, 0, 0, 0),
        roi=batch.roi if "roi" in reads else None,
        roi_t=batch.roi_t if "roi_t" in reads else None,
    )
    with torch.no_grad():
        torch.testing.assert_close(head(stripped).logits, head(batch).logits)
