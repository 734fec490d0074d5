"""Human-facing hooks for the CLI: ``store_info`` and ``store_verify``."""

from __future__ import annotations

import json
import os

from featurestore.schema import describe_store_estimate, format_bytes
from featurestore.store import FeatureStore
from featurestore.verify import VerifyReport


def store_info(url: str | os.PathLike) -> str:
    """A multi-line summary: schema, videos, keyframes, actors, bytes, completeness."""
    store = FeatureStore.open(url, mode="r", allow_incomplete=True)
    s = store.schema
    all_videos = store.videos(complete_only=False)
    done = store.videos()
    n_kf = n_act = 0
    for video_id in done:
        attrs = store.video_attrs(video_id)
        n_kf += int(attrs["n_keyframes"])
        n_act += int(attrs["n_actors"])
    nbytes = store.nbytes()
    lines = [
        f"store      {store.url}",
        f"complete   {store.complete}",
        f"backbone   {s.backbone} (weights sha256 {s.weights_sha256 or '-'})",
        f"detector   {s.detector_key or '-'}",
        f"clip       {json.dumps(s.clip, sort_keys=True)}",
        f"context    {'×'.join(map(str, s.context_shape))} {s.dtype}; pooled {s.pooled_dim}; "
        f"roi {s.roi_shape or '-'}; roi_t {s.roi_t_shape or '-'}",
        f"videos     {len(done)} complete"
        + (f", {len(all_videos) - len(done)} incomplete" if len(all_videos) > len(done) else "")
        + (f", {len(store.expected_videos)} expected" if store.expected_videos else ""),
        f"keyframes  {n_kf:,}",
        f"actors     {n_act:,}",
        f"bytes      {format_bytes(nbytes)} stored; "
        + describe_store_estimate(s, n_kf, n_act, label="uncompressed"),
    ]
    if s.extra:
        lines.append(f"extra      {json.dumps(s.extra, sort_keys=True)}")
    return "\n".join(lines)


def store_verify(url: str | os.PathLike) -> VerifyReport:
    """``FeatureStore.open(url).verify()`` for an incomplete store too (it is reported)."""
    return FeatureStore.open(url, mode="r", allow_incomplete=True).verify()
