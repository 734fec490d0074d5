"""A feature-store writer process for the concurrency tests.

Usage: python -m tests.featurestore.writer_worker URL OWNER LOG TTL_S [--die] VIDEO...

If the environment has ``WRITER_BARRIER=<dir>``, the process creates ``<dir>/<owner>.ready``
after start-up and waits for ``<dir>/go`` so that several writers start at the same time.

Writes every video it can claim, appending ``"<owner> <video>"`` to LOG for each write.
With ``--die`` it claims the first video, starts writing it, and exits without releasing
(what ``kill -9`` leaves behind).
"""

from __future__ import annotations

import os
import sys
import time
import zlib

from featurestore import FeatureStore
from tests.featurestore.factories import make_video


def main(argv: list[str]) -> None:
    url, owner, log, ttl_s, *videos = argv
    die = videos[0] == "--die"
    videos = videos[1:] if die else videos
    store = FeatureStore.open(url, mode="a")
    barrier = os.environ.get("WRITER_BARRIER")
    if barrier:
        open(os.path.join(barrier, f"{owner}.ready"), "w").close()
        while not os.path.exists(os.path.join(barrier, "go")):
            time.sleep(0.005)
    for video_id in videos:
        claim = store.try_claim(video_id, owner, ttl_s=float(ttl_s))
        if claim is None:
            continue
        if die:
            store._videos.create_group(video_id, attributes={"complete": False})
            os._exit(9)
        feats = make_video(store.schema, n_keyframes=4, seed=zlib.crc32(video_id.encode()))
        # Widen the race window: the other writer runs while this one holds the claim.
        time.sleep(0.02)
        with open(log, "a") as f:
            f.write(f"{owner} {video_id}\n")
        store.write_video(video_id, feats, provenance={"owner": owner})
        claim.release()


if __name__ == "__main__":
    main(sys.argv[1:])
