"""IGMN: hierarchical graph memory (HGNN, §3.2) fused with the Dual Attention Module (§3.3-3.5).

Ni et al., "Identity-aware Graph Memory Network for Action Detection". For keyframe t:

1. **Nodes** (§3.2.1): the current actors V_t^a with ``f_hat = max_xy f^i`` (the DAM's
   RoIAlign, ``IGMNDAMHead.node_features``) and the memory nodes V_t^m, the identity-bank
   window's entries (``batch.bank["features"]``, written by ``bank_rows(stage1_dam,
   "identity", ...)``) of the clips t - L .. t + L without t (L = 30), each with its track
   id and clip offset round(dt / ``clip_seconds``). Both are projected to ``hidden_dim``.
2. **Graph** (``igmn_graph``): intra-actor edges between consecutive clips of a track
   (the current actors' track ids are ``batch.track``), inter-actor intra-clip cliques,
   actor-to-memory inter-clip edges.
3. **HGNN layer** (§3.2.2), in this order: the ordered temporal aggregator on E_intra (two
   FC layers, one per direction: a node receives ``FC_fwd`` of its earlier neighbour and
   ``FC_bwd`` of its later one), inter-actor intra-clip self-attention (every clip of the
   graph, actor clip and memory clips alike), inter-actor inter-clip attention (actor nodes
   query all memory nodes; only actor nodes are updated).
4. **Down-sampling** (§3.2.3, ``igmn_graph.downsample``) between layers: memory nodes at an
   odd distance from their anchor leave, their neighbours are linked, so the next layer's
   aggregator reaches twice as far in time.
5. **Fusion** (§3.3-3.5): ``f_mem`` = mean of the actor nodes' outputs over the layers,
   then one 1x1 convolution (a linear layer on a vector) to ``memory_dim``; the DAM gets
   ``f_dam = concat(f, f_geo, f_mem)`` (eq. 2) and classifies ``f_fuse = f_mem + f_idt``
   (eq. 9) through its two layers. The auxiliary losses of eq. 10 (already weighted by
   lambda_aux = 0.5) are in ``HeadOutput.aux_losses`` (``IGMNDAMHead``); the trainer adds
   them to its loss on the logits (``L_cls^fuse``).

Choices where the paper is vague, with reasons:

- Self-attention blocks (Fig. 3a, "following [LFB]"): LFB's NL' block, queries from one
  node set, shared keys/values from the other, scaled dot product, LayerNorm, ReLU, linear,
  dropout 0.2, residual (``lfb.BankNonLocalBlock``); one block per message type and layer,
  the intra-clip block shared by the actor clip and the memory clips.
- Aggregator: ``h + ReLU(mean FC_fwd(earlier) + mean FC_bwd(later))``; a node without an
  E_intra neighbour is unchanged. Means, because a merged graph or a tracker error can give
  a node more than one neighbour per direction.
- ``hidden_dim=512``: the nodes are C wide (2304 on SlowFast); LFB, which §3.2.2 follows,
  projects to 512 before its attention. ``memory_dim=512`` (the "channel reduction" width)
  and ``num_layers=3`` (Table 1a: more layers help; no default given) are not in the paper.
- The window should exclude the current clip (M_t skips A_t); entries flagged ``current``
  are dropped here anyway, since the current actors are the actor nodes. N_max per clip is
  the window reader's ``max_per_second``.
- Tracklets absent from clip t are down-sampled from their node nearest to t
  (``keep_unreached=True``; see ``igmn_graph``); ``keep_unreached=False`` drops them.
- A keyframe with an empty window: no memory node, no inter-clip key; the actor nodes still
  pass intra-clip messages, so ``f_mem`` is defined and finite.
- ``init_from_stage1`` loads a stage-1 ``IGMNDAMHead``: the layers whose input is ``f_dam``
  get the stage-1 weights on the ``f, f_geo`` channels and zeros on the new ``f_mem`` ones
  (so the head starts as the stage-1 DAM), the HGNN starts fresh.

``HeadOutput.features``: the DAM's hidden layer [N, fuse_hidden]; ``attention``: the DAM's
maps plus ``"memory"`` [N, layers, M], each layer's inter-clip weights of the actor over its
keyframe's memory nodes in window order (0 for nodes down-sampled away and padding).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from models.heads.bank_features import bank_window
from models.heads.batch import ActorBatch, HeadOutput
from models.heads.contract import Head, HeadData, aux_class_mask, constructor_arguments
from models.heads.igmn_dam import IGMNDAMHead
from models.heads.igmn_graph import (
    IdentityGraph,
    build_identity_graph,
    clip_groups,
    downsample,
    group_members,
)
from models.heads.lfb import BankNonLocalBlock
from models.heads.ragged import pad_actors, unpad_actors


class OrderedTemporalAggregator(nn.Module):
    """Intra-actor message passing along E_intra with one FC layer per direction."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.forward_fc = nn.Linear(dim, dim)  # message from the earlier neighbour
        self.backward_fc = nn.Linear(dim, dim)  # message from the later neighbour

    def forward(self, h: Tensor, edges: Tensor) -> Tensor:
        """h [V, d], edges Long[E, 2] (earlier, later) -> h' [V, d]."""
        if edges.shape[0] == 0:
            # keep every parameter in the graph (DDP, gradient checks) at zero cost
            return h + 0.0 * (self.forward_fc(h[:0]).sum() + self.backward_fc(h[:0]).sum())
        earlier, later = edges[:, 0], edges[:, 1]
        message = h.new_zeros(h.shape)
        ones = h.new_ones(edges.shape[0], 1)
        fwd = message.index_add(0, later, self.forward_fc(h[earlier]))
        n_fwd = h.new_zeros(h.shape[0], 1).index_add(0, later, ones)
        bwd = message.index_add(0, earlier, self.backward_fc(h[later]))
        n_bwd = h.new_zeros(h.shape[0], 1).index_add(0, earlier, ones)
        message = fwd / n_fwd.clamp(min=1) + bwd / n_bwd.clamp(min=1)
        has = (n_fwd + n_bwd) > 0
        return h + message.relu() * has


def _attend_groups(block: BankNonLocalBlock, h: Tensor, members: Tensor) -> tuple[Tensor, Tensor]:
    """Self-attention of ``block`` within each group of ``members`` [G, S] (-1 padding).

    Returns (h with every member updated [V, d], weights [G, S, S])."""
    mask = members >= 0
    x = h[members.clamp(min=0)]  # (G, S, d); padding rows are never written back
    out, weights = block(x, x, mask)
    updated = h.clone()
    updated[members[mask]] = out[mask]
    return updated, weights


class HGNNLayer(nn.Module):
    """One HGNN layer (§3.2.2): aggregator, intra-clip and inter-clip attention."""

    def __init__(self, *, dim: int, dropout: float) -> None:
        super().__init__()
        self.aggregator = OrderedTemporalAggregator(dim)
        self.intra_clip = BankNonLocalBlock(dim=dim, dropout=dropout)
        self.inter_clip = BankNonLocalBlock(dim=dim, dropout=dropout)

    def forward(
        self, h: Tensor, graph: IdentityGraph, num_keyframes: int
    ) -> tuple[Tensor, Tensor, Tensor]:
        """h [V, d] on ``graph`` -> (h' [V, d], memory members Long[B, M], weights [A, M]).

        The actor nodes must come first (``graph.is_actor`` = [True]*A + [False]*M')."""
        h = self.aggregator(h, graph.edges)
        h, _ = _attend_groups(self.intra_clip, h, clip_groups(graph.keyframe, graph.time))
        actors = int(graph.is_actor.sum())
        memory = graph.keyframe[actors:]
        members = group_members(memory, num_keyframes) + actors  # (B, M), padding < actors
        members = torch.where(members >= actors, members, -1)
        queries, slots = pad_actors(h[:actors], graph.keyframe[:actors], num_keyframes)
        keys = h[members.clamp(min=0)]  # (B, M, d)
        out, weights = self.inter_clip(queries, keys, members >= 0)  # (B, A, d), (B, A, M)
        h = torch.cat([unpad_actors(out, slots), h[actors:]], dim=0)
        return h, members, unpad_actors(weights, slots)


class IGMNHead(Head):
    """HGNN over the identity bank window + DAM, fused (IGMN eq. 9), with eq. 10's aux losses.

    Reads ``batch.context`` [B, C, H, W], ``batch.boxes`` [N, 4], ``batch.batch_index``,
    ``batch.track`` [N] (None = all unknown) and ``batch.bank``: ``mask``, ``dt``,
    ``track`` [B, L] (``current`` [B, L] if given) and ``features`` [B, L, bank_dim].
    ``forward(batch, labels=None)``: labels [N, K] add the DAM's classification aux losses.
    """

    BANK_KIND = "identity"
    ONLINE_MEMORY = True
    reads = frozenset({"context", "pooled"})
    needs_labels = True

    @classmethod
    def kwargs_from_data(cls, data: HeadData) -> dict[str, Any]:
        # As for IGMN's DAM in stage 1: its auxiliary losses leave the pose classes out.
        return {**super().kwargs_from_data(data), "aux_class_mask": aux_class_mask(data)}

    @classmethod
    def memory_dim(cls, in_channels: int, kwargs: Mapping[str, Any]) -> int:
        # features = the DAM's hidden layer, fuse_hidden wide
        return int(constructor_arguments(cls, in_channels, kwargs)["fuse_hidden"])

    def __init__(
        self,
        *,
        in_channels: int,
        num_classes: int,
        bank_dim: int | None = None,
        hidden_dim: int = 512,
        num_layers: int = 3,
        memory_dim: int = 512,
        nl_dropout: float = 0.2,
        clip_seconds: float = 1.0,
        keep_unreached: bool = True,
        roi_size: int = 7,
        context_scale: float = 1.25,
        attention_hidden: int = 512,
        fuse_hidden: int = 1024,
        aux_weight: float = 0.5,
        prior_margin: float = 0.1,
        aux_class_mask: Sequence[bool] | None = None,
    ) -> None:
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        if clip_seconds <= 0:
            raise ValueError(f"clip_seconds must be > 0, got {clip_seconds}")
        self.in_channels = in_channels
        self.bank_dim = in_channels if bank_dim is None else bank_dim
        self.clip_seconds = clip_seconds
        self.keep_unreached = keep_unreached
        self.project_actor = nn.Linear(in_channels, hidden_dim)
        # bank nodes are the same f_hat as the actor nodes: one projection when widths agree
        self.project_memory: nn.Module | None = (
            None if self.bank_dim == in_channels else nn.Linear(self.bank_dim, hidden_dim)
        )
        self.layers = nn.ModuleList(
            HGNNLayer(dim=hidden_dim, dropout=nl_dropout) for _ in range(num_layers)
        )
        self.reduce = nn.Linear(hidden_dim, memory_dim)  # the 1x1 conv of f_mem
        self.dam = IGMNDAMHead(
            in_channels=in_channels,
            num_classes=num_classes,
            roi_size=roi_size,
            context_scale=context_scale,
            attention_hidden=attention_hidden,
            fuse_hidden=fuse_hidden,
            aux_weight=aux_weight,
            prior_margin=prior_margin,
            aux_class_mask=aux_class_mask,
            memory_channels=memory_dim,
        )

    # Read-only: the wrapped head's classifier (Head declares it as a plain attribute).
    @property
    def classifier(self) -> nn.Linear:  # type: ignore[override]
        return self.dam.classifier

    def init_from_stage1(self, state_dict: Mapping[str, Tensor]) -> list[str]:
        """Start the DAM from a stage-1 ``IGMNDAMHead`` (zeros on the f_mem inputs)."""
        own = self.dam.state_dict()
        unexpected = sorted(set(state_dict) - set(own))
        if unexpected:
            raise ValueError(f"init_from_stage1: not an IGMNDAMHead state, unexpected {unexpected}")
        merged = {}
        for key, value in own.items():
            if key not in state_dict:
                raise ValueError(f"init_from_stage1: stage-1 state lacks {key!r}")
            old = state_dict[key]
            if old.shape == value.shape:
                merged[key] = old
                continue
            width = old.shape[1]  # an f_dam input: old channels first, f_mem last
            if old.shape[0] != value.shape[0] or old.shape[2:] != value.shape[2:]:
                raise ValueError(
                    f"init_from_stage1: {key} is {tuple(old.shape)}, expected the f, f_geo "
                    f"part of {tuple(value.shape)}"
                )
            fresh = torch.zeros_like(value)
            fresh[:, :width] = old
            merged[key] = fresh
        self.dam.load_state_dict(merged)
        return sorted(k for k in self.state_dict() if not k.startswith("dam."))

    def graph(self, batch: ActorBatch, window: dict[str, Tensor]) -> tuple[IdentityGraph, Tensor]:
        """The §3.2.1 graph of the batch: actor nodes (batch order) then memory nodes (window
        order); returns it and the memory nodes' (keyframe, entry) LongTensor[M', 2]."""
        real = window["mask"] & ~window["current"]
        entries = torch.nonzero(real)  # (M', 2) in (keyframe, entry) order
        kf, slot = entries[:, 0], entries[:, 1]
        n = batch.num_actors
        device = real.device
        track = batch.track if batch.track is not None else torch.full((n,), -1, device=device)
        if track.shape != (n,):
            raise ValueError(f"IGMNHead: batch.track must be [{n}], got {tuple(track.shape)}")
        offsets = torch.round(window["dt"][kf, slot] / self.clip_seconds).long()
        graph = build_identity_graph(
            keyframe=torch.cat([batch.batch_index.long(), kf]),
            time=torch.cat([torch.zeros(n, dtype=torch.long, device=device), offsets]),
            track=torch.cat([track.long(), window["track"][kf, slot]]),
            is_actor=torch.cat(
                [
                    torch.ones(n, dtype=torch.bool, device=device),
                    torch.zeros_like(kf, dtype=torch.bool),
                ]
            ),
        )
        return graph, entries

    def memory_features(self, batch: ActorBatch) -> tuple[Tensor, Tensor]:
        """HGNN: f_mem [N, memory_dim] and the inter-clip weights [N, layers, L]."""
        window = bank_window(batch, {"features": 1}, type(self).__name__)
        bank = window["features"]
        if bank.shape[-1] != self.bank_dim:
            raise ValueError(
                f"IGMNHead(bank_dim={self.bank_dim}) got bank features {tuple(bank.shape)}"
            )
        graph, entries = self.graph(batch, window)
        n, b, length = batch.num_actors, batch.num_keyframes, bank.shape[1]
        if n == 0:  # no actor node, nothing to classify
            empty = bank.new_zeros(0, self.reduce.out_features)
            return empty, bank.new_zeros(0, len(self.layers), length)
        actors = self.project_actor(self.dam.node_features(batch))  # (N, d)
        project = self.project_actor if self.project_memory is None else self.project_memory
        memory = project(bank[entries[:, 0], entries[:, 1]].to(actors.dtype))  # (M', d)
        h = torch.cat([actors, memory], dim=0)
        entry_of = torch.cat([entries[:, 1].new_full((n,), -1), entries[:, 1]])  # per node
        outputs, attention = [], []
        for i, layer in enumerate(self.layers):
            if i > 0:
                keep, graph = downsample(graph, keep_unreached=self.keep_unreached)
                h, entry_of = h[keep], entry_of[keep]
            h, members, weights = layer(h, graph, b)
            outputs.append(h[:n])
            # weights over this layer's memory nodes, scattered back to window entries
            full = weights.new_zeros(n, length)
            index = graph.keyframe[:n]
            cols = entry_of[members.clamp(min=0)][index]  # (N, M)
            valid = (members >= 0)[index]
            full[
                torch.arange(n, device=full.device)[:, None].expand_as(cols)[valid], cols[valid]
            ] = weights[valid]
            attention.append(full)
        f_mem = self.reduce(torch.stack(outputs).mean(dim=0))  # (N, memory_dim)
        return f_mem, torch.stack(attention, dim=1).detach()

    def forward(self, batch: ActorBatch, labels: Tensor | None = None) -> HeadOutput:
        f_mem, attention = self.memory_features(batch)
        out = self.dam(batch, labels=labels, memory=f_mem)
        out.attention["memory"] = attention
        return out
