"""timm's NF-ResNet-26/50/101 and NF-RegNet-B0 ... B5 architectures.

timm (`timm/models/nfnet.py`, `NormFreeNet` with the `_nfres_cfg` /
`_nfreg_cfg` configs) publishes trained weights for `nf_resnet50`
(`ra2_in1k`) and `nf_regnet_b1` (`ra2_in1k`), but its networks are not
deepmind-research's (`nf_resnet.py` / `nf_regnet.py`, built by this
package's `NFResNet` / `NFRegNet`). Every difference below was read from
timm 1.0.31 and is checked numerically against it
(`tests/test_timm_variants.py`; reference doc §5, §6):

* the activation gain gamma is folded into every weight-standardised conv
  (stem, shortcut, final conv included: `ScaledStdConv2d(gamma=...)`) and
  the activations are plain (`NfCfg.gamma_in_act=False`);
* PyTorch symmetric padding ``((s - 1) + (k - 1)) // 2`` on every side
  (`timm/layers/padding.py` `get_padding`), not TF 'SAME' — different for
  strided convs on even inputs;
* NF-ResNet stem `7x7_pool`: 7x7/2 conv, then `MaxPool2d(3, 2, padding=1)`
  (implicit -inf padding); stage 0 has stride 1 (stem stride 4);
* shortcut `DownsampleAvg`: `AvgPool2d(2, 2, ceil_mode=True,
  count_include_pad=False)` then a 1x1 conv, on the pre-activated input,
  for NF-ResNet too (DeepMind's NF-ResNet uses a strided 1x1 conv);
* no scalar skip gain (`skipinit=False`): the last conv of each block has
  its gain initialised to 0 instead; the branch is ``alpha * r``;
* channels rounded with `make_divisible(c, 8)` (`NfCfg.ch_div`), SE hidden
  width `make_divisible(c * rd_ratio, 8, round_limit=0)`;
* NF-RegNet: SE on the middle width between conv1 and its activation
  (`attn`, rd_ratio 0.5), expansion from the block input width, final 1x1
  conv to `make_divisible(0.75 * (1280 * C_last // 440), 8)`;
* NF-ResNet: no final conv; the final activation is a plain ReLU;
* stochastic depth (off by default) is timm's `DropPath`: linear in the
  block index including the end point, kept samples divided by the keep
  probability; no dropout by default (`drop_rate=0`).
"""

import dataclasses
import re

import keras
from keras import layers
from keras import ops

from nfnet_keras import layers as nf_layers
from nfnet_keras.models import _common


@dataclasses.dataclass(frozen=True)
class TimmNFResNetVariant:
    depths: tuple  # bottleneck blocks per stage
    test_size: int  # timm `test_input_size` (else `input_size`), the default input size
    params: int  # timm `sum(p.numel())`, 1000 classes (timm 1.0.31)
    top1: float = None  # timm results/results-imagenet.csv at test_size (reference doc §6.1)
    channels: tuple = (256, 512, 1024, 2048)  # stage output widths, `_nfres_cfg`


@dataclasses.dataclass(frozen=True)
class TimmNFRegNetVariant:
    depths: tuple  # blocks per stage
    channels: tuple  # stage widths before the 0.75 width factor, `nf_regnet_b*` cfg
    test_size: int  # timm `test_input_size`, the default input size
    params: int  # timm `sum(p.numel())`, 1000 classes (timm 1.0.31)
    top1: float = None  # timm results/results-imagenet.csv at test_size (reference doc §6.2)


# Rows: timm 1.0.31 `timm/models/nfnet.py` `model_cfgs` and `default_cfgs`.
RESNET_VARIANTS = {
    "26": TimmNFResNetVariant((2, 2, 2, 2), 224, 15_995_176),
    "50": TimmNFResNetVariant((3, 4, 6, 3), 288, 25_557_032, top1=80.658),
    "101": TimmNFResNetVariant((3, 4, 23, 3), 224, 44_549_160),
}
REGNET_VARIANTS = {
    "B0": TimmNFRegNetVariant((1, 3, 6, 6), (48, 104, 208, 440), 256, 8_764_288),
    "B1": TimmNFRegNetVariant(
        (2, 4, 7, 7), (48, 104, 208, 440), 288, 10_223_984, top1=79.368
    ),
    "B2": TimmNFRegNetVariant((2, 4, 8, 8), (56, 112, 232, 488), 272, 14_314_608),
    "B3": TimmNFRegNetVariant((2, 5, 9, 9), (56, 128, 248, 528), 320, 18_593_832),
    "B4": TimmNFRegNetVariant((2, 6, 11, 11), (64, 144, 288, 616), 384, 30_210_816),
    "B5": TimmNFRegNetVariant((3, 7, 14, 14), (80, 168, 336, 704), 456, 49_741_728),
}

# timm `NfCfg` defaults and the `_nfres_cfg` / `_nfreg_cfg` settings:
CH_DIV = 8  # `NfCfg.ch_div`: every width rounded to a multiple of 8
RESNET_STEM_WIDTH = 64  # `_nfres_cfg` stem_chs
RESNET_BOTTLE_RATIO = 0.25  # mid width = 0.25 x block output width
REGNET_WIDTH_FACTOR = 0.75  # `_nfreg_cfg` width_factor
REGNET_BOTTLE_RATIO = 2.25  # mid width = 2.25 x block input width (1 for block 0)
REGNET_GROUP_SIZE = 8  # channels per group of the 3x3 convs
REGNET_SE_RATIO = 0.5  # SE `rd_ratio`, on the mid width
REGNET_HEAD_WIDTH = 1280  # num_features = 1280 * C_last // 440 (before width factor)
REGNET_HEAD_REFERENCE = 440
SE_GATE_GAIN = 2.0  # `NfCfg.attn_gain`
# `NormFreeNet(drop_rate=0., drop_path_rate=0.)` defaults.
DROPOUT_RATE = 0.0
STOCHASTIC_DEPTH_RATE = 0.0


def make_divisible(value, divisor=CH_DIV, round_limit=0.9):
    """timm `timm/layers/helpers.py` `make_divisible` (min value = divisor)."""
    new_value = max(divisor, int(value + divisor / 2) // divisor * divisor)
    if new_value < round_limit * value:  # never round down by more than 10 %
        new_value += divisor
    return new_value


def symmetric_padding(kernel_size, stride):
    """timm `timm/layers/padding.py` `get_padding` (dilation 1)."""
    return ((stride - 1) + (kernel_size - 1)) // 2


@keras.saving.register_keras_serializable(package=nf_layers.PACKAGE)
class SymmetricMaxPooling2D(keras.layers.Layer):
    """Max pooling with PyTorch's symmetric padding.

    ``torch.nn.MaxPool2d(pool_size, strides, padding)``: the input is padded
    with ``-inf`` on every side, so padded cells never win, then pooled
    without further padding (floor mode). Keras ``padding="same"`` pads
    only the bottom/right on even inputs and picks other windows.

    Example:
    >>> SymmetricMaxPooling2D(3, 2, 1)(np.zeros((1, 8, 8, 4))).shape
    (1, 4, 4, 4)
    """

    def __init__(self, pool_size=3, strides=2, padding=1, **kwargs):
        super().__init__(**kwargs)
        self.pool_size = int(pool_size)
        self.strides = int(strides)
        self.padding = int(padding)

    def call(self, inputs):
        p = self.padding
        x = ops.pad(
            inputs, [[0, 0], [p, p], [p, p], [0, 0]], constant_values=float("-inf")
        )
        return ops.max_pool(x, self.pool_size, self.strides, padding="valid")

    def compute_output_shape(self, input_shape):
        def size(n):
            if n is None:
                return None
            return (n + 2 * self.padding - self.pool_size) // self.strides + 1

        return (input_shape[0], size(input_shape[1]), size(input_shape[2]), input_shape[3])

    def get_config(self):
        config = super().get_config()
        config.update(
            {"pool_size": self.pool_size, "strides": self.strides, "padding": self.padding}
        )
        return config


class _Factory:
    """timm's conv and activation of one model: gamma in the conv, plain acts."""

    def __init__(self, activation, convention):
        self.activation = nf_layers.canonical_activation(activation)
        # `NormFreeNet`: `conv_layer = partial(ScaledStdConv2d, gamma=_nonlin_gamma[act])`.
        self.gamma = nf_layers.GAMMA[self.activation]
        self.convention = convention

    def conv(self, filters, kernel_size, name, strides=1, groups=1, gain="ones"):
        def apply(x):
            padding = symmetric_padding(kernel_size, strides)
            if strides > 1 and padding:
                # Symmetric zero padding, then a 'valid' conv (timm
                # `get_padding`); stride-1 odd kernels use 'same', which
                # pads (k - 1) / 2 on both sides as well.
                x = layers.ZeroPadding2D(padding, name=name + "_pad")(x)
            return nf_layers.ScaledStdConv2D(
                filters,
                kernel_size,
                strides=strides,
                groups=groups,
                padding="valid" if strides > 1 else "same",
                convention=self.convention,
                gamma=self.gamma,
                gain_initializer=gain,
                name=name,
            )(x)

        return apply

    def act(self, name, beta=1.0):
        return nf_layers.GammaAct(
            self.activation, gamma=1.0, beta=beta, convention=self.convention, name=name
        )


def _schedule(depths, alpha, rate):
    """(stage, block, beta, drop rate) per block, timm `NormFreeNet` order.

    beta = expected_var**-0.5, expected_var reset to 1 after the first block
    of each stage, then += alpha**2 (the DeepMind schedule, reference doc
    §3.4); drop rates `calculate_drop_path_rates`: linspace(0, rate, N).
    """
    total = sum(depths)
    out = []
    expected_var = 1.0
    index = 0
    for stage, depth in enumerate(depths):
        for block in range(depth):
            drop = rate * index / (total - 1) if total > 1 else 0.0
            out.append((stage, block, expected_var**-0.5, drop))
            index += 1
            if block == 0:
                expected_var = 1.0
            expected_var += alpha**2
    return out


def _block(
    x,
    factory,
    prefix,
    *,
    out_channels,
    mid_channels,
    groups,
    stride,
    beta,
    drop_rate,
    se_hidden=None,
):
    """timm `NormFreeBlock` (skipinit off; SE only in the middle, `reg=True`)."""
    in_channels = x.shape[-1]
    h = factory.act(prefix + "preact", beta=beta)(x)
    if stride > 1 or in_channels != out_channels:
        s = h
        if stride > 1:
            # AvgPool2d(2, 2, ceil_mode=True, count_include_pad=False) = Keras
            # 'same' pooling, divided by the valid count (reference doc §3.7).
            s = layers.AveragePooling2D(2, 2, padding="same", name=prefix + "shortcut_pool")(s)
        s = factory.conv(out_channels, 1, prefix + "shortcut_conv")(s)
    else:
        s = x
    r = factory.conv(mid_channels, 1, prefix + "conv0")(h)
    r = factory.act(prefix + "act0")(r)
    r = factory.conv(mid_channels, 3, prefix + "conv1", strides=stride, groups=groups)(r)
    if se_hidden:
        r = nf_layers.SqueezeExcite(se_hidden, gate_gain=SE_GATE_GAIN, name=prefix + "se")(r)
    r = factory.act(prefix + "act1")(r)
    # skipinit=False: conv3's gain starts at 0 (`gain_init=0.`), no scalar gain.
    r = factory.conv(out_channels, 1, prefix + "conv2", gain="zeros")(r)
    if drop_rate > 0.0:
        r = nf_layers.StochasticDepth(drop_rate, scale_by_keep=True, name=prefix + "drop_path")(r)
    r = layers.Rescaling(_common.ALPHA, name=prefix + "alpha")(r)
    return layers.Add(name=prefix + "add")([r, s])


def _start(variant, rows, arguments):
    row = _common.check_variant(variant, rows)
    return (row,) + _common.begin(
        arguments,
        default_size=row.test_size,
        default_dropout=DROPOUT_RATE,
        default_stochastic_depth=STOCHASTIC_DEPTH_RATE,
    )


def _end(x, inputs, name, variant, dropout_rate, arguments):
    return _common.end(
        x,
        inputs,
        arguments,
        name=name,
        variant=variant,
        dropout_rate=dropout_rate,
        # `NormFreeNet`: fc weight N(0, 0.01), bias 0 (`zero_init_fc=False`).
        classifier_initializer=keras.initializers.RandomNormal(stddev=0.01),
    )


def TimmNFResNet(
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
    activation="relu",
    dropout_rate=None,
    stochastic_depth_rate=None,
    convention="timm",
    agc_clipping=0.01,
):
    """Builds timm's `nf_resnet{variant}` ("26", "50", "101")."""
    arguments = dict(locals())
    row, inputs, x, dropout_rate, rate = _start(variant, RESNET_VARIANTS, arguments)
    model_name = f"timm_nf_resnet{variant}"
    factory = _Factory(activation, convention)

    # Stem `7x7_pool`: 7x7/2 conv (padding 3), MaxPool2d(3, 2, padding=1).
    x = factory.conv(make_divisible(RESNET_STEM_WIDTH), 7, "stem_conv0", strides=2)(x)
    x = SymmetricMaxPooling2D(3, 2, 1, name="stem_pool")(x)

    for stage, block, beta, drop in _schedule(row.depths, _common.ALPHA, rate):
        out_channels = make_divisible(row.channels[stage])
        x = _block(
            x,
            factory,
            f"stage{stage}_block{block}_",
            out_channels=out_channels,
            mid_channels=make_divisible(out_channels * RESNET_BOTTLE_RATIO),
            groups=1,
            # Stem stride 4 > 2: stage 0 keeps the resolution.
            stride=(1 if stage == 0 else 2) if block == 0 else 1,
            beta=beta,
            drop_rate=drop,
        )
    x = factory.act("final_act")(x)  # no final conv (`num_features=0`)
    return _end(x, inputs, name or model_name, model_name, dropout_rate, arguments)


def TimmNFRegNet(
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
    convention="timm",
    agc_clipping=0.01,
):
    """Builds timm's `nf_regnet_{variant}` ("B0" ... "B5")."""
    arguments = dict(locals())
    row, inputs, x, dropout_rate, rate = _start(variant, REGNET_VARIANTS, arguments)
    model_name = f"timm_nf_regnet_{variant.lower()}"
    factory = _Factory(activation, convention)
    widths = [make_divisible(c * REGNET_WIDTH_FACTOR) for c in row.channels]

    # Stem `3x3`: one 3x3/2 conv (padding 1), no activation.
    x = factory.conv(widths[0], 3, "stem_conv0", strides=2)(x)

    in_channels = widths[0]
    for index, (stage, block, beta, drop) in enumerate(
        _schedule(row.depths, _common.ALPHA, rate)
    ):
        ratio = 1.0 if index == 0 else REGNET_BOTTLE_RATIO
        groups = make_divisible(in_channels * ratio) // REGNET_GROUP_SIZE
        mid = REGNET_GROUP_SIZE * groups
        x = _block(
            x,
            factory,
            f"stage{stage}_block{block}_",
            out_channels=widths[stage],
            mid_channels=mid,
            groups=groups,
            stride=2 if block == 0 else 1,  # stem stride 2: every stage downsamples
            beta=beta,
            drop_rate=drop,
            # timm `SEModule`: rd = make_divisible(C * rd_ratio, 8, round_limit=0).
            se_hidden=make_divisible(mid * REGNET_SE_RATIO, round_limit=0.0),
        )
        in_channels = widths[stage]

    head_width = REGNET_HEAD_WIDTH * row.channels[-1] // REGNET_HEAD_REFERENCE
    x = factory.conv(make_divisible(REGNET_WIDTH_FACTOR * head_width), 1, "final_conv")(x)
    x = factory.act("final_act")(x)
    return _end(x, inputs, name or model_name, model_name, dropout_rate, arguments)


_CONVENTION_DOC = re.compile(r"    convention: .*?(?=\n    agc_clipping:)", re.S)


def _constructor(builder, variant, public_name, model_name, title, row, timm_name):
    published = f"timm `{timm_name}`, {row.params / 1e6:.2f}M parameters"
    if row.top1 is not None:
        published += (
            f"; timm-trained `{timm_name}.ra2_in1k` weights, {row.top1} top-1 "
            f"at {row.test_size}px"
        )
    constructor = _common.make_constructor(
        builder,
        variant,
        public_name,
        model_name,
        dict(
            title=f"timm {title}",
            reference="[Characterizing signal propagation to close the performance "
            "gap in unnormalized ResNets](https://arxiv.org/abs/2101.08692) (ICLR 2021); "
            "architecture of timm `timm/models/nfnet.py`",
            published=published,
            default_size=row.test_size,
            dropout=DROPOUT_RATE,
            stochastic_depth=STOCHASTIC_DEPTH_RATE,
        ),
    )
    constructor.__doc__ = _CONVENTION_DOC.sub(
        '    convention: `"timm"` (default; plain activations, timm\'s weight\n'
        "        standardisation, gamma folded into every conv — the conventions\n"
        '        timm trained these weights with) or `"deepmind"` (DeepMind\'s\n'
        "        standardisation formula).",
        constructor.__doc__,
    )
    constructor.__doc__ = constructor.__doc__.replace(
        "by alpha and a learned skip gain", "by alpha (the last conv's gain starts at 0)"
    ).replace("DeepMind schedule", "timm's `DropPath` schedule")
    return constructor


def _resnet(variant):
    return _constructor(
        TimmNFResNet,
        variant,
        f"TimmNFResNet{variant}",
        f"timm_nf_resnet{variant}",
        f"NF-ResNet-{variant}",
        RESNET_VARIANTS[variant],
        f"nf_resnet{variant}",
    )


def _regnet(variant):
    return _constructor(
        TimmNFRegNet,
        variant,
        f"TimmNFRegNet{variant}",
        f"timm_nf_regnet_{variant.lower()}",
        f"NF-RegNet-{variant}",
        REGNET_VARIANTS[variant],
        f"nf_regnet_{variant.lower()}",
    )


TimmNFResNet26 = _resnet("26")
TimmNFResNet50 = _resnet("50")
TimmNFResNet101 = _resnet("101")
TimmNFRegNetB0 = _regnet("B0")
TimmNFRegNetB1 = _regnet("B1")
TimmNFRegNetB2 = _regnet("B2")
TimmNFRegNetB3 = _regnet("B3")
TimmNFRegNetB4 = _regnet("B4")
TimmNFRegNetB5 = _regnet("B5")
