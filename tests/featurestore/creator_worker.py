"""Creates feature stores and banks one after another, for the reader-race test.

Usage: python -m tests.featurestore.creator_worker ROOT N

Store ``ROOT/s<i>.zarr`` (two videos, finalized) and bank ``ROOT/b<i>.zarr`` for i < N;
``ROOT/done`` is created at the end. A reader polling ROOT sees every stage of creation.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from featurestore import FeatureStore
from featurestore.banks import BankStore
from tests.featurestore.factories import make_video, small_schema


def main(argv: list[str]) -> None:
    root, n = Path(argv[0]), int(argv[1])
    schema = small_schema()
    for i in range(n):
        store = FeatureStore.create(
            root / f"s{i}.zarr", schema, provenance={}, expected_videos=["a", "b"]
        )
        for j, video_id in enumerate(("a", "b")):
            store.write_video(video_id, make_video(schema, seed=2 * i + j))
        store.finalize()
        bank = BankStore.create(root / f"b{i}.zarr", kind="lfb", arrays={"features": (3,)},
                                provenance={}, expected_videos=["a"])  # fmt: skip
        bank.write_video("a", timestamps=np.arange(2), actor_offset=np.array([0, 1, 2]),
                         track=np.zeros(2, np.int32), arrays={"features": np.ones((2, 3))},
                         video_key="k")  # fmt: skip
        bank.finalize()
    (root / "done").touch()


if __name__ == "__main__":
    main(sys.argv[1:])
