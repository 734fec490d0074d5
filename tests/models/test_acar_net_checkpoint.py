"""A whole ACAR-Net checkpoint (backbone, neck and head in one state dict) loads into the
backbone and the release head, each part strictly, from one file.

The checkpoint is made here with random weights under ACAR-Net's own key names and
shapes, enumerated from its ``models/backbones/slowfast.py`` layout (``{p}_conv1``,
``{p}_res{S}.{B}.conv{1,2,3}`` / ``bn{1,2,3}``, ``downsample.0`` / ``downsample_bn``,
``Tconv{K}[.0|.1]``; the Slow pathway's first block of each stage takes the lateral
channels too) and ``models/heads/acar.py`` (``conv_reduce``, ``conv1``, ``conv2``,
``hr2o.*``, ``fc1``, ``fc2``), independently of our naming module. The backbone's maps
were also compared with ACAR-Net's own module outside the suite (max |diff| 0.0, see
docs/acar_net_checkpoints.md).
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from models.backbones import build_backbone, load_slowfast_checkpoint
from models.heads import ActorBatch, build_head
from models.heads.acar import ACARHead

pytestmark = pytest.mark.usefixtures("one_thread")

PRESET = "acar-net/SLOWFAST_R50_ACAR_HR2O"  # laterals Conv+BN+ReLU, kernel 7, linspace
_ACAR_HEAD = {  # ours -> ACAR-Net's head names
    "encoder.conv_reduce.": "conv_reduce.",
    "encoder.conv1.": "conv1.",
    "encoder.conv2.": "conv2.",
    "reasoning.blocks.": "hr2o.",
    "classifier.": "fc2.",
}


def _bn(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    return {f"{prefix}.{p}": (channels,) for p in ("weight", "bias", "running_mean", "running_var")}


def _acar_backbone_shapes(width: int, beta_inv: int, depths: tuple[int, ...],
                          fuse_kernel: int, fuse_bn: bool) -> dict[str, tuple[int, ...]]:  # fmt: skip
    """ACAR-Net ``SlowFast`` tensor names -> shapes, as its constructor lays them out."""
    shapes: dict[str, tuple[int, ...]] = {}
    fast_w = width // beta_inv
    slow_head = (1, 1, 3, 3)  # head_conv of slow_res1..4; the Fast pathway uses 3 throughout
    for pathway, stem_c, stem_t in (("fast", fast_w, 5), ("slow", width, 1)):
        shapes[f"{pathway}_conv1.weight"] = (stem_c, 3, stem_t, 7, 7)
        shapes.update(_bn(f"{pathway}_bn1", stem_c))
        inplanes = stem_c
        for stage, depth in enumerate(depths):
            planes = (fast_w if pathway == "fast" else width) * 2**stage
            t = 3 if pathway == "fast" else slow_head[stage]
            for block in range(depth):
                cin = inplanes
                if pathway == "slow" and block == 0:
                    cin = inplanes + 2 * (inplanes // beta_inv)  # + the lateral's channels
                base = f"{pathway}_res{stage + 1}.{block}"
                shapes[f"{base}.conv1.weight"] = (planes, cin, t, 1, 1)
                shapes[f"{base}.conv2.weight"] = (planes, planes, 1, 3, 3)
                shapes[f"{base}.conv3.weight"] = (planes * 4, planes, 1, 1, 1)
                for i, c in ((1, planes), (2, planes), (3, planes * 4)):
                    shapes.update(_bn(f"{base}.bn{i}", c))
                if block == 0:
                    shapes[f"{base}.downsample.0.weight"] = (planes * 4, cin, 1, 1, 1)
                    shapes.update(_bn(f"{base}.downsample_bn", planes * 4))
                inplanes = planes * 4
    for k, c in enumerate((fast_w, fast_w * 4, fast_w * 8, fast_w * 16), start=1):
        conv = f"Tconv{k}.0.weight" if fuse_bn else f"Tconv{k}.weight"
        shapes[conv] = (2 * c, c, fuse_kernel, 1, 1)
        if fuse_bn:
            shapes.update(_bn(f"Tconv{k}.1", 2 * c))
    return shapes


def _random(shape: tuple[int, ...], name: str, g: torch.Generator) -> torch.Tensor:
    if name.endswith("running_var"):
        return 0.5 + torch.rand(shape, generator=g)
    if len(shape) > 1:
        return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
    if name.endswith("weight"):
        return 1.0 + 0.3 * torch.randn(shape, generator=g)
    return 0.3 * torch.randn(shape, generator=g)


def _head() -> ACARHead:
    head = build_head("acar", in_channels=288, num_classes=5, reduce_dim=16, dim=8)
    assert isinstance(head, ACARHead) and head.variant == "release"
    return head


def _acar_head_state(g: torch.Generator) -> dict[str, torch.Tensor]:
    state = {}
    for key, value in _head().state_dict().items():
        for ours, theirs in _ACAR_HEAD.items():
            if key.startswith(ours):
                key = theirs + key.removeprefix(ours)
                break
        state[key] = _random(tuple(value.shape), key, g)
    return state


@pytest.fixture(scope="module")
def acar_checkpoint(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(17)
    backbone = {
        name: _random(shape, name, g)
        for name, shape in _acar_backbone_shapes(8, 8, (1, 1, 1, 1), 7, True).items()
    }
    head = _acar_head_state(g)
    state = {f"module.backbone.module.{k}": v for k, v in backbone.items()}
    state |= {f"module.head.module.{k}": v for k, v in head.items()}
    path = tmp_path_factory.mktemp("acar") / "ckpt_6.pth.tar"
    torch.save({"epoch": 6, "state_dict": state}, path)  # ACAR-Net's own layout
    return path, state


def _logits(backbone, head: ACARHead, clip: torch.Tensor, boxes, index) -> torch.Tensor:
    context = backbone.eval()(clip)
    n = boxes.shape[0]
    batch = ActorBatch(
        context=context, pooled=torch.zeros(n, context.shape[1]), boxes=boxes, batch_index=index
    )
    return head.eval()(batch).logits


def test_one_file_loads_backbone_and_head(acar_checkpoint) -> None:
    path, state = acar_checkpoint
    # The backbone from the file alone (what extract.weights + source_config do) ...
    alone = build_backbone("slowfast_tiny", weights=path, source_config=PRESET)
    report = load_slowfast_checkpoint(alone, path)
    head_keys = [k for k in state if k.startswith("module.head.")]
    assert report.scheme == "acar-net" and report.ok
    assert not report.missing and not report.unexpected and not report.mismatched
    assert len(report.loaded) == len(state) - len(head_keys) and len(report.ignored) == len(
        head_keys
    )
    # ... takes ACAR-Net's tensors by their names (checked on a few, by hand).
    ours = alone.state_dict()
    for mine, theirs in (
        ("slow.stem.conv.weight", "slow_conv1.weight"),
        ("fast.stages.3.0.shortcut.bn.running_var", "fast_res4.0.downsample_bn.running_var"),
        ("slow.stages.2.0.a.conv.weight", "slow_res3.0.conv1.weight"),
        ("laterals.2.conv.weight", "Tconv3.0.weight"),
        ("laterals.0.bn.bias", "Tconv1.1.bias"),
    ):
        assert torch.equal(ours[mine], state[f"module.backbone.module.{theirs}"]), mine
    assert alone.config.slow_sampling == "linspace" and alone.config.fusion_kernel == 7

    # The head and the backbone from the same file in one call.
    checkpoint = torch.load(path, weights_only=True)
    together = build_backbone("slowfast_tiny", source_config=PRESET, depths=(1, 1, 1, 1))
    head = _head()
    parts = head.load_acar_net(checkpoint["state_dict"], backbone=together)
    assert parts["neck"] == {} and len(parts["head"]) == len(head_keys)
    for key, value in together.state_dict().items():
        assert torch.equal(value, ours[key]), key

    # Same logits as each part loaded on its own.
    separate = _head()
    separate.load_acar_net(checkpoint["state_dict"])  # head only
    g = torch.Generator().manual_seed(3)
    clip = torch.randn(2, 3, 32, 64, 96, generator=g)
    boxes = torch.tensor([[0.1, 0.2, 0.5, 0.9], [0.4, 0.1, 0.9, 0.7], [0.2, 0.3, 0.6, 0.8]])
    index = torch.tensor([0, 0, 1])
    with torch.no_grad():
        a = _logits(together, head, clip, boxes, index)
        b = _logits(alone, separate, clip, boxes, index)
    assert a.shape == (3, 5) and a.abs().max() > 0
    torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_mismatched_parts_are_refused(acar_checkpoint) -> None:
    path, state = acar_checkpoint
    with pytest.raises(ValueError, match="neck tensors"):
        _head().load_acar_net({**state, "module.neck.module.w": torch.zeros(1)})
    wrong = build_backbone("slowfast_tiny", source_config=PRESET, depths=(1, 1, 1, 1), width=16)
    with pytest.raises(ValueError, match="shape mismatch"):
        _head().load_acar_net(state, backbone=wrong)
    # Without a source config the file does not say its strides, dilations, alpha, sampling.
    with pytest.raises(ValueError, match="source_config"):
        build_backbone("slowfast_tiny", weights=path)


def test_acar_net_yaml_is_a_source_config(tmp_path) -> None:
    """ACAR-Net's own YAML reads like the preset (configs/AVA/SLOWFAST_R50_ACAR_HR2O.yaml)."""
    yaml_path = tmp_path / "SLOWFAST_R50_ACAR_HR2O.yaml"
    yaml_path.write_text(
        "model:\n  backbone:\n    arch: slowfast50\n    kwargs:\n      alpha: 4\n"
        "      beta: 0.125\n      fuse_only_conv: False\n      fuse_kernel_size: 7\n"
        "      slow_full_span: True\n  head:\n    type: acar\n"
        "val:\n  augmentation:\n    spatial:\n      - type: Normalize\n        kwargs:\n"
        "          mean: [0.45, 0.45, 0.45]\n          std: [0.225, 0.225, 0.225]\n"
        "    temporal:\n      type: TemporalCenterCrop\n      kwargs:\n        size: 64\n"
        "        step: 2\n"
    )
    from_yaml = build_backbone("slowfast_tiny", source_config=yaml_path, depths=(1, 1, 1, 1))
    from_preset = build_backbone("slowfast_tiny", source_config=PRESET, depths=(1, 1, 1, 1))
    assert from_yaml.config == from_preset.config
    r101 = build_backbone("slowfast_tiny", source_config="acar-net/SLOWFAST_R101_ACAR_HR2O_DEPTH1")
    assert r101.config.slow_sampling == "stride" and not r101.config.lateral_norm
    assert r101.config.fusion_kernel == 5


def test_extract_takes_the_acar_net_file(acar_checkpoint) -> None:
    """``extract.weights`` + ``extract.source_config`` at the ACAR-Net file: its backbone."""
    from stages.extract.stage import ExtractConfig
    from stages.extract.video import load_backbone

    path, state = acar_checkpoint
    cfg = ExtractConfig(backbone="slowfast_tiny", weights=str(path), source_config=PRESET)
    model, sha = load_backbone(cfg, path)
    assert sha is not None and model.config.slow_sampling == "linspace"
    assert torch.equal(
        model.state_dict()["fast.stages.0.0.c.bn.weight"],
        state["module.backbone.module.fast_res1.0.bn3.weight"],
    )
