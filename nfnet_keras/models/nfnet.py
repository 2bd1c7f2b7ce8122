"""NFNet-F0 ... F7 (Brock, De, Smith, Simonyan 2021, arXiv:2102.06171).

Architecture of deepmind-research `nfnets/nfnet.py` (reference doc §2-§3).
"""

import dataclasses

import keras

from nfnet_keras.models import _common


@dataclasses.dataclass(frozen=True)
class NFNetVariant:
    depths: tuple  # blocks per stage
    train_size: int  # training resolution (px)
    test_size: int  # evaluation resolution (px), the default input size
    dropout_rate: float  # dropout before the classifier
    randaugment: str  # DeepMind augment suffix: layers x magnitude
    params: int  # parameter count with a 1000-class head (reference doc §2)
    flops: float  # MACs at test resolution, README (derived for F7)
    top1: float  # ImageNet top-1 %, DeepMind README (None: unpublished)
    widths: tuple = (256, 512, 1536, 1536)  # stage output widths
    stem_widths: tuple = (16, 32, 64)  # stem convs 0-2; conv3 = widths[0] // 2


# Rows: deepmind-research `nfnets/base.py` `nfnet_params` and README;
# params derived from the code's layer shapes (reference doc §2).
VARIANTS = {
    "F0": NFNetVariant((1, 2, 6, 3), 192, 256, 0.2, "405", 71_489_284, 12.38e9, 83.6),
    "F1": NFNetVariant((2, 4, 12, 6), 224, 320, 0.3, "410", 132_634_256, 35.54e9, 84.7),
    "F2": NFNetVariant((3, 6, 18, 9), 256, 352, 0.4, "410", 193_779_228, 62.59e9, 85.1),
    "F3": NFNetVariant((4, 8, 24, 12), 320, 416, 0.4, "415", 254_924_200, 114.76e9, 85.7),
    "F4": NFNetVariant((5, 10, 30, 15), 384, 512, 0.5, "415", 316_069_172, 215.24e9, 85.9),
    "F5": NFNetVariant((6, 12, 36, 18), 416, 544, 0.5, "415", 377_214_144, 289.76e9, 86.0),
    "F6": NFNetVariant((7, 14, 42, 21), 448, 576, 0.5, "415", 438_359_116, 377.28e9, 86.5),
    "F7": NFNetVariant((8, 16, 48, 24), 480, 608, 0.5, "415", 499_504_088, 478.78e9, None),
    # A test row (in the spirit of timm's `test_nfnet`): one block per stage,
    # narrow; grouped 3x3 convs from stage 1 on.
    "tiny": NFNetVariant(
        (1, 1, 1, 1), 32, 32, 0.0, "405", None, None, None,
        widths=(16, 32, 64, 64), stem_widths=(8, 8, 8),
    ),
}

# NFNet constants (deepmind-research `nfnet.py` NFNet/NFBlock defaults and
# `experiment_nfnets.py`; reference doc §2):
EXPANSION = 0.5  # bottleneck width = 0.5 x block output width
GROUP_WIDTH = 128  # channels per group of the 3x3 convs
SE_RATIO = 0.5  # SE hidden = 0.5 x block output width
FINAL_CONV_MULT = 2  # final 1x1 conv to 2 x last width (3072)
STOCHASTIC_DEPTH_RATE = 0.25  # training config value (class default 0.1)
TINY_GROUP_WIDTH = 8  # the tiny row's group width (groups 1, 2, 4, 4)


def NFNet(
    variant,
    include_top=True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name=None,
    include_preprocessing=False,
    dropout_rate=None,
    stochastic_depth_rate=None,
    convention="deepmind",
    agc_clipping=0.01,
):
    """Builds an NFNet from its row name ("F0" ... "F7", "tiny")."""
    arguments = dict(locals())
    row = _common.check_variant(variant, VARIANTS)
    inputs, x, dropout_rate, stochastic_depth_rate = _common.begin(
        arguments,
        default_size=row.test_size,
        default_dropout=row.dropout_rate,
        default_stochastic_depth=STOCHASTIC_DEPTH_RATE,
    )
    group_width = TINY_GROUP_WIDTH if variant == "tiny" else GROUP_WIDTH
    factory = _common.Factory("gelu", convention)

    # Stem: three gamma-GELU 3x3 convs (strides 2, 1, 1), then a stride-2
    # conv to widths[0] // 2 with no activation (§3.2).
    for i, (width, stride) in enumerate(zip(row.stem_widths, (2, 1, 1))):
        x = factory.conv(width, 3, f"stem_conv{i}", strides=stride)(x)
        x = factory.act(f"stem_act{i}")(x)
    x = factory.conv(row.widths[0] // 2, 3, "stem_conv3", strides=2)(x)

    # Stages (§3.3, §3.4).
    strides = (1, 2, 2, 2)
    schedule = _common.block_schedule(row.depths, _common.ALPHA, stochastic_depth_rate)
    for stage, block, beta, rate in schedule:
        out_channels = row.widths[stage]
        mid = int(out_channels * EXPANSION)
        groups = mid // group_width
        x = _common.nf_block(
            x,
            factory,
            f"stage{stage}_block{block}_",
            out_channels=out_channels,
            mid_channels=group_width * groups,
            groups=groups,
            stride=strides[stage] if block == 0 else 1,
            beta=beta,
            stochastic_depth_rate=rate,
            se_hidden=max(1, int(out_channels * SE_RATIO)),
            se_position="out",
            extra_conv=True,
            shortcut="avgpool",
        )

    # Head: final conv, gamma-GELU, pool, dropout, classifier (§3.6).
    x = factory.conv(row.widths[-1] * FINAL_CONV_MULT, 1, "final_conv")(x)
    x = factory.act("final_act")(x)
    return _common.end(
        x,
        inputs,
        arguments,
        name=name or f"nfnet_{variant.lower()}",
        variant=f"nfnet_{variant.lower()}",
        dropout_rate=dropout_rate,
        # N(0, 0.01) classifier init, deepmind-research `nfnet.py` (§3.10).
        classifier_initializer=keras.initializers.RandomNormal(stddev=0.01),
    )


def _constructor(variant):
    row = VARIANTS[variant]
    return _common.make_constructor(
        NFNet,
        variant,
        f"NFNet{variant}",
        f"nfnet_{variant.lower()}",
        dict(
            title=f"NFNet-{variant}",
            reference="[High-Performance Large-Scale Image Recognition Without "
            "Normalization](https://arxiv.org/abs/2102.06171) (ICML 2021)",
            published=(
                f"{row.params:,} parameters, {row.flops / 1e9:.2f} GMACs at "
                f"{row.test_size}px, ImageNet top-1 "
                + (f"{row.top1}%" if row.top1 else "not published")
            ),
            default_size=row.test_size,
            dropout=row.dropout_rate,
            stochastic_depth=STOCHASTIC_DEPTH_RATE,
        ),
    )


NFNetF0 = _constructor("F0")
NFNetF1 = _constructor("F1")
NFNetF2 = _constructor("F2")
NFNetF3 = _constructor("F3")
NFNetF4 = _constructor("F4")
NFNetF5 = _constructor("F5")
NFNetF6 = _constructor("F6")
NFNetF7 = _constructor("F7")
