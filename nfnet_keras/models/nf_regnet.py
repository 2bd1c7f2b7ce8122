"""NF-RegNet-B0 ... B5 (Brock, De, Smith 2021, arXiv:2101.08692).

EfficientNet-like inverted bottlenecks with grouped 3x3 convs and SE on the
middle width, in two conventions, as rows built by
`nfnet_keras.models.builder`:

* deepmind-research `nfnets/nf_regnet.py` with the configs of
  `nfnets/base.py` `nf_regnet_params` (reference doc §6.2): widths x 0.75
  truncated, learned skip gains, zero-initialised classifier;
* timm's own `nf_regnet_b*` (`timm/models/nfnet.py` `_nfreg_cfg`, timm
  1.0.31), which timm trained its `nf_regnet_b1.ra2_in1k` weights on:
  widths rounded to multiples of 8, activation gain folded into the convs,
  symmetric padding, no skip gain, timm's `DropPath`.
"""

import dataclasses

from nfnet_keras.models import builder

_REFERENCE = (
    "[Characterizing signal propagation to close the performance gap in "
    "unnormalized ResNets](https://arxiv.org/abs/2101.08692) (ICLR 2021)"
)

# Final conv width rule (both references): 1280 * C_last // 440, the B0 last
# stage width 440 mapping to 1280 (EfficientNet-like).
_HEAD_WIDTH, _HEAD_REFERENCE = 1280, 440

# deepmind-research `nf_regnet.py` defaults and `experiment_nf_regnets.py`
# (reference doc §6.2).
_DEEPMIND = builder.Architecture(
    name="nf_regnet_b0",
    constructor="NFRegNetB0",
    title="NF-RegNet-B0",
    family="nf_regnet",
    variant="B0",
    convention="deepmind",
    reference=_REFERENCE,
    depths=(1, 3, 6, 6),
    widths=(48, 104, 208, 440),  # stage widths before the width factor
    strides=(2, 2, 2, 2),  # every stage downsamples
    stem="3x3",
    stem_widths=(36,),  # the first stage width
    bottleneck_ratio=2.25,  # mid width = 2.25 x block input width (1 for block 0)
    activation="silu",
    inverted_bottleneck=True,
    group_width=8,  # channels per group of the 3x3 convs
    attention="se",
    attention_ratio=0.5,  # SE (on the mid width) hidden = 0.5 x mid width
    width_factor=0.75,  # int() truncation
    num_features=960,
    classifier_initializer="zeros",
    stochastic_depth_rate=0.1,  # NF_RegNet default
)


def _deepmind(variant, widths, depths, train_size, test_size, dropout_rate, weight_decay, params):
    width = int(widths[0] * 0.75)
    return dataclasses.replace(
        _DEEPMIND,
        name=f"nf_regnet_{variant.lower()}",
        constructor=f"NFRegNet{variant}",
        title=f"NF-RegNet-{variant}",
        variant=variant,
        widths=widths,
        depths=depths,
        stem_widths=(width,),
        num_features=_HEAD_WIDTH * int(widths[-1] * 0.75) // _HEAD_REFERENCE,
        train_size=train_size,
        test_size=test_size,
        dropout_rate=dropout_rate,
        weight_decay=weight_decay,  # experiment_nf_regnets.py, gains/biases excluded
        params=params,  # 1000 classes (reference doc §6.2, derived, rounded)
    )


# timm `_nfreg_cfg` and `NfCfg` defaults; `NormFreeNet(drop_rate=0.,
# drop_path_rate=0.)`; N(0, 0.01) classifier (`zero_init_fc=False`).
_TIMM = dataclasses.replace(
    _DEEPMIND,
    convention="timm",
    reference=_REFERENCE + "; architecture of timm `timm/models/nfnet.py`",
    channel_divisor=8,  # `NfCfg.ch_div`
    gamma_in_act=False,
    same_padding=False,
    skipinit=False,
    drop_path_schedule="timm",
    classifier_initializer="normal",
    stochastic_depth_rate=0.0,
    timm_layout="timm_nf_regnet",
)


def _timm(variant, depths, widths, test_size, params, top1=None):
    # test_size: timm `test_input_size`; params: timm `sum(p.numel())` with
    # 1000 classes; top1: timm results/results-imagenet.csv at test_size
    # (reference doc §6.2).
    width = builder.make_divisible(widths[0] * 0.75)
    return dataclasses.replace(
        _TIMM,
        name=f"timm_nf_regnet_{variant.lower()}",
        constructor=f"TimmNFRegNet{variant}",
        title=f"timm NF-RegNet-{variant}",
        variant=variant,
        depths=depths,
        widths=widths,
        stem_widths=(width,),
        # timm: num_features = 1280 * C_last // 440, then x 0.75 rounded to 8.
        num_features=builder.make_divisible(0.75 * (_HEAD_WIDTH * widths[-1] // _HEAD_REFERENCE)),
        test_size=test_size,
        params=params,
        top1=top1,
        timm_name=f"nf_regnet_{variant.lower()}",
    )


# Rows: deepmind-research `base.py` `nf_regnet_params`; timm 1.0.31
# `model_cfgs` / `default_cfgs`.
ROWS = (
    _deepmind("B0", (48, 104, 208, 440), (1, 3, 6, 6), 192, 224, 0.2, 5e-5, 8_600_000),
    _deepmind("B1", (48, 104, 208, 440), (2, 4, 7, 7), 224, 256, 0.2, 6e-5, 10_020_000),
    _deepmind("B2", (56, 112, 232, 488), (2, 4, 8, 8), 240, 272, 0.3, 7e-5, 13_790_000),
    _deepmind("B3", (56, 128, 248, 528), (2, 5, 9, 9), 288, 320, 0.3, 8e-5, 18_140_000),
    _deepmind("B4", (64, 144, 288, 616), (2, 6, 11, 11), 320, 384, 0.4, 9e-5, 29_320_000),
    _deepmind("B5", (80, 168, 336, 704), (3, 7, 14, 14), 384, 456, 0.4, 1e-4, 48_710_000),
    # A test row: one block per stage.
    dataclasses.replace(
        _deepmind("tiny", (16, 32, 48, 64), (1, 1, 1, 1), 32, 32, 0.0, 5e-5, None),
        name="nf_regnet_tiny",
        constructor="NFRegNetTiny",
        public=False,
    ),
    _timm("B0", (1, 3, 6, 6), (48, 104, 208, 440), 256, 8_764_288),
    _timm("B1", (2, 4, 7, 7), (48, 104, 208, 440), 288, 10_223_984, top1=79.368),
    _timm("B2", (2, 4, 8, 8), (56, 112, 232, 488), 272, 14_314_608),
    _timm("B3", (2, 5, 9, 9), (56, 128, 248, 528), 320, 18_593_832),
    _timm("B4", (2, 6, 11, 11), (64, 144, 288, 616), 384, 30_210_816),
    _timm("B5", (3, 7, 14, 14), (80, 168, 336, 704), 456, 49_741_728),
)
