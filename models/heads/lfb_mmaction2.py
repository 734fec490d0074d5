"""MMAction2's LFB checkpoints (``FBOHead`` with ``FBONonLocal``) onto :class:`LFBHead`.

MMAction2 (``mmaction/models/roi_heads/shared_heads/fbo_head.py``) builds the same
operator as LFB's FBO-NL with 1x1x1 ``Conv3d`` layers on [N, C, 1, 1, 1] tensors: each
is a linear layer here (weight [out, in, 1, 1, 1] -> [out, in]), and the per-layer
``LayerNorm([latent, 1, 1, 1])`` is a LayerNorm over the latent channels:

=================================================  ==========================
MMAction2 (``roi_head.shared_head.fbo.``)          LFBHead
=================================================  ==========================
``st_feat_conv``                                   ``project_current``
``lt_feat_conv``                                   ``project_bank``
``non_local_layer_{i+1}.st_feat_conv.conv``        ``blocks.{i}.query``
``non_local_layer_{i+1}.lt_feat_conv.conv``        ``blocks.{i}.key``
``non_local_layer_{i+1}.global_conv.conv``         ``blocks.{i}.value``
``non_local_layer_{i+1}.ln``                       ``blocks.{i}.norm``
``non_local_layer_{i+1}.out_conv.conv``            ``blocks.{i}.out``
``roi_head.bbox_head.fc_cls``                      ``classifier``
=================================================  ==========================

``fc_cls`` has one row per MMAction2 class index, which for AVA is the AVA action id
(row 0 = background when ``background_class=True``): ``class_index`` picks the rows of
the head's classes, in order. MMAction2 reads a window of ``window_size`` seconds times
``max_num_sampled_feat`` slots, zeros where no feature was sampled, and attends to
every slot: use the head with ``pad_mode="zeros", num_slots=window_size *
max_num_sampled_feat``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from torch import Tensor

FBO = "roi_head.shared_head.fbo."
FC_CLS = "roi_head.bbox_head.fc_cls."
_LAYER_PARTS = {
    "st_feat_conv.conv": "query",
    "lt_feat_conv.conv": "key",
    "global_conv.conv": "value",
    "ln": "norm",
    "out_conv.conv": "out",
}


def mmaction2_lfb_state(
    state: Mapping[str, Tensor], *, class_index: Sequence[int] | None = None
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """(LFBHead state, the checkpoint's other keys, e.g. ``backbone.*``).

    Args:
        state: the checkpoint's ``state_dict`` (a ``module.`` prefix is removed).
        class_index: rows of ``fc_cls`` to keep, in the head's class order; None = all.
    """
    head: dict[str, Tensor] = {}
    rest: dict[str, Tensor] = {}
    for key, value in state.items():
        key = key.removeprefix("module.")
        if key.startswith(FC_CLS):
            name = key[len(FC_CLS) :]
            head[f"classifier.{name}"] = value if class_index is None else value[list(class_index)]
        elif key.startswith(FBO):
            head[_rename(key[len(FBO) :], key)] = _flatten(value)
        else:
            rest[key] = value
    return head, rest


def _rename(name: str, key: str) -> str:
    for top, ours in (("st_feat_conv.", "project_current."), ("lt_feat_conv.", "project_bank.")):
        if name.startswith(top):
            return ours + name[len(top) :]
    layer, _, rest = name.partition(".")
    if layer.startswith("non_local_layer_") and layer[16:].isdigit():
        index = int(layer[16:]) - 1
        for part, ours in _LAYER_PARTS.items():
            if rest.startswith(part + "."):
                return f"blocks.{index}.{ours}.{rest[len(part) + 1 :]}"
    raise ValueError(f"MMAction2 LFB key {key!r} has no counterpart in LFBHead")


def _flatten(value: Tensor) -> Tensor:
    """Conv3d 1x1x1 weight [out, in, 1, 1, 1] -> [out, in]; LayerNorm [c, 1, 1, 1] -> [c]."""
    if value.dim() == 5:
        return value.flatten(1)
    if value.dim() == 4:
        return value.flatten()
    return value
