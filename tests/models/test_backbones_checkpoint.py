"""SlowFast checkpoint loading: PySlowFast and MMAction2 naming, reports, strictness."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from models.backbones import (
    CheckpointMismatchError,
    SlowFast,
    detect_scheme,
    infer_config_overrides,
    load_slowfast_checkpoint,
    slowfast_r50,
    slowfast_tiny,
)
from models.backbones.checkpoint import mmaction2_name, pyslowfast_name


def _random_state(model: SlowFast, rename: Callable[[str], str | None], seed: int = 0) -> dict:
    """Model-shaped random tensors under foreign names (what a real checkpoint would hold)."""
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.state_dict().items():
        name = rename(key)
        assert name is not None, key
        if value.dtype == torch.long:  # num_batches_tracked
            state[name] = torch.randint(0, 1000, value.shape, generator=generator)
        elif key.endswith("running_var"):  # must stay positive for a usable model
            state[name] = torch.rand(value.shape, generator=generator) + 0.5
        else:
            state[name] = torch.randn(value.shape, generator=generator)
    return state


def _assert_loaded(model: SlowFast, state: dict, rename: Callable[[str], str | None]) -> None:
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, state[rename(key)], msg=key)


def test_pyslowfast_names_of_r50_match_the_published_layout() -> None:
    names = {pyslowfast_name(k) for k in slowfast_r50().state_dict()}
    for expected in [
        "s1.pathway0_stem.conv.weight",
        "s1.pathway1_stem.bn.running_var",
        "s1_fuse.conv_f2s.weight",
        "s4_fuse.bn.bias",
        "s2.pathway0_res0.branch1.weight",
        "s2.pathway0_res0.branch1_bn.running_mean",
        "s2.pathway0_res0.branch2.a.weight",
        "s2.pathway0_res0.branch2.a_bn.running_mean",
        "s4.pathway1_res5.branch2.b.weight",
        "s5.pathway1_res2.branch2.c_bn.weight",
    ]:
        assert expected in names, expected
    assert "s5_fuse.conv_f2s.weight" not in names  # no fusion after res5
    assert "s2.pathway0_res1.branch1.weight" not in names  # shortcut projection only in block 0


def test_mmaction2_names_of_r50_match_the_published_layout() -> None:
    names = {mmaction2_name(k) for k in slowfast_r50(lateral_norm=False).state_dict()}
    for expected in [
        "backbone.slow_path.conv1.conv.weight",
        "backbone.slow_path.conv1.bn.weight",
        "backbone.slow_path.layer1.0.conv1.conv.weight",
        "backbone.slow_path.layer1.0.downsample.conv.weight",
        "backbone.slow_path.conv1_lateral.conv.weight",
        "backbone.slow_path.layer1_lateral.conv.weight",
        "backbone.slow_path.layer3_lateral.conv.weight",
        "backbone.fast_path.layer4.2.conv3.bn.running_var",
    ]:
        assert expected in names, expected
    assert "backbone.slow_path.layer4_lateral.conv.weight" not in names
    assert not any("lateral.bn" in n for n in names)


def test_pyslowfast_state_dict_loads_exactly_and_reproduces_outputs() -> None:
    source = slowfast_tiny(fusion_kernel=7).eval()
    state = _random_state(source, pyslowfast_name)
    state["head.projection.weight"] = torch.zeros(400, 288)
    state["head.projection.bias"] = torch.zeros(400)
    checkpoint = {"model_state": state, "epoch": 196, "cfg": "MODEL:\n  ARCH: slowfast\n"}

    model = slowfast_tiny(fusion_kernel=7)
    report = load_slowfast_checkpoint(model, checkpoint)
    assert report.scheme == "pyslowfast"
    assert report.ok and not report.missing and not report.unexpected and not report.mismatched
    assert sorted(report.ignored) == ["head.projection.bias", "head.projection.weight"]
    assert len(report.loaded) == len(model.state_dict())
    _assert_loaded(model, state, pyslowfast_name)

    # The same tensors under our names give the same function.
    load_slowfast_checkpoint(source, {k: state[pyslowfast_name(k)] for k in source.state_dict()})
    x = torch.randn(1, 3, 16, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(model.eval()(x), source(x))


@pytest.mark.parametrize("prefix", ["backbone.", ""], ids=["recognizer", "bare-backbone"])
def test_mmaction2_state_dict_loads_exactly(prefix: str) -> None:
    model = slowfast_tiny(lateral_norm=False)
    rename = lambda k: mmaction2_name(k, prefix)  # noqa: E731
    state = _random_state(model, rename)
    if prefix:
        state["cls_head.fc_cls.weight"] = torch.zeros(400, 288)
        state["data_preprocessor.mean"] = torch.zeros(3, 1, 1, 1)
    report = load_slowfast_checkpoint(model, {"meta": {"epoch": 3}, "state_dict": state})
    assert report.scheme == "mmaction2"
    assert report.ok, str(report)
    assert len(report.ignored) == (2 if prefix else 0)
    _assert_loaded(model, state, rename)


def test_pyslowfast_file_without_num_batches_tracked(tmp_path: Path) -> None:
    source = slowfast_tiny()
    state = _random_state(source, pyslowfast_name)
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "SLOWFAST_8x8_R50.pyth"
    torch.save({"model_state": state, "epoch": 1}, path)

    model = slowfast_tiny()
    report = load_slowfast_checkpoint(model, path)
    assert report.ok, str(report)
    assert report.source == str(path)
    assert detect_scheme(state) == "pyslowfast"
    for key, value in model.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            torch.testing.assert_close(value, state[pyslowfast_name(key)], msg=key)


def test_builder_reads_architecture_choices_off_an_mmaction2_file(tmp_path: Path) -> None:
    source = slowfast_tiny(fusion_kernel=7, lateral_norm=False)
    state = _random_state(source, mmaction2_name)
    assert infer_config_overrides(state) == {"lateral_norm": False, "fusion_kernel": 7}
    path = tmp_path / "slowfast_mmaction2.pth"
    torch.save({"state_dict": state}, path)

    # The file cannot say its strides, dilations, alpha or frame sampling: the caller does.
    stated = dict(spatial_strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2), alpha=4)
    model = slowfast_tiny(weights=path, slow_sampling="stride", **stated)
    assert (model.config.fusion_kernel, model.config.lateral_norm) == (7, False)
    _assert_loaded(model, state, mmaction2_name)


def test_missing_and_unexpected_keys_are_reported_and_strict_raises() -> None:
    model = slowfast_tiny()
    state = _random_state(model, pyslowfast_name)
    del state["s3.pathway1_res0.branch2.b.weight"]
    state["s3.pathway1_res0.branch2.z.weight"] = torch.zeros(1)
    before = {k: v.clone() for k, v in model.state_dict().items()}

    with pytest.raises(CheckpointMismatchError) as excinfo:
        load_slowfast_checkpoint(model, state)
    message = str(excinfo.value)
    assert "1 missing, 1 unexpected, 0 shape mismatches" in message
    assert (
        "missing from checkpoint: fast.stages.1.0.b.conv.weight "
        "(s3.pathway1_res0.branch2.b.weight)" in message
    )
    assert "unexpected in checkpoint: s3.pathway1_res0.branch2.z.weight" in message
    for key, value in model.state_dict().items():  # a failed strict load changes nothing
        torch.testing.assert_close(value, before[key], msg=key)

    report = load_slowfast_checkpoint(model, state, strict=False)
    assert report.missing == ["fast.stages.1.0.b.conv.weight (s3.pathway1_res0.branch2.b.weight)"]
    assert report.unexpected == ["s3.pathway1_res0.branch2.z.weight"]
    assert not report.ok
    torch.testing.assert_close(model.slow.stem.conv.weight, state["s1.pathway0_stem.conv.weight"])


def test_shape_mismatch_message_and_hint() -> None:
    source = slowfast_tiny(fusion_kernel=7)
    state = _random_state(source, pyslowfast_name)
    model = slowfast_tiny()  # 5x1x1 laterals
    report = load_slowfast_checkpoint(model, state, strict=False)
    assert len(report.mismatched) == 4
    text = str(report)
    assert (
        "shape mismatch: laterals.0.conv.weight <- s1_fuse.conv_f2s.weight: "
        "model (2, 1, 5, 1, 1), checkpoint (2, 1, 7, 1, 1)" in text
    )
    assert "hint: build the model with fusion_kernel=7" in text


def test_builder_rejects_weights_of_another_width(tmp_path: Path) -> None:
    path = tmp_path / "tiny_w8.pyth"
    torch.save({"model_state": _random_state(slowfast_tiny(), pyslowfast_name)}, path)
    with pytest.raises(ValueError, match=r"weights do not fit this SlowFast:\n.*tiny_w8.pyth"):
        slowfast_tiny(width=16, weights=path)


def test_lateral_norm_hint_for_mmaction2() -> None:
    source = slowfast_tiny(lateral_norm=False)
    state = _random_state(source, mmaction2_name)
    report = load_slowfast_checkpoint(slowfast_tiny(lateral_norm=True), state, strict=False)
    assert any(m.startswith("laterals.0.bn.weight") for m in report.missing)
    assert "hint: the checkpoint's laterals have no BN: build with lateral_norm=False" in str(
        report
    )


def test_unknown_naming_and_bad_files_raise_clear_errors(tmp_path: Path) -> None:
    model = slowfast_tiny()
    with pytest.raises(ValueError, match="not a SlowFast checkpoint"):
        load_slowfast_checkpoint(model, {"conv1.weight": torch.zeros(1)})
    with pytest.raises(FileNotFoundError, match=r"nope\.pyth"):
        load_slowfast_checkpoint(model, tmp_path / "nope.pyth")
    garbage = tmp_path / "garbage.pyth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"cannot read checkpoint .*garbage\.pyth"):
        load_slowfast_checkpoint(model, garbage)
    with pytest.raises(ValueError, match="holds no tensors"):
        load_slowfast_checkpoint(model, {"epoch": 3})
