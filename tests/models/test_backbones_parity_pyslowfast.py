"""Parity with PySlowFast: res5 maps its own code computed (fixtures made by
tests/fixtures/parity/make_pyslowfast_fixtures.py from facebookresearch/SlowFast, tiny
width, random weights drawn by tensor name) against bankflow loading the same weights
from a ``.pyth`` (with its embedded ``cfg``) or a Caffe2 ``.pkl`` (with the YAML)."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from models.backbones import build_backbone
from models.backbones.naming import caffe2_name, pyslowfast_name
from tests.models.parity_testing import max_abs_diff, named_random_tensor

FIXTURES = Path(__file__).parents[1] / "fixtures" / "parity"
TOL = 1e-5
BUILDERS = {
    "SLOWFAST_32x2_R50_SHORT": "slowfast_r50",
    "SLOWFAST_32x2_R101_50_50": "slowfast_r101",
    "SLOW_8x8_R50_SHORT": "slowonly_r50",
}


def _fixture(name: str) -> dict:
    return torch.load(FIXTURES / f"pyslowfast_{name}.pt", weights_only=True)


def _state(fixture: dict) -> dict[str, torch.Tensor]:
    state = {}
    for key, shape in fixture["shapes"].items():
        tensor = named_random_tensor(key, tuple(shape))
        state[key] = tensor.long() if key.endswith("num_batches_tracked") else tensor
    return state


def _clip(fixture: dict) -> torch.Tensor:
    shape = (1, 3, fixture["frames"], fixture["size"], fixture["size"])
    return named_random_tensor("clip", shape, fan_in=2)


def _assert_equal_maps(model, fixture: dict) -> None:
    with torch.no_grad():
        slow, fast = model.eval()(_clip(fixture), return_temporal=True)
    expected = fixture["res5"]
    assert max_abs_diff(slow, expected[0]) <= TOL
    if len(expected) == 2:
        assert max_abs_diff(fast, expected[1]) <= TOL
    assert slow.abs().mean() > 0.1


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_pyth_with_its_embedded_cfg_gives_pyslowfast_res5(name: str, tmp_path: Path) -> None:
    fixture = _fixture(name)
    path = tmp_path / f"{name}.pyth"
    torch.save({"model_state": _state(fixture), "cfg": fixture["cfg"], "epoch": 20}, path)
    model = build_backbone(BUILDERS[name], weights=path)  # the cfg inside says the rest
    # Every PySlowFast tensor has a slot and every slot a tensor.
    ours = {pyslowfast_name(k) for k in model.state_dict()}
    assert ours == set(fixture["shapes"])
    _assert_equal_maps(model, fixture)


def test_r101_ava_architecture_read_from_the_yaml() -> None:
    model = build_backbone(
        "slowfast_r101", source_config="pyslowfast/SLOWFAST_32x2_R101_50_50", width=8
    )
    res4 = model.slow.stages[2]
    assert [res4[i].a.conv.kernel_size[0] for i in range(23)] == [3] * 6 + [1] * 17
    fast_res4 = model.fast.stages[2]
    assert [fast_res4[i].a.conv.kernel_size[0] for i in range(23)] == [3] * 6 + [1] * 17
    assert [n for n, _ in res4.named_children() if n.startswith("nonlocal")] == [
        "nonlocal6", "nonlocal13", "nonlocal20",
    ]  # fmt: skip
    assert res4.nonlocal6.pool.kernel_size == (2, 2, 2)


def test_caffe2_pickle_of_the_r101_ava_model(tmp_path: Path) -> None:
    name = "SLOWFAST_32x2_R101_50_50"
    fixture = _fixture(name)
    yaml_path = tmp_path / f"{name}.yaml"
    yaml_path.write_text(fixture["cfg"])
    reference = build_backbone("slowfast_r101", source_config=yaml_path, width=8)
    state = _state(fixture)
    by_ours = {k: state[pyslowfast_name(k)] for k in reference.state_dict()}
    depths = reference.config.depths
    blobs = {
        caffe2_name(k, depths): v.numpy()
        for k, v in by_ours.items()
        if caffe2_name(k, depths) is not None
    }
    blobs["pred_w"] = np.zeros((80, 288), np.float32)  # the AVA head: ignored
    blobs["conv1_w_momentum"] = np.zeros(1, np.float32)  # optimizer state: ignored
    path = tmp_path / f"{name}.pkl"
    with open(path, "wb") as f:
        pickle.dump({"blobs": blobs}, f, protocol=2)
    model = build_backbone("slowfast_r101", weights=path, source_config=yaml_path)
    _assert_equal_maps(model, fixture)


def test_stride_sampling_would_differ_from_pyslowfast(tmp_path: Path) -> None:
    # The comparison can fail: x[:, :, ::alpha] instead of linspace changes the Slow res5.
    name = "SLOWFAST_32x2_R50_SHORT"
    fixture = _fixture(name)
    path = tmp_path / f"{name}.pyth"
    torch.save({"model_state": _state(fixture), "cfg": fixture["cfg"]}, path)
    model = build_backbone("slowfast_r50", weights=path, slow_sampling="stride")
    with torch.no_grad():
        slow, _ = model.eval()(_clip(fixture), return_temporal=True)
    assert max_abs_diff(slow, fixture["res5"][0]) > 1e-2
