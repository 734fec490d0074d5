"""torchvision video classifiers as feature-map backbones (built with ``weights=None``).

Each model is cut before its classifier; the last feature map is averaged over time:
``[B, 3, T, H, W] -> [B, out_channels, h, w]``. Transformers' token sequences are put back
on their ``(T', H', W')`` grid first (MViT's class token is dropped).

=============  ============  ======  =====================================================
name           out_channels  stride  input
=============  ============  ======  =====================================================
r3d_18         512           16      any T ≥ 1, H, W
r2plus1d_18    512           16      any T ≥ 1, H, W
s3d            1024          32      T ≥ 8, H, W ≥ 32
swin3d_t       768           32      any (padded to its 8×7×7 windows)
mvit_v2_s      768           32      exactly 16×224×224 (its pooled attention is sized
                                     for it; other sizes via ``mvit_v2_s(temporal_size=…,
                                     spatial_size=…)`` kwargs, which break the pretrained
                                     relative positions)
=============  ============  ======  =====================================================
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from torch import Tensor, nn
from torchvision.models import video as tv_video

from models.backbones.checkpoint import unwrap_state_dict

TorchvisionVideoName = Literal["r3d_18", "r2plus1d_18", "mvit_v2_s", "swin3d_t", "s3d"]

# (out_channels, output stride in pixels)
_GEOMETRY: dict[str, tuple[int, int]] = {
    "r3d_18": (512, 16),
    "r2plus1d_18": (512, 16),
    "s3d": (1024, 32),
    "swin3d_t": (768, 32),
    "mvit_v2_s": (768, 32),
}


class TorchvisionVideoBackbone(nn.Module):
    """A torchvision video model returning a temporally pooled feature map ``[B, C, h, w]``.

    ``weights_path``: a local state dict of the *full* torchvision model (as its own
    ``state_dict()`` writes it, optionally under ``state_dict``/``model``), loaded strictly
    before the classifier is removed. ``builder_kwargs`` go to the torchvision builder.
    """

    def __init__(
        self,
        name: TorchvisionVideoName,
        *,
        weights_path: str | Path | None = None,
        **builder_kwargs: Any,
    ) -> None:
        super().__init__()
        if name not in get_args(TorchvisionVideoName):
            raise ValueError(
                f"unknown torchvision video model {name!r}; expected one of "
                f"{list(get_args(TorchvisionVideoName))}"
            )
        self.name = name
        builder: Callable[..., nn.Module] = getattr(tv_video, name)
        net: Any = builder(weights=None, **builder_kwargs)  # its parts by name, below
        if weights_path is not None:
            _load_full_state_dict(net, weights_path)
        self.out_channels, self.stride = _GEOMETRY[name]
        self._features: Callable[[Tensor], Tensor]
        self.body: nn.Module
        if name in ("r3d_18", "r2plus1d_18"):
            self.body = nn.Sequential(net.stem, net.layer1, net.layer2, net.layer3, net.layer4)
            self._features = self.body
        elif name == "s3d":
            self.body = net.features
            self._features = self.body
        elif name == "swin3d_t":
            self.body = nn.Sequential(net.patch_embed, net.pos_drop, net.features, net.norm)
            self._features = self._swin_features
        else:
            net.head = nn.Identity()  # the classifier is the only part we drop
            self.body = net
            self._features = self._mvit_features

    def _swin_features(self, x: Tensor) -> Tensor:
        x = self.body(x)  # (B, T', H', W', C)
        return x.permute(0, 4, 1, 2, 3)  # (B, C, T', H', W')

    def _mvit_features(self, x: Tensor) -> Tensor:
        mvit: Any = self.body  # torchvision's MViT: its parts by name
        t_stride, h_stride, w_stride = mvit.conv_proj.stride
        height, width = mvit.pos_encoding.spatial_size
        expected = (mvit.pos_encoding.temporal_size * t_stride, height * h_stride, width * w_stride)
        if tuple(x.shape[2:]) != expected:
            raise ValueError(
                f"mvit_v2_s was built for T×H×W = {expected}, got a clip {tuple(x.shape)}"
            )
        x = mvit.conv_proj(x)  # (B, C, T', H', W')
        x = x.flatten(2).transpose(1, 2)  # (B, T'H'W', C)
        x = mvit.pos_encoding(x)  # prepends the class token
        thw = (mvit.pos_encoding.temporal_size, *mvit.pos_encoding.spatial_size)
        for block in mvit.blocks:
            x, thw = block(x, thw)
        x = mvit.norm(x)[:, 1:]  # drop the class token: (B, T'H'W', C)
        t, h, w = thw
        return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], t, h, w)

    def forward(self, x: Tensor) -> Tensor:
        """``[B, 3, T, H, W]`` float clip -> ``[B, out_channels, h, w]``."""
        if x.dim() != 5 or x.shape[1] != 3:
            raise ValueError(f"{self.name} expects a clip [B, 3, T, H, W], got {tuple(x.shape)}")
        return self._features(x).mean(dim=2)


def _load_full_state_dict(net: nn.Module, path: str | Path) -> None:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file {path} does not exist")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ValueError(f"cannot read weights file {path}: {exc}") from exc
    state = unwrap_state_dict(obj, source=str(path))
    try:
        result = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        raise ValueError(f"weights file {path} does not fit {type(net).__name__}: {exc}") from exc
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"weights file {path} does not fit {type(net).__name__}: "
            f"missing {result.missing_keys[:10]}, unexpected {result.unexpected_keys[:10]}"
        )
