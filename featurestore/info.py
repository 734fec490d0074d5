"""Human-facing hooks for the CLI: ``store_info`` and ``store_verify``."""

from __future__ import annotations

import json
import os

from featurestore.banks import BankStore
from featurestore.errors import StoreError
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


def store_verify(url: str | os.PathLike, *, quick: bool = False) -> VerifyReport:
    """Verify a feature store or a bank (incomplete ones too: that is reported).

    Every chunk is decoded (its checksum checked) unless ``quick``, which only checks that
    every chunk exists.
    """
    try:
        return FeatureStore.open(url, mode="r", allow_incomplete=True).verify(quick=quick)
    except StoreError as exc:
        if "is not a bankflow feature store" not in str(exc):
            raise
        try:
            bank = BankStore.open(url, allow_incomplete=True)
        except StoreError:
            raise exc from None
    return VerifyReport(
        url=bank.url, problems=bank.verify(quick=quick), n_videos=len(bank.video_states())
    )
