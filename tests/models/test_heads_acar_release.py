"""ACARHead(variant="release") computes what ACAR-Net's released head computes.

fixtures/reference_heads/acar_net.pt was made by ACAR-Net's own ``models/heads/acar.py``
with random weights (make_acar_net.py there says how); here the checkpoint goes through
``ACARHead.load_acar_net`` and the logits must agree to 1e-5 (fp32, CPU).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models.heads import ActorBatch, build_head
from models.heads.acar import ACARHead
from models.heads.acar_release import acar_net_head_state, split_acar_net_state

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures/reference_heads/acar_net.pt"

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def reference() -> dict:
    return torch.load(FIXTURE, weights_only=True)


def _batch(ref: dict) -> ActorBatch:
    # The release averages each pathway over time and concatenates slow, fast.
    context = torch.cat([ref["slow"].mean(dim=2), ref["fast"].mean(dim=2)], dim=1)
    n = ref["boxes"].shape[0]
    return ActorBatch(
        context=context,
        pooled=torch.zeros(n, context.shape[1]),  # unread by the release
        boxes=ref["boxes"],
        batch_index=ref["batch_index"],
    )


def _release_head() -> ACARHead:
    head = build_head("acar", in_channels=16, num_classes=5, reduce_dim=8, dim=6)
    assert isinstance(head, ACARHead) and head.variant == "release"
    return head


def test_logits_equal_the_release(reference) -> None:
    head = _release_head()
    rest = head.load_acar_net(reference["checkpoint"]["state_dict"])
    assert set(rest["backbone"]) == {"slow_res5.fake.weight"} and rest["neck"] == {}
    out = head.eval()(_batch(reference))
    diff = (out.logits - reference["logits"]).abs().max().item()
    assert diff <= 1e-5, diff
    assert out.features is not None and out.features.shape == (6, 12)  # [ReLU(fc1 A), GAP]


def test_release_parts_and_defaults() -> None:
    head = _release_head()
    assert head.reads == frozenset({"context"})
    assert head.dropout.p == 0.0 and head.classifier.bias is None and head.fc1.bias is None
    assert all(m.bias is None for m in head.modules() if isinstance(m, torch.nn.Conv2d))
    norms = [m for m in head.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 2 and all(m.num_groups == 1 for m in norms)
    # 9 x 11 map: unpadded 3x3 -> 7 x 9, max-pool 3/2/1 -> 4 x 5.
    batch = ActorBatch(context=torch.randn(2, 16, 9, 11), pooled=torch.zeros(3, 16),
                       boxes=torch.tensor([[0.1, 0.1, 0.5, 0.6]] * 3),
                       batch_index=torch.tensor([0, 0, 1]))  # fmt: skip
    assert head.first_order(batch).shape == (3, 6, 4, 5)
    assert head(batch).attention["hr2o"].shape == (2, 2, 2, 2, 4, 5)


def test_keyframes_do_not_mix_and_padding_changes_nothing(reference) -> None:
    head = _release_head()
    head.load_acar_net(reference["checkpoint"]["state_dict"])
    head.eval()
    batch = _batch(reference)
    full = head(batch).logits
    alone = ActorBatch(context=batch.context[:1], pooled=batch.pooled[:3], boxes=batch.boxes[:3],
                       batch_index=batch.batch_index[:3])  # fmt: skip
    torch.testing.assert_close(head(alone).logits, full[:3], atol=1e-5, rtol=0)


def test_checkpoint_keys_are_checked() -> None:
    with pytest.raises(ValueError, match=r"backbone\., neck\. or head\."):
        split_acar_net_state({"module.optimizer.x": torch.zeros(1)})
    parts = split_acar_net_state({"head.module.fc2.weight": torch.zeros(1)})  # no DDP
    assert acar_net_head_state(parts["head"]) == {"classifier.weight": torch.zeros(1)}
    with pytest.raises(RuntimeError, match="Missing key"):
        _release_head().load_acar_net({"module.head.module.fc2.weight": torch.zeros(5, 12)})
    with pytest.raises(ValueError, match="variant='release'"):
        ACARHead(in_channels=16, num_classes=5, variant="paper").load_acar_net({})
    with pytest.raises(ValueError, match="non-local HR2O only"):
        ACARHead(in_channels=16, num_classes=5, hr2o="rn")
