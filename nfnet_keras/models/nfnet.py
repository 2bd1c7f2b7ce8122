"""NFNet-F0 ... F7 (Brock, De, Smith, Simonyan 2021, arXiv:2102.06171).

Architecture of deepmind-research `nfnets/nfnet.py` (reference doc §2-§3):
the rows below, built by `nfnet_keras.models.builder`.
"""

import dataclasses

from nfnet_keras.models import builder

_REFERENCE = (
    "[High-Performance Large-Scale Image Recognition Without "
    "Normalization](https://arxiv.org/abs/2102.06171) (ICML 2021)"
)

# NFNet constants (deepmind-research `nfnet.py` NFNet/NFBlock defaults and
# `experiment_nfnets.py`; reference doc §2):
_NFNET = builder.Architecture(
    name="nfnet_f0",
    constructor="NFNetF0",
    title="NFNet-F0",
    family="nfnet",
    variant="F0",
    convention="deepmind",
    reference=_REFERENCE,
    depths=(1, 2, 6, 3),
    widths=(256, 512, 1536, 1536),  # stage output widths
    strides=(1, 2, 2, 2),
    stem="deep_quad",
    stem_widths=(16, 32, 64, 128),  # stem convs 0-2; conv3 = widths[0] // 2
    bottleneck_ratio=0.5,  # bottleneck width = 0.5 x block output width
    activation="gelu",
    group_width=128,  # channels per group of the 3x3 convs
    extra_conv=True,
    attention="se",
    attention_ratio=0.5,  # SE hidden = 0.5 x block output width
    num_features=2 * 1536,  # final 1x1 conv to 2 x last width
    stochastic_depth_rate=0.25,  # training config value (class default 0.1)
    haiku_layout=True,
    timm_layout="dm_nfnet",  # timm's `dm_nfnet_*` (reference doc §9.3)
)


def _row(variant, depths, train_size, test_size, dropout_rate, randaugment, params, flops, top1):
    # timm 1.0.31 has DeepMind's F0...F6 as `dm_nfnet_f*`.
    timm_name = f"dm_nfnet_{variant.lower()}" if top1 else None
    return dataclasses.replace(
        _NFNET,
        name=f"nfnet_{variant.lower()}",
        constructor=f"NFNet{variant}",
        title=f"NFNet-{variant}",
        variant=variant,
        depths=depths,
        train_size=train_size,
        test_size=test_size,
        dropout_rate=dropout_rate,
        randaugment=randaugment,
        params=params,
        flops=flops,
        top1=top1,
        timm_name=timm_name,
    )


# Rows: deepmind-research `nfnets/base.py` `nfnet_params` and README (train /
# test px, dropout, RandAugment layers x magnitude, top-1 %); params derived
# from the code's layer shapes, MACs at test resolution (README, derived for
# F7) (reference doc §2).
ROWS = (
    _row("F0", (1, 2, 6, 3), 192, 256, 0.2, "405", 71_489_284, 12.38e9, 83.6),
    _row("F1", (2, 4, 12, 6), 224, 320, 0.3, "410", 132_634_256, 35.54e9, 84.7),
    _row("F2", (3, 6, 18, 9), 256, 352, 0.4, "410", 193_779_228, 62.59e9, 85.1),
    _row("F3", (4, 8, 24, 12), 320, 416, 0.4, "415", 254_924_200, 114.76e9, 85.7),
    _row("F4", (5, 10, 30, 15), 384, 512, 0.5, "415", 316_069_172, 215.24e9, 85.9),
    _row("F5", (6, 12, 36, 18), 416, 544, 0.5, "415", 377_214_144, 289.76e9, 86.0),
    _row("F6", (7, 14, 42, 21), 448, 576, 0.5, "415", 438_359_116, 377.28e9, 86.5),
    _row("F7", (8, 16, 48, 24), 480, 608, 0.5, "415", 499_504_088, 478.78e9, None),
    # A test row (in the spirit of timm's `test_nfnet`): one block per stage,
    # narrow; grouped 3x3 convs from stage 1 on (group width 8: groups 1, 2, 4, 4).
    dataclasses.replace(
        _row("tiny", (1, 1, 1, 1), 32, 32, 0.0, "405", None, None, None),
        constructor="NFNetTiny",
        widths=(16, 32, 64, 64),
        stem_widths=(8, 8, 8, 8),
        group_width=8,
        num_features=2 * 64,
        public=False,
    ),
)

# timm's own light NFNets (timm 1.0.31 `timm/models/nfnet.py` `_nfnet_cfg`
# and `model_cfgs`), which timm trained its `nfnet_l0` / `eca_nfnet_l*`
# weights on: SiLU with its gain folded into every conv (`NfCfg.gamma_in_act`
# False), PyTorch symmetric padding, no skip gain (the last conv's gain
# starts at 0), widths rounded to multiples of 8, timm's `DropPath`.
_TIMM_LIGHT = dataclasses.replace(
    _NFNET,
    convention="timm",
    reference=_REFERENCE + "; architecture of timm `timm/models/nfnet.py`",
    bottleneck_ratio=0.25,  # `bottle_ratio=0.25`
    activation="silu",  # `act_layer='silu'`
    group_width=64,  # `group_size=64`
    attention_ratio=0.25,  # nfnet_l0 SE: `rd_ratio=0.25, rd_divisor=8`
    channel_divisor=8,  # `NfCfg.ch_div`
    gamma_in_act=False,
    same_padding=False,
    skipinit=False,
    drop_path_schedule="timm",
    stochastic_depth_rate=0.0,  # `NormFreeNet(drop_path_rate=0.)`
    dropout_rate=0.0,  # `NormFreeNet(drop_rate=0.)`
    randaugment=None,
    haiku_layout=False,
    timm_layout="timm_nfnet",
)


def _light(name, constructor, title, depths, feat_mult, attention, train_size, test_size, params, top1=None):
    # num_features = int(1536 * feat_mult) (`_nfnet_cfg`); train / test px:
    # timm `default_cfgs` `input_size` / `test_input_size`; params: timm
    # `sum(p.numel())` with 1000 classes; top1: timm
    # results/results-imagenet.csv at the test size, crop 1.0.
    return dataclasses.replace(
        _TIMM_LIGHT,
        name=name,
        constructor=constructor,
        title=title,
        variant=name,
        depths=depths,
        attention=attention,
        attention_ratio=_TIMM_LIGHT.attention_ratio if attention == "se" else 0.0,
        num_features=int(_NFNET.widths[-1] * feat_mult),
        train_size=train_size,
        test_size=test_size,
        params=params,
        flops=None,
        top1=top1,
        timm_name=name,
    )


ROWS += (
    _light("nfnet_l0", "NFNetL0", "NFNet-L0", (1, 2, 6, 3), 1.5, "se", 224, 288, 35_074_488, 82.766),
    _light("eca_nfnet_l0", "ECANFNetL0", "ECA-NFNet-L0", (1, 2, 6, 3), 1.5, "eca", 224, 288, 24_143_924, 82.590),
    _light("eca_nfnet_l1", "ECANFNetL1", "ECA-NFNet-L1", (2, 4, 12, 6), 2, "eca", 256, 320, 41_407_728, 84.062),
    _light("eca_nfnet_l2", "ECANFNetL2", "ECA-NFNet-L2", (3, 6, 18, 9), 2, "eca", 320, 384, 56_722_348, 84.710),
    _light("eca_nfnet_l3", "ECANFNetL3", "ECA-NFNet-L3", (4, 8, 24, 12), 2, "eca", 352, 448, 72_036_968),
)
