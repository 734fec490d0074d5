"""LFB stage-2 head: a feature-bank operator (FBO) over a window of stored actor features.

Long-Term Feature Banks (Wu et al., CVPR 2019), as ACAR §3.3, AMCRNet §2 and IGMN §2
describe it: the current actors' short-term features S_t (``batch.pooled``, [N, C]) attend
to the long-term features L_t of the bank window around keyframe t (``batch.bank
["features"]``, [B, L, D], written by ``bank_rows(stage1_head, "lfb", ...)``); the FBO
output is concatenated with S_t and classified by one linear layer.

``fbo="nl"`` (FBO-NL): S and L are projected to ``hidden_dim`` (512) by linear layers, then
``num_layers`` (2) modified non-local blocks ``S' = S + Dropout(W_out ReLU(LN(
softmax(Q K^T / sqrt(d)) V)))`` with Q from the (updated) current actors and K, V from the
projected bank, which no block rewrites (``S^(2) = NL'(NL'(S, L), L)``).
``fbo="max"`` / ``fbo="avg"``: the projected bank window max- or average-pooled over its
entries, the same vector for every actor of the keyframe.

Choices where the descriptions are vague, with reasons:

- LayerNorm over the ``hidden_dim`` channels of each actor, ReLU, then the output linear
  layer and dropout 0.2 on the residual branch: the LFB order ACAR's HR2O copies (eq. 2).
- ``input_dropout=0.2`` on the projected S and L: LFB regularises the FBO inputs, the
  reason it gives for LayerNorm and dropout being needed on a small-data bank.
- The window is the reader's: LFB uses 60 s around t with the current clip included, which
  is how its non-local block also relates the current actors to each other.
- ``pad_mode``: ``"mask"`` (default) leaves the window's padding out of the attention;
  ``"zeros"`` is MMAction2's ``LFB`` (``sample_long_term_features``): a window of
  ``num_slots`` slots (``window_size x max_num_sampled_feat``, 60 x 5 in its AVA configs)
  holding zeros where no feature was sampled, and every slot attended to. The LFB paper
  (Wu et al. 2019, §3.2) does not say how short windows are filled; the release
  (MMAction2's port of it, whose checkpoints this head loads with
  :meth:`LFBHead.load_mmaction2`) attends to the zeros. For ``max``/``avg`` the zeros take
  part in the pool (MMAction2 pools the unprojected features; here they are projected).
- A keyframe with an empty window (all-False mask) never gives NaN: NL passes the projected
  ``S`` through its residual blocks unchanged (no key, no update); max/avg give zeros.
- Classifier: ``concat(S_t, FBO out)`` -> dropout 0.5 (SlowFast-Det's AVA head) -> FC.
- ``init_from_stage1`` takes a stage-1 linear head (LFB's own stage 1 is a clip model whose
  classifier reads S_t): its classifier fills the S_t columns, the FBO columns start at 0.

``HeadOutput.features``: Tensor[N, C + hidden_dim]; ``attention["fbo"]``: Tensor[N, layers,
L], each block's weights over the keyframe's window (0 at padding), NL only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from models.heads.bank_features import bank_window
from models.heads.batch import ActorBatch, HeadOutput
from models.heads.contract import Head, constructor_arguments
from models.heads.lfb_mmaction2 import mmaction2_lfb_state
from models.heads.ragged import pad_actors, unpad_actors

FBOKind = Literal["nl", "max", "avg"]
PadMode = Literal["mask", "zeros"]


def masked_attention(
    query: Tensor, key: Tensor, value: Tensor, mask: Tensor
) -> tuple[Tensor, Tensor]:
    """Scaled dot-product attention of each query row over its own masked keys.

    Args:
        query: Tensor[N, Q, d]; key, value: Tensor[N, L, d]; mask: Bool[N, L] (True = real).

    Returns:
        (out Tensor[N, Q, d], weights Tensor[N, Q, L]); a row without any real key gets
        zero weights and a zero output (finite, also in the backward pass).
    """
    logits = torch.einsum("nqd,nld->nql", query, key) / math.sqrt(query.shape[-1])
    valid = mask[:, None, :]
    logits = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
    weights = torch.softmax(logits, dim=-1) * valid
    return torch.einsum("nql,nld->nqd", weights, value), weights


class BankNonLocalBlock(nn.Module):
    """NL'(S, L) of LFB: current features S attend to bank features L (no weights on L)."""

    def __init__(self, *, dim: int, dropout: float) -> None:
        super().__init__()
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.out = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, s: Tensor, bank: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """s [G, Q, d] queries, bank [G, L, d] keys/values, mask Bool[G, L] (per group G,
        e.g. a keyframe) -> (S' [G, Q, d], weights [G, Q, L])."""
        h, weights = masked_attention(self.query(s), self.key(bank), self.value(bank), mask)
        h = self.dropout(self.out(self.norm(h).relu()))
        has_key = mask.any(dim=1)[:, None, None]
        return s + h * has_key, weights


class LFBHead(Head):
    """Current pooled actor features + FBO over the ``lfb`` bank window -> FC.

    Reads ``batch.pooled`` [N, C], ``batch.batch_index`` and ``batch.bank``: ``mask``
    [B, L], ``features`` [B, L, bank_dim].
    """

    BANK_KIND = "lfb"
    ONLINE_MEMORY = True
    reads = frozenset({"pooled"})

    @classmethod
    def memory_dim(cls, in_channels: int, kwargs: Mapping[str, Any]) -> int:
        # features = [S_t, FBO output]: C + hidden_dim
        return in_channels + int(constructor_arguments(cls, in_channels, kwargs)["hidden_dim"])

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        bank_dim: int | None = None,
        fbo: FBOKind = "nl",
        hidden_dim: int = 512,
        num_layers: int = 2,
        input_dropout: float = 0.2,
        nl_dropout: float = 0.2,
        dropout: float = 0.5,
        pad_mode: PadMode = "mask",
        num_slots: int | None = None,
    ) -> None:
        super().__init__()
        if pad_mode not in ("mask", "zeros"):
            raise ValueError(f"pad_mode must be 'mask' or 'zeros', got {pad_mode!r}")
        if num_slots is not None and (pad_mode != "zeros" or num_slots < 1):
            raise ValueError("num_slots (>= 1) goes with pad_mode='zeros'")
        self.pad_mode: PadMode = pad_mode
        self.num_slots = num_slots
        if fbo not in ("nl", "max", "avg"):
            raise ValueError(f"fbo must be 'nl', 'max' or 'avg', got {fbo!r}")
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        self.fbo: FBOKind = fbo
        self.in_channels = in_channels
        self.bank_dim = in_channels if bank_dim is None else bank_dim
        self.project_bank = nn.Linear(self.bank_dim, hidden_dim)
        self.input_dropout = nn.Dropout(input_dropout)
        self.project_current: nn.Module | None = None
        self.blocks = nn.ModuleList()
        if fbo == "nl":
            self.project_current = nn.Linear(in_channels, hidden_dim)
            self.blocks.extend(
                BankNonLocalBlock(dim=hidden_dim, dropout=nl_dropout) for _ in range(num_layers)
            )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(in_channels + hidden_dim, num_classes)

    def init_from_stage1(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Start from a stage-1 linear head (``classifier`` on the pooled feature): its
        weights become the S_t columns of this classifier, the FBO columns start at zero, so
        the head first predicts what the stage-1 head did. Returns the keys left fresh."""
        weight, bias = state_dict.get("classifier.weight"), state_dict.get("classifier.bias")
        k, c = self.classifier.out_features, self.in_channels
        if set(state_dict) != {"classifier.weight", "classifier.bias"} or (
            weight is None or bias is None or tuple(weight.shape) != (k, c)
        ):
            raise ValueError(
                "LFBHead.init_from_stage1 expects a stage-1 linear head's state "
                f"(classifier.weight [{k}, {c}], classifier.bias [{k}]); got "
                f"{ {key: tuple(v.shape) for key, v in state_dict.items()} }"
            )
        with torch.no_grad():
            self.classifier.weight.zero_()
            self.classifier.weight[:, :c] = weight
            self.classifier.bias.copy_(bias)
        return sorted(key for key in self.state_dict() if not key.startswith("classifier."))

    def feature_bank_operator(self, batch: ActorBatch) -> tuple[Tensor, Tensor | None]:
        """FBO output per actor Tensor[N, hidden_dim] and the NL weights [N, layers, L]."""
        window = bank_window(batch, {"features": 1}, type(self).__name__)
        if window["features"].shape[-1] != self.bank_dim:
            raise ValueError(
                f"LFBHead(bank_dim={self.bank_dim}) got bank features "
                f"{tuple(window['features'].shape)}"
            )
        index = batch.batch_index.long()
        mask = window["mask"]  # (B, L)
        # the window is per keyframe: project it once, not once per actor
        features = window["features"].to(batch.pooled.dtype)
        if self.pad_mode == "zeros":
            features, mask = self._zero_slots(features, mask)
        bank = self.input_dropout(self.project_bank(features))  # (B, L, d)
        if self.fbo == "max":
            filled = bank.masked_fill(~mask[..., None], torch.finfo(bank.dtype).min)
            return (filled.amax(dim=1) * mask.any(dim=1, keepdim=True))[index], None
        if self.fbo == "avg":
            weight = mask.to(bank.dtype)[..., None]
            return ((bank * weight).sum(1) / weight.sum(1).clamp(min=1.0))[index], None
        assert self.project_current is not None
        s = self.input_dropout(self.project_current(batch.pooled))  # (N, d)
        s, actors = pad_actors(s, index, batch.num_keyframes)  # (B, A, d)
        weights = []
        for block in self.blocks:
            s, w = block(s, bank, mask)  # w: (B, A, L)
            weights.append(unpad_actors(w, actors))
        return unpad_actors(s, actors), torch.stack(weights, dim=1)

    def _zero_slots(self, features: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """pad_mode 'zeros': every empty slot is a zero feature that is attended to, up to
        ``num_slots`` slots per keyframe (the window's own length when None)."""
        b, length, dim = features.shape
        slots = length if self.num_slots is None else self.num_slots
        real = int(mask.sum(dim=1).max()) if mask.numel() else 0
        if real > slots:
            raise ValueError(
                f"LFBHead(num_slots={slots}) got a window with {real} entries for one keyframe"
            )
        features = features * mask[..., None].to(features.dtype)
        # Real entries first, so a window longer than ``slots`` keeps all of them.
        order = torch.argsort((~mask).to(torch.int8), dim=1, stable=True)[:, : min(slots, length)]
        features = torch.gather(features, 1, order[..., None].expand(-1, -1, dim))
        if slots > features.shape[1]:
            features = torch.cat(
                [features, features.new_zeros(b, slots - features.shape[1], dim)], 1
            )
        return features, torch.ones(b, slots, dtype=torch.bool, device=mask.device)

    def load_mmaction2(
        self, state: Mapping[str, Tensor], *, class_index: Sequence[int] | None = None
    ) -> dict[str, Tensor]:
        """Load an MMAction2 LFB checkpoint's ``state_dict`` (FBO-NL and ``fc_cls``) strictly;
        returns its other keys (the backbone's). See :mod:`models.heads.lfb_mmaction2`."""
        if self.fbo != "nl":
            raise ValueError("MMAction2 FBONonLocal checkpoints load into fbo='nl' heads")
        head, rest = mmaction2_lfb_state(state, class_index=class_index)
        self.load_state_dict(head, strict=True)
        return rest

    def forward(self, batch: ActorBatch) -> HeadOutput:
        if batch.pooled.dim() != 2 or batch.pooled.shape[1] != self.in_channels:
            raise ValueError(
                f"LFBHead: batch.pooled must be [N, {self.in_channels}], "
                f"got {tuple(batch.pooled.shape)}"
            )
        fbo, weights = self.feature_bank_operator(batch)
        feats = torch.cat([batch.pooled, fbo], dim=1)  # (N, C + d)
        logits = self.classifier(self.dropout(feats))
        attention = {} if weights is None else {"fbo": weights.detach()}
        return HeadOutput(logits=logits, attention=attention, features=feats)
