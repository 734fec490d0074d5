"""IGMN's identity graph (Ni et al., §3.2.1) and its down-sampling (§3.2.3), as plain functions.

A graph holds the nodes of one or more keyframes at once (they never connect): every node
has a ``keyframe``, a clip ``time`` (offset in clips from the keyframe's clip t, 0 = the
actor nodes of clip t), a ``track`` id (-1 = unknown) and ``is_actor`` (True for the current
actors, V_t^a; False for the memory nodes, V_t^m). Only the intra-actor edges E_intra are
stored: the inter-actor edges are implicit (E_inter^1 = all pairs of the same keyframe and
clip, E_inter^2 = every actor node to every memory node of its keyframe), so the HGNN
computes them as masked attention instead of edge lists.

Rules, from the paper, with the choices where it is vague:

- ``identity_edges`` (§3.2.1): "linking the nodes in the consecutive clips within the same
  tracklet": the nodes of one (keyframe, track) sorted by time, each linked to the nodes of
  the track's next clip (consecutive appearances, so a missed detection does not cut the
  tracklet). Several nodes of one track in one clip (a tracker error) all link to the next
  clip's nodes. Unknown tracks (-1) get no E_intra edge. Edges point forward in time.
- ``reference_nodes`` (§3.2.3): a node's distance is its hop count through E_intra to the
  actor node it can reach; nodes at an even distance are the reference nodes (the actor
  nodes themselves, distance 0, always are). The paper only speaks of nodes that reach an
  actor node; a tracklet absent from clip t (another person seen only before or after)
  reaches none. With ``keep_unreached=True`` (default) its distance is measured from its
  own node nearest in time to t (earlier on ties), so every identity is down-sampled at the
  same rate instead of vanishing after the first layer; ``keep_unreached=False`` is the
  literal reading (such nodes, and untracked memory nodes, are dropped).
- ``downsample`` (§3.2.3): two reference nodes that link to the same non-reference node
  get a new E_intra edge, then every non-reference node and its edges are removed. Edges
  between reference nodes are kept.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from itertools import pairwise

import torch
from torch import Tensor


@dataclass
class IdentityGraph:
    """Nodes of B keyframes' identity graphs and their intra-actor edges.

    Attributes:
        keyframe: LongTensor[V], the keyframe of each node.
        time: LongTensor[V], clip offset from the keyframe's clip (0 for actor nodes).
        track: LongTensor[V], track id (-1 unknown).
        is_actor: BoolTensor[V], True for the current actor nodes.
        edges: LongTensor[E, 2], E_intra as (earlier node, later node) index pairs.
    """

    keyframe: Tensor
    time: Tensor
    track: Tensor
    is_actor: Tensor
    edges: Tensor

    @property
    def num_nodes(self) -> int:
        return int(self.keyframe.shape[0])

    def subgraph(self, keep: Tensor, edges: Tensor) -> IdentityGraph:
        """The nodes ``keep`` (Bool[V]) with ``edges`` given in the new node numbering."""
        return IdentityGraph(
            keyframe=self.keyframe[keep],
            time=self.time[keep],
            track=self.track[keep],
            is_actor=self.is_actor[keep],
            edges=edges,
        )


def identity_edges(keyframe: Tensor, time: Tensor, track: Tensor) -> Tensor:
    """E_intra: consecutive appearances of each (keyframe, track), LongTensor[E, 2] on the
    nodes' device, each pair (earlier, later). Nodes with ``track < 0`` get no edge."""
    groups: dict[tuple[int, int], dict[int, list[int]]] = {}
    for node, (k, t, tr) in enumerate(
        zip(keyframe.tolist(), time.tolist(), track.tolist(), strict=True)
    ):
        if tr >= 0:
            groups.setdefault((k, tr), {}).setdefault(t, []).append(node)
    pairs: list[tuple[int, int]] = []
    for by_time in groups.values():
        times = sorted(by_time)
        for earlier, later in pairwise(times):
            pairs.extend((u, v) for u in by_time[earlier] for v in by_time[later])
    return _edge_tensor(pairs, keyframe.device)


def build_identity_graph(
    keyframe: Tensor, time: Tensor, track: Tensor, is_actor: Tensor
) -> IdentityGraph:
    """The §3.2.1 graph of these nodes (all LongTensor[V] but ``is_actor`` Bool[V])."""
    n = keyframe.shape[0]
    for name, value in (("time", time), ("track", track), ("is_actor", is_actor)):
        if value.shape != (n,):
            raise ValueError(
                f"identity graph: {name} must be [{n}] like keyframe, got {tuple(value.shape)}"
            )
    keyframe, time, track = keyframe.long(), time.long(), track.long()
    return IdentityGraph(
        keyframe=keyframe,
        time=time,
        track=track,
        is_actor=is_actor.bool(),
        edges=identity_edges(keyframe, time, track),
    )


def _edge_tensor(pairs: list[tuple[int, int]], device: torch.device) -> Tensor:
    if not pairs:
        return torch.zeros(0, 2, dtype=torch.long, device=device)
    return torch.tensor(sorted(set(pairs)), dtype=torch.long, device=device)


def _neighbours(graph: IdentityGraph) -> list[list[int]]:
    adjacent: list[list[int]] = [[] for _ in range(graph.num_nodes)]
    for u, v in graph.edges.tolist():
        adjacent[u].append(v)
        adjacent[v].append(u)
    return adjacent


def node_distances(graph: IdentityGraph, *, keep_unreached: bool = True) -> Tensor:
    """Hop count of every node through E_intra to its anchor (LongTensor[V], -1 = none).

    The anchor of a connected component is its actor node(s); a component without one is
    anchored at its node nearest in time to t (earlier, then lower index, on ties) when
    ``keep_unreached``, else its nodes get -1.
    """
    adjacent = _neighbours(graph)
    n = graph.num_nodes
    distance = [-1] * n
    times = graph.time.tolist()
    actors = graph.is_actor.tolist()
    seen = [False] * n
    for start in range(n):
        if seen[start]:
            continue
        component, queue = [start], deque([start])
        seen[start] = True
        while queue:
            for nxt in adjacent[queue.popleft()]:
                if not seen[nxt]:
                    seen[nxt] = True
                    component.append(nxt)
                    queue.append(nxt)
        anchors = [v for v in component if actors[v]]
        if not anchors:
            if not keep_unreached:
                continue
            anchors = [min(component, key=lambda v: (abs(times[v]), times[v], v))]
        queue = deque(anchors)
        for a in anchors:
            distance[a] = 0
        while queue:
            node = queue.popleft()
            for nxt in adjacent[node]:
                if distance[nxt] < 0:
                    distance[nxt] = distance[node] + 1
                    queue.append(nxt)
    return torch.tensor(distance, dtype=torch.long, device=graph.time.device)


def reference_nodes(graph: IdentityGraph, *, keep_unreached: bool = True) -> Tensor:
    """Bool[V]: the §3.2.3 reference nodes (even distance to the anchor; actors always)."""
    distance = node_distances(graph, keep_unreached=keep_unreached)
    return ((distance >= 0) & (distance % 2 == 0)) | graph.is_actor


def downsample(
    graph: IdentityGraph, *, keep_unreached: bool = True
) -> tuple[Tensor, IdentityGraph]:
    """§3.2.3 graph down-sampling: (keep Bool[V], the graph of the reference nodes).

    Reference nodes that share a non-reference neighbour are linked; non-reference nodes and
    their edges are removed. The kept nodes keep their order (actor nodes stay first if they
    were first).
    """
    keep = reference_nodes(graph, keep_unreached=keep_unreached)
    is_ref = keep.tolist()
    times = graph.time.tolist()
    new_index = (torch.cumsum(keep.long(), 0) - 1).tolist()

    def ordered(u: int, v: int) -> tuple[int, int]:
        a, b = (u, v) if (times[u], u) <= (times[v], v) else (v, u)
        return new_index[a], new_index[b]

    pairs = []
    for u, v in graph.edges.tolist():
        if is_ref[u] and is_ref[v]:
            pairs.append(ordered(u, v))
    for node, near in enumerate(_neighbours(graph)):
        if is_ref[node]:
            continue
        refs = sorted({v for v in near if is_ref[v]})
        pairs.extend(ordered(a, b) for i, a in enumerate(refs) for b in refs[i + 1 :])
    return keep, graph.subgraph(keep, _edge_tensor(pairs, graph.edges.device))


def clip_groups(keyframe: Tensor, time: Tensor) -> Tensor:
    """Nodes grouped by (keyframe, clip): LongTensor[G, S] of node indices, -1 = padding.

    The groups are the cliques of E_inter^1 (all node pairs of one clip), in (keyframe,
    time) order, nodes in index order within a group.
    """
    n = keyframe.shape[0]
    if n == 0:
        return torch.zeros(0, 0, dtype=torch.long, device=keyframe.device)
    key = torch.stack([keyframe.long(), time.long()], dim=1)
    _, group = torch.unique(key, dim=0, return_inverse=True)  # sorted by (keyframe, time)
    return group_members(group)


def group_members(group: Tensor, num_groups: int | None = None) -> Tensor:
    """Members of each group id 0..G-1 as LongTensor[G, S] (node indices in increasing
    order, -1 = padding); G = ``num_groups`` (default max id + 1), S >= 1."""
    n = group.shape[0]
    g = (int(group.max()) + 1 if n else 0) if num_groups is None else num_groups
    if n == 0:
        return torch.full((g, 1), -1, dtype=torch.long, device=group.device)
    order = torch.argsort(group * n + torch.arange(n, device=group.device))  # stable by id
    sorted_group = group[order]
    counts = torch.bincount(sorted_group, minlength=g)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(n, device=group.device) - starts[sorted_group]
    size = max(int(counts.max()), 1)
    members = torch.full((g, size), -1, dtype=torch.long, device=group.device)
    members[sorted_group, slot] = order
    return members
