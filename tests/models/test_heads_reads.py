"""Each stage-1 head reads exactly the feature-store arrays it declares (``reads``).

The trainer reads only those arrays from the store, so a head that secretly looked at
another one would train on empty maps: its output on a batch stripped to its declared
arrays must equal its output on the full batch.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from models.heads import FEATURE_ARRAYS, build_head, head_reads
from tests.models.heads_testing import random_actor_batch

SMALL = {
    "linear": {},
    "acrn": {"dim": 8},
    "acar": {"reduce_dim": 8, "dim": 8},
    "amcr_slim": {"hidden_dim": 16, "num_heads": 2, "pos_input_size": [4, 6]},
    "pcca": {"dim": 16, "num_layers": 1, "num_heads": 2},
    "sonly": {"hidden_dim": 8, "num_heads": 2},
    "tonly": {"hidden_dim": 8, "num_heads": 2},
    "igmn_dam": {"attention_hidden": 8, "fuse_hidden": 16},
}


def strip(batch, reads: frozenset[str]):
    """The batch as the trainer builds it when only ``reads`` were read from the store."""
    return replace(
        batch,
        context=batch.context if "context" in reads else torch.zeros((batch.num_keyframes, 0, 0, 0)),
        roi=batch.roi if "roi" in reads else None,
        roi_t=batch.roi_t if "roi_t" in reads else None,
    )


@pytest.mark.parametrize("name", sorted(SMALL))
def test_head_output_depends_only_on_declared_arrays(name: str, one_thread) -> None:
    torch.manual_seed(0)
    head = build_head(name, in_channels=8, num_classes=5, **SMALL[name]).eval()
    reads = head_reads(head)
    assert getattr(head, "reads", None) is not None, f"{name} does not declare what it reads"
    assert "pooled" in reads and reads <= FEATURE_ARRAYS
    batch = random_actor_batch([3, 1, 2], channels=8, height=4, width=6, roi_steps=2)
    with torch.no_grad():
        full = head(batch).logits
        stripped = head(strip(batch, reads)).logits
    torch.testing.assert_close(stripped, full)


def test_head_without_declaration_reads_everything() -> None:
    class Legacy(torch.nn.Module):
        pass

    assert head_reads(Legacy()) == FEATURE_ARRAYS


def test_unknown_declared_array_is_named() -> None:
    class Typo(torch.nn.Module):
        reads = frozenset({"pooled", "contxt"})

    with pytest.raises(ValueError, match=r"Typo.reads names unknown arrays \['contxt'\]"):
        head_reads(Typo())
