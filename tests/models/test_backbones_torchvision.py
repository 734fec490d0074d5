"""torchvision video models as feature-map backbones."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torchvision.models import video as tv_video

from models.backbones import TorchvisionVideoBackbone, build_backbone

# name -> (input T, H, W at the smallest size the model takes, expected [C, h, w])
CASES = {
    "r3d_18": ((8, 64, 64), (512, 4, 4)),
    "r2plus1d_18": ((8, 64, 64), (512, 4, 4)),
    "s3d": ((8, 64, 64), (1024, 2, 2)),
    "swin3d_t": ((4, 64, 64), (768, 2, 2)),
    "mvit_v2_s": ((16, 224, 224), (768, 7, 7)),  # the only size its attention pools for
}


@pytest.mark.parametrize(
    "name",
    # MViT's one forward at 16×224×224 takes 3-10 s on 2 shared cores.
    [pytest.param(n, marks=pytest.mark.slow) if n == "mvit_v2_s" else n for n in CASES],
)
def test_feature_map_shape(name: str) -> None:
    (t, h, w), expected = CASES[name]
    torch.manual_seed(0)
    model = TorchvisionVideoBackbone(name).eval()
    x = torch.randn(1, 3, t, h, w)
    with torch.no_grad():
        y = model(x)
    assert tuple(y.shape) == (1, *expected)
    assert model.out_channels == expected[0]
    assert (h // model.stride, w // model.stride) == expected[1:]
    assert torch.isfinite(y).all()
    classifier_parts = {"fc", "head", "classifier"}
    assert not any(classifier_parts & set(n.split(".")) for n, _ in model.named_parameters())


def test_resnet_map_is_the_time_average_of_layer4() -> None:
    torch.manual_seed(0)
    net = tv_video.r3d_18(weights=None).eval()
    model = TorchvisionVideoBackbone("r3d_18").eval()
    for part, layer in zip(
        model.body, ["stem", "layer1", "layer2", "layer3", "layer4"], strict=True
    ):
        part.load_state_dict(getattr(net, layer).state_dict())
    x = torch.randn(1, 3, 8, 32, 32)
    with torch.no_grad():
        full = net.layer4(net.layer3(net.layer2(net.layer1(net.stem(x)))))
        torch.testing.assert_close(model(x), full.mean(dim=2))
        # The classifier's own pooled features equal our map averaged over space.
        logits = net(x)
        torch.testing.assert_close(net.fc(model(x).mean(dim=(2, 3))), logits)


def test_local_weights_are_loaded(tmp_path: Path) -> None:
    torch.manual_seed(1)
    net = tv_video.s3d(weights=None)
    path = tmp_path / "s3d.pth"
    torch.save({"state_dict": net.state_dict()}, path)
    model = TorchvisionVideoBackbone("s3d", weights_path=path)
    loaded = model.body.state_dict()
    for key, value in net.features.state_dict().items():
        torch.testing.assert_close(loaded[key], value, msg=key)


def test_weights_for_another_model_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "r3d.pth"
    torch.save(tv_video.r3d_18(weights=None).state_dict(), path)
    with pytest.raises(ValueError, match=r"weights file .*r3d\.pth does not fit"):
        TorchvisionVideoBackbone("r2plus1d_18", weights_path=path)
    with pytest.raises(FileNotFoundError, match=r"missing\.pth"):
        TorchvisionVideoBackbone("r3d_18", weights_path=tmp_path / "missing.pth")


def test_bad_inputs_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="unknown torchvision video model 'x3d_m'"):
        TorchvisionVideoBackbone("x3d_m")  # type: ignore[arg-type]
    model = TorchvisionVideoBackbone("mvit_v2_s")
    with pytest.raises(ValueError, match=r"built for T×H×W = \(16, 224, 224\)"):
        model(torch.zeros(1, 3, 8, 112, 112))
    with pytest.raises(ValueError, match=r"expects a clip \[B, 3, T, H, W\]"):
        build_backbone("r3d_18")(torch.zeros(1, 3, 32, 32))
