"""NF-RegNet-B0 ... B5 (Brock, De, Smith 2021, arXiv:2101.08692).

EfficientNet-like inverted bottlenecks with grouped 3x3 convs, architecture
of deepmind-research `nfnets/nf_regnet.py` with the configs of
`nfnets/base.py` `nf_regnet_params` (reference doc §6.2).
"""

import dataclasses

from nfnet_keras.models import _common


@dataclasses.dataclass(frozen=True)
class NFRegNetVariant:
    widths: tuple  # stage widths before the 0.75 width multiplier
    depths: tuple  # blocks per stage
    train_size: int  # training resolution (px)
    test_size: int  # evaluation resolution (px), the default input size
    dropout_rate: float  # dropout before the classifier
    weight_decay: float  # experiment_nf_regnets.py, gains/biases excluded
    params: int  # parameters, 1000 classes (reference doc §6.2, derived, rounded)


VARIANTS = {
    "B0": NFRegNetVariant((48, 104, 208, 440), (1, 3, 6, 6), 192, 224, 0.2, 5e-5, 8_600_000),
    "B1": NFRegNetVariant((48, 104, 208, 440), (2, 4, 7, 7), 224, 256, 0.2, 6e-5, 10_020_000),
    "B2": NFRegNetVariant((56, 112, 232, 488), (2, 4, 8, 8), 240, 272, 0.3, 7e-5, 13_790_000),
    "B3": NFRegNetVariant((56, 128, 248, 528), (2, 5, 9, 9), 288, 320, 0.3, 8e-5, 18_140_000),
    "B4": NFRegNetVariant((64, 144, 288, 616), (2, 6, 11, 11), 320, 384, 0.4, 9e-5, 29_320_000),
    "B5": NFRegNetVariant((80, 168, 336, 704), (3, 7, 14, 14), 384, 456, 0.4, 1e-4, 48_710_000),
    # A test row: one block per stage.
    "tiny": NFRegNetVariant((16, 32, 48, 64), (1, 1, 1, 1), 32, 32, 0.0, 5e-5, None),
}

# NF-RegNet constants (deepmind-research `nf_regnet.py` defaults and
# `experiment_nf_regnets.py`; reference doc §6.2):
WIDTH_MULT = 0.75  # width multiplier, int() truncation
EXPANSION = 2.25  # mid width = 2.25 x block input width (1 for block 0)
GROUP_WIDTH = 8  # channels per group of the 3x3 convs
SE_RATIO = 0.5  # SE (on the mid width) hidden = 0.5 x mid width
HEAD_WIDTH = 1280  # final conv width = 1280 * C_last // 440 (EfficientNet-like)
HEAD_REFERENCE = 440  # the B0 last stage width that maps to 1280
STOCHASTIC_DEPTH_RATE = 0.1  # NF_RegNet default


def NFRegNet(
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
    activation="silu",
    dropout_rate=None,
    stochastic_depth_rate=None,
    convention="deepmind",
    agc_clipping=0.01,
):
    """Builds an NF-RegNet from its row name ("B0" ... "B5", "tiny")."""
    arguments = dict(locals())
    row = _common.check_variant(variant, VARIANTS)
    inputs, x, dropout_rate, stochastic_depth_rate = _common.begin(
        arguments,
        default_size=row.test_size,
        default_dropout=row.dropout_rate,
        default_stochastic_depth=STOCHASTIC_DEPTH_RATE,
    )
    factory = _common.Factory(activation, convention)
    widths = [int(w * WIDTH_MULT) for w in row.widths]

    # Stem: one 3x3/2 WS conv to the first stage width, no activation.
    x = factory.conv(widths[0], 3, "stem_conv0", strides=2)(x)

    in_channels = widths[0]
    schedule = _common.block_schedule(row.depths, _common.ALPHA, stochastic_depth_rate)
    for index, (stage, block, beta, rate) in enumerate(schedule):
        expansion = 1 if index == 0 else EXPANSION
        groups = int(in_channels * expansion) // GROUP_WIDTH
        mid = GROUP_WIDTH * groups
        x = _common.nf_block(
            x,
            factory,
            f"stage{stage}_block{block}_",
            out_channels=widths[stage],
            mid_channels=mid,
            groups=groups,
            stride=2 if block == 0 else 1,  # every stage downsamples
            beta=beta,
            stochastic_depth_rate=rate,
            se_hidden=max(1, int(mid * SE_RATIO)),
            se_position="mid",
            shortcut="avgpool",
        )
        in_channels = widths[stage]

    x = factory.conv(HEAD_WIDTH * in_channels // HEAD_REFERENCE, 1, "final_conv")(x)
    x = factory.act("final_act")(x)
    return _common.end(
        x,
        inputs,
        arguments,
        name=name or f"nf_regnet_{variant.lower()}",
        variant=f"nf_regnet_{variant.lower()}",
        dropout_rate=dropout_rate,
        # Zero-initialised classifier, deepmind-research `nf_regnet.py` (§6.2).
        classifier_initializer="zeros",
    )


def _constructor(variant):
    row = VARIANTS[variant]
    return _common.make_constructor(
        NFRegNet,
        variant,
        f"NFRegNet{variant}",
        f"nf_regnet_{variant.lower()}",
        dict(
            title=f"NF-RegNet-{variant}",
            reference="[Characterizing signal propagation to close the performance "
            "gap in unnormalized ResNets](https://arxiv.org/abs/2101.08692) (ICLR 2021)",
            published=f"about {row.params / 1e6:.2f}M parameters, "
            f"{row.train_size}px train / {row.test_size}px test",
            default_size=row.test_size,
            dropout=row.dropout_rate,
            stochastic_depth=STOCHASTIC_DEPTH_RATE,
        ),
    )


NFRegNetB0 = _constructor("B0")
NFRegNetB1 = _constructor("B1")
NFRegNetB2 = _constructor("B2")
NFRegNetB3 = _constructor("B3")
NFRegNetB4 = _constructor("B4")
NFRegNetB5 = _constructor("B5")
