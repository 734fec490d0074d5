"""IGMN identity graph: construction (§3.2.1) and down-sampling (§3.2.3) on hand-made graphs."""

from __future__ import annotations

import torch

from models.heads.igmn_graph import (
    build_identity_graph,
    clip_groups,
    downsample,
    group_members,
    node_distances,
    reference_nodes,
)

# One keyframe (0) and a second one (1). Node: (keyframe, time, track, is_actor)
NODES = [
    (0, 0, 1, True),  # 0  actor A (track 1)
    (0, 0, 5, True),  # 1  actor B (track 5), no memory
    (0, -3, 1, False),  # 2  track 1 chain: -3 - -2 - -1 - [0] - 1 - 2
    (0, -2, 1, False),  # 3
    (0, -1, 1, False),  # 4
    (0, 1, 1, False),  # 5
    (0, 2, 1, False),  # 6
    (0, -2, 2, False),  # 7  track 2, absent from clip t: -2 - -1 - (gap) - 3
    (0, -1, 2, False),  # 8
    (0, 3, 2, False),  # 9
    (0, 1, -1, False),  # 10 untracked memory node
    (1, 1, 1, False),  # 11 track 1 but in keyframe 1: never linked to keyframe 0's track 1
    (1, 0, 9, True),  # 12 keyframe 1's actor
]


def graph():
    k, t, tr, a = zip(*NODES, strict=True)
    return build_identity_graph(torch.tensor(k), torch.tensor(t), torch.tensor(tr), torch.tensor(a))


def edge_set(g) -> set[tuple[int, int]]:
    return {tuple(e) for e in g.edges.tolist()}


def test_intra_actor_edges_link_consecutive_appearances_of_a_track() -> None:
    assert edge_set(graph()) == {
        (2, 3), (3, 4), (4, 0), (0, 5), (5, 6),  # track 1, through the actor node
        (7, 8), (8, 9),  # track 2: -1 links to 3 across the missing clips
    }  # fmt: skip


def test_edges_point_forward_in_time_and_duplicates_fan_out() -> None:
    g = build_identity_graph(
        keyframe=torch.zeros(4, dtype=torch.long),
        time=torch.tensor([-2, -1, -1, 0]),
        track=torch.tensor([7, 7, 7, 7]),
        is_actor=torch.tensor([False, False, False, True]),
    )
    assert edge_set(g) == {(0, 1), (0, 2), (1, 3), (2, 3)}


def test_distances_follow_the_rule_of_3_2_3() -> None:
    d = node_distances(graph()).tolist()
    # track 1 from actor A; track 2 from its node nearest t (time -1); loners are anchors
    assert d == [0, 0, 3, 2, 1, 1, 2, 1, 0, 1, 0, 0, 0]
    literal = node_distances(graph(), keep_unreached=False).tolist()
    assert literal == [0, 0, 3, 2, 1, 1, 2, -1, -1, -1, -1, -1, 0]


def test_reference_nodes_are_at_even_distance() -> None:
    ref = reference_nodes(graph()).tolist()
    assert [i for i, r in enumerate(ref) if r] == [0, 1, 3, 6, 8, 10, 11, 12]
    literal = reference_nodes(graph(), keep_unreached=False).tolist()
    assert [i for i, r in enumerate(literal) if r] == [0, 1, 3, 6, 12]


def test_downsampling_merges_through_removed_nodes() -> None:
    keep, g = downsample(graph())
    kept = torch.nonzero(keep)[:, 0].tolist()
    assert kept == [0, 1, 3, 6, 8, 10, 11, 12]
    new = {old: i for i, old in enumerate(kept)}
    # -2 and 0 shared the removed -1; 0 and 2 shared the removed 1; track 2's removed -2
    # and 3 each touched one reference node only, so no edge; -3 had one reference neighbour
    assert edge_set(g) == {(new[3], new[0]), (new[0], new[6])}
    assert g.time.tolist() == [0, 0, -2, 2, -1, 1, 1, 0]
    assert g.is_actor.tolist() == [True, True, False, False, False, False, False, True]
    # second down-sampling: the chain -2 - [0] - 2 keeps the actor node alone
    keep2, g2 = downsample(g)
    assert torch.nonzero(keep2)[:, 0].tolist() == [0, 1, 4, 5, 6, 7]
    assert g2.edges.shape == (0, 2)


def test_literal_downsampling_drops_tracks_absent_from_clip_t() -> None:
    keep, g = downsample(graph(), keep_unreached=False)
    assert torch.nonzero(keep)[:, 0].tolist() == [0, 1, 3, 6, 12]
    assert edge_set(g) == {(2, 0), (0, 3)}


def test_merged_edges_between_two_references_of_a_longer_chain() -> None:
    # actor at 0, chain 0 - 1 - 2 - 3 - 4: references 0, 2, 4 linked 0-2 and 2-4
    g = build_identity_graph(
        keyframe=torch.zeros(5, dtype=torch.long),
        time=torch.arange(5),
        track=torch.zeros(5, dtype=torch.long),
        is_actor=torch.tensor([True, False, False, False, False]),
    )
    keep, small = downsample(g)
    assert keep.tolist() == [True, False, True, False, True]
    assert edge_set(small) == {(0, 1), (1, 2)}


def test_clip_groups_are_the_intra_clip_cliques() -> None:
    g = graph()
    groups = clip_groups(g.keyframe, g.time)
    as_sets = [sorted(i for i in row if i >= 0) for row in groups.tolist()]
    # (keyframe, time) order
    assert as_sets == [[2], [3, 7], [4, 8], [0, 1], [5, 10], [6], [9], [12], [11]]


def test_group_members_with_empty_groups() -> None:
    members = group_members(torch.tensor([2, 0, 2]), 4)
    assert members.tolist() == [[1, -1], [-1, -1], [0, 2], [-1, -1]]
    assert group_members(torch.zeros(0, dtype=torch.long), 2).tolist() == [[-1], [-1]]
