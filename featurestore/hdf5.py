"""Export a feature store to one HDF5 file and import it back (bitwise round trip).

For tools that read HDF5 feature banks. The HDF5 file mirrors the zarr layout:
``/videos/<video_id>/<array>`` datasets; the store's root attributes and each video's
attributes (provenance included) are kept verbatim as JSON strings in an attribute
``bankflow_attrs`` (nested dicts are not HDF5 attribute types).
"""

from __future__ import annotations

import json
import os

import h5py

from featurestore.errors import StoreError
from featurestore.features import VideoFeatures
from featurestore.layout import DEFAULT_CHUNK_TARGET_BYTES, ROOT_KEY, VIDEOS
from featurestore.schema import StoreSchema
from featurestore.store import FeatureStore

ATTRS = "bankflow_attrs"


def export_hdf5(store_url: str | os.PathLike, out_path: str | os.PathLike) -> int:
    """Write every complete video of the store to ``out_path``; returns the video count."""
    store = FeatureStore.open(store_url, mode="r", allow_incomplete=True)
    videos = store.videos()
    with h5py.File(out_path, "w") as h5:
        h5.attrs[ATTRS] = json.dumps({ROOT_KEY: store.root_attrs})
        parent = h5.create_group(VIDEOS)
        for video_id in videos:
            group = parent.create_group(video_id)
            group.attrs[ATTRS] = json.dumps(store.video_attrs(video_id))
            for name, data in store.read_video(video_id).arrays().items():
                group.create_dataset(name, data=data)
    return len(videos)


def import_hdf5(in_path: str | os.PathLike, store_url: str | os.PathLike) -> FeatureStore:
    """Create a store at ``store_url`` from an ``export_hdf5`` file (attributes preserved)."""
    with h5py.File(in_path, "r") as h5:
        try:
            root_attrs = json.loads(h5.attrs[ATTRS])[ROOT_KEY]
            schema = StoreSchema.from_json(root_attrs["schema"])
            videos = h5[VIDEOS]
        except (KeyError, ValueError, TypeError) as exc:
            raise StoreError(
                f"{os.fspath(in_path)} is not a bankflow HDF5 export: expected attribute "
                f"{ATTRS!r} with a schema and a group {VIDEOS!r} ({exc})"
            ) from exc
        store = FeatureStore.create(
            store_url,
            schema,
            provenance=root_attrs.get("provenance", {}),
            expected_videos=root_attrs.get("expected_videos"),
            chunk_target_bytes=root_attrs.get("chunk_target_bytes", DEFAULT_CHUNK_TARGET_BYTES),
            compression=root_attrs.get("compression", "none"),
        )
        for video_id, group in videos.items():
            arrays = {name: group[name][()] for name in FeatureStore.array_names() if name in group}
            try:
                VideoFeatures(**arrays).validate(schema, video_id)
            except TypeError as exc:  # a required array is absent from the file
                raise StoreError(f"{os.fspath(in_path)}: video {video_id!r}: {exc}") from exc
            store._write_arrays(video_id, arrays, json.loads(group.attrs[ATTRS]), overwrite=False)
    # The exported attributes (timestamps, complete flag) replace the fresh ones verbatim.
    store._root.attrs.update({ROOT_KEY: root_attrs})
    return FeatureStore.open(store_url, mode="r", allow_incomplete=True)
