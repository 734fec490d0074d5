"""Tensor names of one SlowFast / SlowOnly network in each code base that publishes weights.

Every function maps one of *our* state-dict keys to the name the other code base gives the
same tensor, or ``None`` when that code base has no such tensor. Written from each
project's module layout (read, not copied):

==========================================  ==============================================  =====================================================
ours                                        PySlowFast ``.pyth`` (``model_state``)          MMAction2 ``.pth`` (``state_dict``, ``backbone.``)
==========================================  ==============================================  =====================================================
``slow.stem.conv.weight``                   ``s1.pathway0_stem.conv.weight``                ``slow_path.conv1.conv.weight`` (SlowOnly: ``conv1…``)
``slow.stages.S.B.b.bn.X``                  ``s{S+2}.pathway0_res{B}.branch2.b_bn.X``       ``slow_path.layer{S+1}.B.conv2.bn.X``
``fast.stages.S.B.shortcut.conv.weight``    ``s{S+2}.pathway1_res{B}.branch1.weight``       ``fast_path.layer{S+1}.B.downsample.conv.weight``
``slow.stages.S.nonlocalB.theta.weight``    ``s{S+2}.pathway0_nonlocal{B}.conv_theta.weight``  (no AVA config uses them)
``laterals.0.conv.weight``                  ``s1_fuse.conv_f2s.weight``                     ``slow_path.conv1_lateral.conv.weight``
``laterals.K.bn.X`` (K ≥ 1)                 ``s{K+1}_fuse.bn.X``                            ``slow_path.layer{K}_lateral.bn.X``
==========================================  ==============================================  =====================================================

Caffe2 ``.pkl`` (PySlowFast's AVA zoo, numpy blobs): ``conv1_w``, ``res_conv1_bn_s``
(``_s``/``_b``/``_rm``/``_riv`` = BN weight/bias/running mean/running var),
``res{S+2}_{B}_branch2a_w``, ``res{S+2}_{B}_branch1_bn_b``, the Fast pathway with a ``t_``
prefix, laterals ``t_pool1_subsample_w`` and ``t_res{K+1}_{last}_branch2c_bn_subsample_w``,
non-local ``nonlocal_conv{S+2}_{B}_theta_w``.

pytorchvideo (``create_slowfast`` / ``create_resnet``, detection nets under ``model.``):
``blocks.0.multipathway_blocks.{p}.conv.weight``,
``blocks.{S+1}.multipathway_blocks.{p}.res_blocks.{B}.branch2.conv_a.weight``,
``….branch1_norm.X``, laterals ``blocks.{K}.multipathway_fusion.conv_fast_to_slow.weight``;
SlowOnly without ``multipathway_blocks.{p}``.

ACAR-Net (``models/backbones/slowfast.py`` there, under ``backbone.module.`` of its
``AVA_model`` state dict, with neck and head beside it): stems ``{slow,fast}_conv1.weight``
/ ``{slow,fast}_bn1.X``, blocks ``{slow,fast}_res{S+1}.{B}.conv{1,2,3}.weight`` /
``bn{1,2,3}.X``, shortcuts ``….downsample.0.weight`` / ``….downsample_bn.X``, laterals
``Tconv{K+1}.weight`` (``fuse_only_conv``) or ``Tconv{K+1}.0.weight`` + BN ``Tconv{K+1}.1.X``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

STEM = re.compile(r"^(slow|fast)\.stem\.(conv|bn)\.(\w+)$")
BLOCK = re.compile(r"^(slow|fast)\.stages\.(\d+)\.(\d+)\.(a|b|c|shortcut)\.(conv|bn)\.(\w+)$")
NONLOCAL = re.compile(r"^(slow|fast)\.stages\.(\d+)\.nonlocal(\d+)\.(theta|phi|g|out|bn)\.(\w+)$")
LATERAL = re.compile(r"^laterals\.(\d+)\.(conv|bn)\.(\w+)$")
_PATHWAY_INDEX = {"slow": 0, "fast": 1}
_MMACTION_UNIT = {"a": "conv1", "b": "conv2", "c": "conv3", "shortcut": "downsample"}
_CAFFE2_BN = {"weight": "s", "bias": "b", "running_mean": "rm", "running_var": "riv"}
_CAFFE2_CONV = {"weight": "w", "bias": "b"}


def pyslowfast_name(key: str) -> str | None:
    """PySlowFast name of one of our state-dict keys (``None`` if the key is not ours)."""
    if m := STEM.match(key):
        pathway, module, param = m.groups()
        return f"s1.pathway{_PATHWAY_INDEX[pathway]}_stem.{module}.{param}"
    if m := BLOCK.match(key):
        pathway, stage, block, unit, module, param = m.groups()
        prefix = f"s{int(stage) + 2}.pathway{_PATHWAY_INDEX[pathway]}_res{block}"
        if unit == "shortcut":
            return f"{prefix}.branch1{'_bn' if module == 'bn' else ''}.{param}"
        return f"{prefix}.branch2.{unit}{'_bn' if module == 'bn' else ''}.{param}"
    if m := NONLOCAL.match(key):
        pathway, stage, block, unit, param = m.groups()
        prefix = f"s{int(stage) + 2}.pathway{_PATHWAY_INDEX[pathway]}_nonlocal{block}"
        return f"{prefix}.{'bn' if unit == 'bn' else 'conv_' + unit}.{param}"
    if m := LATERAL.match(key):
        index, module, param = m.groups()
        return f"s{int(index) + 1}_fuse.{'conv_f2s' if module == 'conv' else 'bn'}.{param}"
    return None


def mmaction2_name(key: str, prefix: str = "backbone.", *, slow_only: bool = False) -> str | None:
    """MMAction2 name of one of our state-dict keys (``None`` if MMAction2 has no such
    tensor). ``slow_only``: ``ResNet3dSlowOnly`` names (no ``slow_path.``)."""
    path = "" if slow_only else "{pathway}_path."
    if m := STEM.match(key):
        pathway, module, param = m.groups()
        return f"{prefix}{path.format(pathway=pathway)}conv1.{module}.{param}"
    if m := BLOCK.match(key):
        pathway, stage, block, unit, module, param = m.groups()
        layer = f"{path.format(pathway=pathway)}layer{int(stage) + 1}.{block}"
        return f"{prefix}{layer}.{_MMACTION_UNIT[unit]}.{module}.{param}"
    if m := LATERAL.match(key):
        index, module, param = m.groups()
        lateral = "conv1_lateral" if index == "0" else f"layer{index}_lateral"
        return f"{prefix}slow_path.{lateral}.{module}.{param}"
    return None


def caffe2_name(key: str, depths: Sequence[int]) -> str | None:
    """Caffe2 blob name of one of our keys (``None``: Caffe2 keeps no such blob, e.g.
    ``num_batches_tracked``). ``depths``: blocks per stage, for the lateral names."""
    if m := STEM.match(key):
        pathway, module, param = m.groups()
        t = "t_" if pathway == "fast" else ""
        if module == "conv":
            return _caffe2(f"{t}conv1", param, _CAFFE2_CONV)
        return _caffe2(f"{t}res_conv1_bn", param, _CAFFE2_BN)
    if m := BLOCK.match(key):
        pathway, stage, block, unit, module, param = m.groups()
        t = "t_" if pathway == "fast" else ""
        branch = "branch1" if unit == "shortcut" else f"branch2{unit}"
        base = f"{t}res{int(stage) + 2}_{block}_{branch}"
        if module == "conv":
            return _caffe2(base, param, _CAFFE2_CONV)
        return _caffe2(f"{base}_bn", param, _CAFFE2_BN)
    if m := NONLOCAL.match(key):
        pathway, stage, block, unit, param = m.groups()
        if pathway != "slow":
            return None
        base = f"nonlocal_conv{int(stage) + 2}_{block}_{unit}"
        return _caffe2(base, param, _CAFFE2_BN if unit == "bn" else _CAFFE2_CONV)
    if m := LATERAL.match(key):
        index, module, param = m.groups()
        k = int(index)
        base = (
            "t_pool1_subsample"
            if k == 0
            else f"t_res{k + 1}_{depths[k - 1] - 1}_branch2c_bn_subsample"
        )
        if module == "conv":
            return _caffe2(base, param, _CAFFE2_CONV)
        return _caffe2(f"{base}_bn", param, _CAFFE2_BN)
    return None


def _caffe2(base: str, param: str, suffixes: dict[str, str]) -> str | None:
    return f"{base}_{suffixes[param]}" if param in suffixes else None


def pytorchvideo_name(key: str, prefix: str = "", *, slow_only: bool = False) -> str | None:
    """pytorchvideo name of one of our keys (``create_slowfast``; ``slow_only``:
    ``create_resnet``). ``prefix``: ``model.`` for the detection networks."""

    def pathway_of(name: str) -> str:
        return "" if slow_only else f"multipathway_blocks.{_PATHWAY_INDEX[name]}."

    if m := STEM.match(key):
        pathway, module, param = m.groups()
        return (
            f"{prefix}blocks.0.{pathway_of(pathway)}{'norm' if module == 'bn' else 'conv'}.{param}"
        )
    if m := BLOCK.match(key):
        pathway, stage, block, unit, module, param = m.groups()
        base = f"{prefix}blocks.{int(stage) + 1}.{pathway_of(pathway)}res_blocks.{block}."
        kind = "norm" if module == "bn" else "conv"
        if unit == "shortcut":
            return f"{base}branch1_{kind}.{param}"
        return f"{base}branch2.{kind}_{unit}.{param}"
    if m := LATERAL.match(key):
        index, module, param = m.groups()
        kind = "norm" if module == "bn" else "conv_fast_to_slow"
        return f"{prefix}blocks.{index}.multipathway_fusion.{kind}.{param}"
    return None


_ACAR_UNIT = {"a": "1", "b": "2", "c": "3"}


def acar_net_name(key: str, prefix: str = "", *, lateral_norm: bool = True) -> str | None:
    """ACAR-Net name of one of our keys (``None``: no such tensor there, e.g. non-local).
    ``prefix``: ``backbone.module.`` in a whole-model checkpoint; ``lateral_norm``: the
    laterals are Conv+BN+ReLU sequences (``fuse_only_conv: False``)."""
    if m := STEM.match(key):
        pathway, module, param = m.groups()
        return f"{prefix}{pathway}_{'bn1' if module == 'bn' else 'conv1'}.{param}"
    if m := BLOCK.match(key):
        pathway, stage, block, unit, module, param = m.groups()
        base = f"{prefix}{pathway}_res{int(stage) + 1}.{block}."
        if unit == "shortcut":
            return f"{base}{'downsample_bn' if module == 'bn' else 'downsample.0'}.{param}"
        return f"{base}{module}{_ACAR_UNIT[unit]}.{param}"
    if m := LATERAL.match(key):
        index, module, param = m.groups()
        base = f"{prefix}Tconv{int(index) + 1}"
        if not lateral_norm:
            return f"{base}.{param}" if module == "conv" else None
        return f"{base}.{'1' if module == 'bn' else '0'}.{param}"
    return None
