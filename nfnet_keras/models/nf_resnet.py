"""NF-ResNet-26 ... 200 (Brock, De, Smith 2021, arXiv:2101.08692).

Pre-activation bottleneck ResNets without normalisation, architecture of
deepmind-research `nfnets/nf_resnet.py` (reference doc §6.1).
"""

import dataclasses

import keras
from keras import layers

from nfnet_keras.models import _common


@dataclasses.dataclass(frozen=True)
class NFResNetVariant:
    depths: tuple  # bottleneck blocks per stage
    params: int  # parameters with a 1000-class head, no SE (reference doc §6.1, derived, rounded)
    params_se: int  # the same with SE (ratio 0.25)
    widths: tuple = (256, 512, 1024, 2048)  # stage output widths = 4 x (64, 128, 256, 512)
    stem_width: int = 64  # int(16 * width), width 4


# Rows: deepmind-research `nf_resnet.py` `variant_dict` (26: timm's
# `nf_resnet26` depths). Counts from the reference doc §6.1 (2 decimals).
VARIANTS = {
    "26": NFResNetVariant((2, 2, 2, 2), None, None),
    "50": NFResNetVariant((3, 4, 6, 3), 25_560_000, 35_640_000),
    "101": NFResNetVariant((3, 4, 23, 3), 44_550_000, 63_560_000),
    "152": NFResNetVariant((3, 8, 36, 3), 60_190_000, 86_570_000),
    "200": NFResNetVariant((3, 24, 36, 3), 64_670_000, 93_150_000),
    # A narrow test row: one block per stage.
    "tiny": NFResNetVariant((1, 1, 1, 1), None, None, widths=(16, 32, 64, 128), stem_width=8),
}

# NF-ResNet constants (deepmind-research `nf_resnet.py` defaults; reference
# doc §6.1):
BOTTLENECK = 0.25  # bottleneck width = 0.25 x block output width
SE_RATIO = 0.25  # SE hidden = 0.25 x block output width (when use_se)
STOCHASTIC_DEPTH_RATE = 0.1  # NF_ResNet default
# No dropout rate is published for NF-ResNets (`variant_dict` has none).
DROPOUT_RATE = 0.0
TRAIN_SIZE, TEST_SIZE = 224, 224  # standard ResNet ImageNet resolution


def NFResNet(
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
    use_se=False,
    activation="relu",
    dropout_rate=None,
    stochastic_depth_rate=None,
    convention="deepmind",
    agc_clipping=0.01,
):
    """Builds an NF-ResNet from its row name ("26", "50", ..., "tiny")."""
    arguments = dict(locals())
    row = _common.check_variant(variant, VARIANTS)
    inputs, x, dropout_rate, stochastic_depth_rate = _common.begin(
        arguments,
        default_size=TEST_SIZE,
        default_dropout=DROPOUT_RATE,
        default_stochastic_depth=STOCHASTIC_DEPTH_RATE,
    )
    factory = _common.Factory(activation, convention)

    # Stem: 7x7/2 WS conv (with bias), 3x3/2 SAME max pool, no activation.
    x = factory.conv(row.stem_width, 7, "stem_conv0", strides=2)(x)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)

    strides = (1, 2, 2, 2)
    schedule = _common.block_schedule(row.depths, _common.ALPHA, stochastic_depth_rate)
    for stage, block, beta, rate in schedule:
        out_channels = row.widths[stage]
        x = _common.nf_block(
            x,
            factory,
            f"stage{stage}_block{block}_",
            out_channels=out_channels,
            mid_channels=int(out_channels * BOTTLENECK),
            groups=1,
            stride=strides[stage] if block == 0 else 1,
            beta=beta,
            stochastic_depth_rate=rate,
            se_hidden=max(1, int(out_channels * SE_RATIO)) if use_se else None,
            se_position="out",
            shortcut="conv",  # strided 1x1 WS conv, no pooling (§6.1)
        )

    # Head: activation, pool, dropout, classifier; no final conv (§6.1).
    x = factory.act("final_act")(x)
    return _common.end(
        x,
        inputs,
        arguments,
        name=name or f"nf_resnet{variant}",
        variant=f"nf_resnet{variant}",
        dropout_rate=dropout_rate,
        # N(0, 0.01) classifier init, deepmind-research `nf_resnet.py`.
        classifier_initializer=keras.initializers.RandomNormal(stddev=0.01),
    )


def _constructor(variant):
    row = VARIANTS[variant]
    return _common.make_constructor(
        NFResNet,
        variant,
        f"NFResNet{variant}",
        f"nf_resnet{variant}",
        dict(
            title=f"NF-ResNet-{variant}",
            reference="[Characterizing signal propagation to close the performance "
            "gap in unnormalized ResNets](https://arxiv.org/abs/2101.08692) (ICLR 2021)",
            published=(
                f"about {row.params / 1e6:.2f}M parameters "
                f"({row.params_se / 1e6:.2f}M with `use_se=True`)"
                if row.params
                else "no published configuration (timm depths)"
            ),
            default_size=TEST_SIZE,
            dropout=DROPOUT_RATE,
            stochastic_depth=STOCHASTIC_DEPTH_RATE,
        ),
    )


NFResNet26 = _constructor("26")
NFResNet50 = _constructor("50")
NFResNet101 = _constructor("101")
NFResNet152 = _constructor("152")
NFResNet200 = _constructor("200")
