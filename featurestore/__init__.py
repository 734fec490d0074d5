"""bankflow's feature store: per-video backbone features in Zarr v3 (numpy + zarr only).

store = FeatureStore.create(url, schema, provenance={...}, expected_videos=ids)
with store.claim(video_id, owner="worker-1") as claim:
    if claim is not None:
        store.write_video(video_id, VideoFeatures.from_keyframes(keyframes, schema))
store.finalize()
FeatureStore.open(url).read_window(video_id, t - 10, t + 10)
"""

from featurestore.claims import Claim
from featurestore.errors import StoreError
from featurestore.features import KeyframeFeatures, VideoFeatures
from featurestore.hdf5 import export_hdf5, import_hdf5
from featurestore.info import store_info, store_verify
from featurestore.layout import chunk_rows
from featurestore.reading import KeyframeNotFoundError
from featurestore.schema import (
    StoreSchema,
    describe_store_estimate,
    estimate_store_bytes,
    format_bytes,
)
from featurestore.store import FeatureStore
from featurestore.verify import VerifyReport

__all__ = [
    "Claim",
    "FeatureStore",
    "KeyframeFeatures",
    "KeyframeNotFoundError",
    "StoreError",
    "StoreSchema",
    "VerifyReport",
    "VideoFeatures",
    "chunk_rows",
    "describe_store_estimate",
    "estimate_store_bytes",
    "export_hdf5",
    "format_bytes",
    "import_hdf5",
    "store_info",
    "store_verify",
]
