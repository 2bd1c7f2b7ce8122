"""NF-ResNet-26 ... 200 (Brock, De, Smith 2021, arXiv:2101.08692).

Pre-activation bottleneck ResNets without normalisation, in two
conventions, as rows built by `nfnet_keras.models.builder`:

* deepmind-research `nfnets/nf_resnet.py` (reference doc §6.1): 7x7/2 conv
  and SAME 3x3/2 max pool stem, strided 1x1 WS conv shortcuts, learned skip
  gains, optional SE (`use_se=True`, ratio 0.25);
* timm's own `nf_resnet*` (`timm/models/nfnet.py` `_nfres_cfg`, timm
  1.0.31), which timm trained its `nf_resnet50.ra2_in1k` weights on:
  activation gain folded into every conv and plain activations, PyTorch
  symmetric padding and a -inf-padded max pool, avg-pool + 1x1 conv
  shortcuts on the pre-activated input, no skip gain (the last conv's
  gain starts at 0), widths rounded to multiples of 8, timm's `DropPath`.
"""

import dataclasses

from nfnet_keras.models import builder

_REFERENCE = (
    "[Characterizing signal propagation to close the performance gap in "
    "unnormalized ResNets](https://arxiv.org/abs/2101.08692) (ICLR 2021)"
)

# deepmind-research `nf_resnet.py` defaults (reference doc §6.1).
_DEEPMIND = builder.Architecture(
    name="nf_resnet50",
    constructor="NFResNet50",
    title="NF-ResNet-50",
    family="nf_resnet",
    variant="50",
    convention="deepmind",
    reference=_REFERENCE,
    depths=(3, 4, 6, 3),
    widths=(256, 512, 1024, 2048),  # stage output widths = 4 x (64, 128, 256, 512)
    strides=(1, 2, 2, 2),
    stem="7x7_pool",
    stem_widths=(64,),  # int(16 * width), width 4
    bottleneck_ratio=0.25,  # bottleneck width = 0.25 x block output width
    activation="relu",
    attention_ratio=0.25,  # SE hidden = 0.25 x block output width (when use_se)
    shortcut="conv",  # strided 1x1 WS conv, no pooling (§6.1)
    stochastic_depth_rate=0.1,  # NF_ResNet default
    # No dropout rate is published for NF-ResNets (`variant_dict` has none);
    # 224 px is the standard ResNet ImageNet resolution.
)


def _deepmind(variant, depths, params, params_se):
    return dataclasses.replace(
        _DEEPMIND,
        name=f"nf_resnet{variant}",
        constructor=f"NFResNet{variant}",
        title=f"NF-ResNet-{variant}",
        variant=variant,
        depths=depths,
        params=params,
        params_se=params_se,
    )


# timm `_nfres_cfg` and `NfCfg` defaults; `NormFreeNet(drop_rate=0.,
# drop_path_rate=0.)`.
_TIMM = dataclasses.replace(
    _DEEPMIND,
    convention="timm",
    reference=_REFERENCE + "; architecture of timm `timm/models/nfnet.py`",
    strides=(1, 2, 2, 2),  # stem stride 4 > 2: stage 0 keeps the resolution
    attention_ratio=0.0,  # timm's nf_resnet has no attention
    shortcut="avgpool",  # `DownsampleAvg`
    channel_divisor=8,  # `NfCfg.ch_div`
    gamma_in_act=False,
    same_padding=False,
    skipinit=False,
    drop_path_schedule="timm",
    stochastic_depth_rate=0.0,
    timm_layout="timm_nf_resnet",
)


def _timm(variant, depths, test_size, params, top1=None):
    # test_size: timm `test_input_size` (else `input_size`); params: timm
    # `sum(p.numel())` with 1000 classes; top1: timm
    # results/results-imagenet.csv at test_size (reference doc §6.1).
    return dataclasses.replace(
        _TIMM,
        name=f"timm_nf_resnet{variant}",
        constructor=f"TimmNFResNet{variant}",
        title=f"timm NF-ResNet-{variant}",
        variant=variant,
        depths=depths,
        test_size=test_size,
        params=params,
        top1=top1,
        timm_name=f"nf_resnet{variant}",
    )


# Rows: deepmind-research `nf_resnet.py` `variant_dict` (26: timm's
# `nf_resnet26` depths), counts from the reference doc §6.1 (rounded to
# 2 decimals); timm 1.0.31 `model_cfgs` / `default_cfgs`.
ROWS = (
    _deepmind("26", (2, 2, 2, 2), None, None),
    _deepmind("50", (3, 4, 6, 3), 25_560_000, 35_640_000),
    _deepmind("101", (3, 4, 23, 3), 44_550_000, 63_560_000),
    _deepmind("152", (3, 8, 36, 3), 60_190_000, 86_570_000),
    _deepmind("200", (3, 24, 36, 3), 64_670_000, 93_150_000),
    # A narrow test row: one block per stage.
    dataclasses.replace(
        _deepmind("tiny", (1, 1, 1, 1), None, None),
        name="nf_resnet_tiny",
        constructor="NFResNetTiny",
        widths=(16, 32, 64, 128),
        stem_widths=(8,),
        train_size=32,
        test_size=32,
        public=False,
    ),
    _timm("26", (2, 2, 2, 2), 224, 15_995_176),
    _timm("50", (3, 4, 6, 3), 288, 25_557_032, top1=80.658),
    _timm("101", (3, 4, 23, 3), 224, 44_549_160),
)


def _timm_attention(attention, variant, depths, params):
    # timm `_nfres_cfg(attn_layer='se', attn_kwargs=dict(rd_ratio=1/16))` and
    # `_nfres_cfg(attn_layer='eca')` (timm 1.0.31 `model_cfgs`): attention
    # after the last conv (`attn_last`); no published weights, timm's
    # default 224 px; params: timm `sum(p.numel())` with 1000 classes.
    kind = {"se": "SE", "eca": "ECA"}[attention]
    return dataclasses.replace(
        _TIMM,
        name=f"nf_{attention}resnet{variant}",
        constructor=f"NF{kind}ResNet{variant}",
        title=f"NF-{kind}-ResNet-{variant}",
        variant=f"{attention}{variant}",
        depths=depths,
        attention=attention,
        attention_ratio=1 / 16 if attention == "se" else 0.0,
        test_size=224,
        params=params,
        timm_name=f"nf_{attention}resnet{variant}",
    )


ROWS += (
    _timm_attention("se", "26", (2, 2, 2, 2), 17_395_976),
    _timm_attention("se", "50", (3, 4, 6, 3), 28_088_024),
    _timm_attention("se", "101", (3, 4, 23, 3), 49_326_872),
    _timm_attention("eca", "26", (2, 2, 2, 2), 15_995_220),
    _timm_attention("eca", "50", (3, 4, 6, 3), 25_557_118),
    _timm_attention("eca", "101", (3, 4, 23, 3), 44_549_331),
)
