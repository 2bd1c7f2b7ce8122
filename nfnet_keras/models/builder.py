"""One schema for every NF architecture, one NF block, one builder.

Each architecture is an `Architecture` row. DeepMind's and timm's NF networks
differ in a handful of choices (skip gain, where the activation gain sits,
padding, drop-path schedule, channel rounding, attention); like timm's
`NfCfg` (`timm/models/nfnet.py`), these are fields of the row, and one block
and one builder serve both conventions (reference doc §3, §5, §6).

The builder's phases: validate the keras.applications arguments, make the
input, (optionally) normalise, stem, stages of NF blocks, final conv, head,
wrap in the AGC-training model, load weights.
"""

import dataclasses
import inspect
import math

import keras
from keras import layers
from keras import ops
from keras.src.applications import imagenet_utils as keras_imagenet_utils
from keras.src.ops import operation_utils

from nfnet_keras import layers as nf_layers
from nfnet_keras.imagenet_utils import IMAGENET_MEAN, IMAGENET_STD

# Residual branch scale alpha of every NF model (reference doc §3.4;
# deepmind-research `nfnet.py`, `nf_resnet.py`, `nf_regnet.py` and timm
# `NfCfg.alpha` default 0.2).
ALPHA = 0.2
# The smallest input side (keras.applications `obtain_input_shape` min_size):
# five stride-2 stages leave a 1x1 map at 32 px.
MIN_SIZE = 32
STEMS = ("deep_quad", "7x7_pool", "3x3")
ATTENTIONS = (None, "se", "eca")
SHORTCUTS = ("avgpool", "conv")
DROP_PATH_SCHEDULES = ("deepmind", "timm")
CLASSIFIER_INITIALIZERS = {
    # N(0, 0.01): deepmind-research `nfnet.py` / `nf_resnet.py` and timm
    # `NormFreeNet` (`zero_init_fc=False`) (reference doc §3.10).
    "normal": lambda: keras.initializers.RandomNormal(stddev=0.01),
    # Zero-initialised classifier: deepmind-research `nf_regnet.py` (§6.2).
    "zeros": lambda: "zeros",
}


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One NF architecture: its name, its structure and its published facts.

    Field names follow timm's `NfCfg` where one exists.
    """

    # -- identity ---------------------------------------------------------
    name: str  # registry name, e.g. "nfnet_f0"; the model's default name
    constructor: str  # public constructor, e.g. "NFNetF0"
    title: str  # human-readable name, e.g. "NFNet-F0"
    family: str  # "nfnet", "nf_resnet" or "nf_regnet"
    variant: str  # the family builder's row key, e.g. "F0", "50", "B1", "tiny"
    convention: str  # "deepmind" or "timm": whose network this is, and the default numerics
    reference: str  # the paper
    # -- stages -----------------------------------------------------------
    depths: tuple  # blocks per stage
    widths: tuple  # stage output widths, before `width_factor`
    strides: tuple  # stride of the first block of each stage
    # -- stem -------------------------------------------------------------
    stem: str  # "deep_quad" (3x3 convs, NFNet), "7x7_pool" (ResNet), "3x3" (RegNet)
    stem_widths: tuple  # output width of each stem conv
    # -- block ------------------------------------------------------------
    bottleneck_ratio: float  # middle width = ratio x block output (or input) width
    activation: str  # activation of every block (gamma table name)
    inverted_bottleneck: bool = False  # timm `reg`: middle width from the block input width,
    #   ratio 1 for the network's first block, attention on the middle width
    group_width: int = None  # channels per group of the 3x3 convs; None: not grouped
    extra_conv: bool = False  # a second grouped 3x3 conv (NFNet `conv1b`)
    attention: str = None  # channel attention: None, "se" or "eca" (Efficient Channel Attention)
    attention_ratio: float = 0.0  # SE hidden width = ratio x its input width
    shortcut: str = "avgpool"  # projection: "avgpool" (2x2 pool, 1x1 conv) or "conv" (strided 1x1)
    width_factor: float = 1.0  # multiplier of `widths`
    channel_divisor: int = None  # None: widths truncated with int() (DeepMind);
    #   8: timm's `make_divisible` rounding (`NfCfg.ch_div`)
    # -- conventions (timm `NfCfg` flags) ----------------------------------
    gamma_in_act: bool = True  # gamma in the activations (DeepMind) or folded into the convs (timm)
    same_padding: bool = True  # TF 'SAME' (DeepMind) or PyTorch symmetric padding (timm)
    skipinit: bool = True  # learned scalar skip gain (SkipInit) or zero-initialised last conv gain
    drop_path_schedule: str = "deepmind"  # "deepmind": rate * i / N, unscaled;
    #   "timm": linspace(0, rate, N), kept samples divided by the keep probability
    # -- head -------------------------------------------------------------
    num_features: int = None  # width of the final 1x1 conv; None: no final conv
    classifier_initializer: str = "normal"  # key of CLASSIFIER_INITIALIZERS
    # -- checkpoint layouts: which converters map files onto this network --
    haiku_layout: bool = False  # DeepMind's Haiku tree of `nfnets/nfnet.py` (`convert.haiku`)
    timm_layout: str = None  # key of `convert.timm.RULES` naming timm's tensors for this network
    timm_name: str = None  # timm's model of the same network (the test oracle, benchmarks)
    # -- defaults and published facts --------------------------------------
    train_size: int = 224  # training resolution (px)
    test_size: int = 224  # evaluation resolution (px), the default input size
    dropout_rate: float = 0.0  # dropout before the classifier
    stochastic_depth_rate: float = 0.0  # largest per-block drop probability
    params: int = None  # parameters with a 1000-class head (None: not published)
    params_se: int = None  # the same with SE switched on (NF-ResNet `use_se`)
    flops: float = None  # multiply-adds at the test resolution
    top1: float = None  # published ImageNet top-1 (%) of the architecture
    # -- training recipe fields (read by `training.configs`) ---------------
    randaugment: str = None  # DeepMind augment suffix: layers x magnitude ("405")
    weight_decay: float = None  # recipe weight decay, where the row sets its own
    public: bool = True  # False for test rows: hidden from `list_models()`

    @property
    def stage_widths(self):
        """The widths of the stages after the width factor and rounding."""
        return tuple(self.round_channels(w * self.width_factor) for w in self.widths)

    def round_channels(self, value, round_limit=0.9):
        """A width as the row rounds it (int(), or timm's `make_divisible`)."""
        if self.channel_divisor is None:
            return int(value)
        return make_divisible(value, self.channel_divisor, round_limit)

    @property
    def pooled_features(self):
        """Width of the pooled feature vector (`include_top=False, pooling="avg"`)."""
        return self.num_features or self.stage_widths[-1]


def make_divisible(value, divisor=8, round_limit=0.9):
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


BASE_DOCSTRING = """Instantiates the {title} architecture.

Reference:
- {reference}

Normalizer-Free networks have no normalisation layers: every convolution
standardises its kernel (`ScaledStdConv2D`), every residual block scales its
input by a constant beta and its branch by alpha{skip_note}, and `model.fit`
clips gradients adaptively (AGC, on by default, classifier head excluded).

Published: {published}.
Pooled feature width (`include_top=False, pooling="avg"`): {features}.
Feature pyramid (`model.pyramid_outputs`, strides 2, 4, 8, 16, 32):
{pyramid}.

Args:
    include_top: whether to include the classification head (final dense
        layer named `predictions`). Default `True`.
    weights: `None` (random initialisation), `"imagenet"` (pre-training on
        ImageNet; {pretrained}), or the path or URL of a weights file
        (Keras `.weights.h5`, DeepMind `.npz`, timm `.pth`/`.safetensors`).
        Default `"imagenet"`.
    input_tensor: optional Keras tensor (output of `keras.Input()`) to use as
        the image input of the model.
    input_shape: optional shape tuple `(height, width, 3)`, only to be
        specified if `include_top` is `False` (otherwise the default is
        `({default_size}, {default_size}, 3)`, the variant's test resolution).
        Height and width must be at least 32.
    pooling: optional pooling mode when `include_top` is `False`: `None`
        (4D output of the last block), `"avg"` or `"max"` (2D output).
    classes: number of classes, only if `include_top` is `True` and no
        `weights` are given. Default 1000.
    classifier_activation: a `str` or callable, the activation of the top
        layer; ignored unless `include_top=True`. `None` returns logits.
        Default `"softmax"`. The output is float32 under mixed precision.
    name: the model's name. Default `"{name}"`.
    include_preprocessing: if `True` (default), the model takes RGB images
        with pixels in [0, 255] and normalises them itself; if `False`
        inputs must go through `nfnet_keras.preprocess_input` first.
    dropout_rate: dropout before the classifier (training only); `None`
        takes the variant's value ({dropout}).
    stochastic_depth_rate: largest per-block drop probability of the
        residual branches (training only, {schedule} schedule); `None` takes
        the variant's value ({stochastic_depth}).
    convention: `"deepmind"` (tanh GELU, DeepMind's weight standardisation)
        or `"timm"` (exact GELU, timm's standardisation); `None` (default)
        takes `"{convention}"`, the convention the published weights of
        this architecture were trained with.
    agc_clipping: the AGC clipping factor used by `fit` (0.01, the paper's);
        `None` switches AGC off.
    use_se: `True`/`False` switches squeeze-excite attention on/off; `None`
        (default) keeps the variant's ({attention}).
    activation: the activation of the blocks (a gamma-table name); `None`
        (default) keeps the variant's (`"{activation}"`).
    remat: `True` turns on gradient checkpointing: training calls keep
        only each NF block's input and recompute the block in the backward
        pass (less memory, about one more forward pass of compute); the
        gradients, drop-path masks included, are the plain model's.
        Default `False`.

Returns:
    An `NFModel` (a functional `keras.Model` whose `fit` applies AGC).
"""


def docstring(arch, pretrained_sources):
    """The constructor docstring of one row."""
    facts = []
    if arch.params:
        facts.append(f"{arch.params:,} parameters")
    if arch.params_se:
        facts.append(f"{arch.params_se:,} with `use_se=True`")
    if arch.flops:
        facts.append(f"{arch.flops / 1e9:.2f} GMACs at {arch.test_size}px")
    if arch.top1:
        facts.append(f"ImageNet top-1 {arch.top1}%")
    return BASE_DOCSTRING.format(
        title=arch.title,
        reference=arch.reference,
        skip_note=(
            " and a learned skip gain"
            if arch.skipinit
            else " (the last conv's gain starts at 0)"
        ),
        published=", ".join(facts) or "no published configuration",
        features=arch.pooled_features,
        pyramid=", ".join(
            f"{key} {width} channels" for key, width in zip(PYRAMID_KEYS, pyramid_widths(arch))
        ),
        pretrained=(
            "checkpoints " + ", ".join(f"`{s}`" for s in pretrained_sources)
            if pretrained_sources
            else "none published for this architecture"
        ),
        default_size=arch.test_size,
        name=arch.name,
        dropout=arch.dropout_rate,
        schedule="DeepMind" if arch.drop_path_schedule == "deepmind" else "timm's `DropPath`",
        stochastic_depth=arch.stochastic_depth_rate,
        convention=arch.convention,
        attention=arch.attention or "none",
        activation=arch.activation,
    )


# ---------------------------------------------------------------------------
# Argument checks and the input.


def validate_arguments(
    *,
    include_top,
    weights,
    input_shape,
    pooling,
    classes,
    classifier_activation,
    default_size,
    convention,
):
    """The keras.applications argument checks; returns the input shape."""
    if keras.backend.image_data_format() == "channels_first":
        raise ValueError(
            "NF models do not support the `channels_first` image data format. "
            "Switch to `channels_last` by editing your local config file at "
            "~/.keras/keras.json"
        )
    if not (weights in {"imagenet", None} or isinstance(weights, str)):
        raise ValueError(
            "The `weights` argument should be either `None` (random "
            "initialization), `imagenet` (pre-training on ImageNet), "
            "or the path to the weights file to be loaded. "
            f"Received: weights={weights!r}"
        )
    if isinstance(weights, str) and weights != "imagenet" and not _is_weights_source(weights):
        raise ValueError(
            "The `weights` argument should be either `None` (random "
            "initialization), `imagenet` (pre-training on ImageNet), "
            "or the path to the weights file to be loaded; the file does not "
            f"exist. Received: weights={weights}"
        )
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError(
            'If using `weights="imagenet"` with `include_top=True`, '
            "`classes` should be 1000. "
            f"Received: classes={classes}"
        )
    if not isinstance(classes, int) or isinstance(classes, bool) or classes < 1:
        raise ValueError(
            f"`classes` must be a positive integer. Received: classes={classes!r}"
        )
    if pooling not in (None, "avg", "max"):
        raise ValueError(
            "`pooling` must be one of None, 'avg' or 'max'. "
            f"Received: pooling={pooling!r}"
        )
    if convention not in nf_layers.CONVENTIONS:
        raise ValueError(
            f"`convention` must be one of {nf_layers.CONVENTIONS}. "
            f"Received: convention={convention!r}"
        )
    if include_top:
        keras_imagenet_utils.validate_activation(classifier_activation, weights)
    return keras_imagenet_utils.obtain_input_shape(
        input_shape,
        default_size=default_size,
        min_size=MIN_SIZE,
        data_format="channels_last",
        require_flatten=include_top,
        weights=weights,
    )


def _is_weights_source(weights):
    """A local file or a URL; the weights package decides what it can read."""
    return "://" in weights or keras.src.utils.file_utils.exists(weights)


def resolve_rate(value, default, argument):
    if value is None:
        return default
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(
            f"`{argument}` must be a float in [0, 1). Received: {argument}={value!r}"
        )
    return float(value)


def make_input(input_tensor, input_shape):
    """Returns (model inputs, first tensor) as keras.applications does."""
    if input_tensor is None:
        img_input = layers.Input(shape=input_shape)
    elif not keras.backend.is_keras_tensor(input_tensor):
        img_input = layers.Input(tensor=input_tensor, shape=input_shape)
    else:
        img_input = input_tensor
    if input_tensor is not None:
        inputs = operation_utils.get_source_inputs(input_tensor)[0]
    else:
        inputs = img_input
    return inputs, img_input


def normalize(x):
    """In-model preprocessing: [0, 255] RGB -> ImageNet-normalised."""
    if x.shape[-1] != 3:
        raise ValueError(
            "`include_preprocessing=True` needs RGB inputs with 3 channels. "
            f"Received: input with shape {tuple(x.shape)}"
        )
    return nf_layers.Normalize(
        [255.0 * m for m in IMAGENET_MEAN],
        [255.0 * s for s in IMAGENET_STD],
        name="normalization",
    )(x)


# ---------------------------------------------------------------------------
# Convolutions, activations, the block.


class Factory:
    """Makes the convolutions and activations of one model with its row's flags."""

    def __init__(self, arch, activation, convention):
        self.arch = arch
        self.activation = nf_layers.canonical_activation(activation)
        self.convention = convention

    def conv(self, filters, kernel_size, name, strides=1, groups=1, gain="ones"):
        def apply(x):
            padding = "same"  # TF/XLA SAME, the reference's rule (§3.7)
            if not self.arch.same_padding:
                pad = symmetric_padding(kernel_size, strides)
                if strides > 1 and pad:
                    # Symmetric zero padding, then a 'valid' conv (timm
                    # `get_padding`); stride-1 odd kernels use 'same', which
                    # pads (k - 1) / 2 on both sides as well.
                    x = layers.ZeroPadding2D(pad, name=name + "_pad")(x)
                    padding = "valid"
            return nf_layers.ScaledStdConv2D(
                filters,
                kernel_size,
                strides=strides,
                groups=groups,
                padding=padding,
                convention=self.convention,
                # timm `NormFreeNet`: `partial(ScaledStdConv2d, gamma=_nonlin_gamma[act])`.
                gamma=1.0 if self.arch.gamma_in_act else nf_layers.GAMMA[self.activation],
                gain_initializer=gain,
                name=name,
            )(x)

        return apply

    def act(self, name, beta=1.0):
        return nf_layers.GammaAct(
            self.activation,
            gamma=None if self.arch.gamma_in_act else 1.0,
            beta=beta,
            convention=self.convention,
            name=name,
        )

    def max_pool(self, name):
        if self.arch.same_padding:
            return layers.MaxPooling2D(3, strides=2, padding="same", name=name)
        # timm `7x7_pool` stem: MaxPool2d(3, 2, padding=1).
        return SymmetricMaxPooling2D(3, 2, 1, name=name)


def block_schedule(depths, alpha, stochastic_depth_rate, drop_path_schedule):
    """Per-block (stage, index, beta, drop rate).

    beta = 1 / expected_std; expected_std is reset to 1 after the first
    block of each stage and grows by alpha**2 in variance per block
    (reference doc §3.4). Drop rate of block i of N: DeepMind
    ``rate * i / N`` (§3.5); timm `calculate_drop_path_rates`
    ``linspace(0, rate, N)``.
    """
    schedule = []
    expected_std = 1.0
    total = sum(depths)
    index = 0
    for stage, depth in enumerate(depths):
        for block in range(depth):
            beta = 1.0 / expected_std
            if drop_path_schedule == "deepmind":
                rate = stochastic_depth_rate * index / total
            else:
                rate = stochastic_depth_rate * index / (total - 1) if total > 1 else 0.0
            schedule.append((stage, block, beta, rate))
            index += 1
            if block == 0:
                expected_std = 1.0
            expected_std = math.sqrt(expected_std**2 + alpha**2)
    return schedule


def nf_block(x, factory, prefix, *, out_channels, mid_channels, groups, stride, beta, drop_rate):
    """One normalizer-free residual block: ``x + alpha * f(act(x) * beta)``.

    Op order of deepmind-research `nfnet.NFBlock` / `nf_regnet.NFBlock` /
    `nf_resnet.NFResBlock` and timm `NormFreeBlock` (reference doc §3.3, §6):

    * ``h = gamma * act(x) * beta`` (``{prefix}preact``);
    * shortcut: on a stride or channel change a 1x1 WS conv of ``h``
      (``{prefix}shortcut_conv``), after a 2x2/2 SAME average pool
      (``{prefix}shortcut_pool``) when ``shortcut="avgpool"`` and strided,
      with the stride in the conv when ``shortcut="conv"``; else ``x``;
    * conv0 1x1 -> act -> conv1 3x3 (grouped, strided) [-> attention on the
      middle width] [-> act -> conv1b 3x3] -> act -> conv2 1x1
      [-> attention];
    * drop path, ``* alpha`` (times a learned skip gain with SkipInit),
      ``+ shortcut``.
    """
    arch = factory.arch
    in_channels = x.shape[-1]
    h = factory.act(prefix + "preact", beta=beta)(x)
    if stride > 1 or in_channels != out_channels:
        if arch.shortcut == "avgpool" and stride > 1:
            # Haiku avg_pool SAME and timm AvgPool2d(2, 2, ceil_mode=True,
            # count_include_pad=False) divide by the valid count; Keras
            # 'same' pooling does too (reference doc §3.7).
            s = layers.AveragePooling2D(
                pool_size=2, strides=2, padding="same", name=prefix + "shortcut_pool"
            )(h)
            s = factory.conv(out_channels, 1, prefix + "shortcut_conv")(s)
        else:
            conv_stride = stride if arch.shortcut == "conv" else 1
            s = factory.conv(out_channels, 1, prefix + "shortcut_conv", strides=conv_stride)(h)
    else:
        s = x

    def attention(r):
        if arch.attention is None:
            return r
        if arch.attention == "eca":
            # timm `EcaModule` (`attn_layer='eca'`), kernel size from the width.
            return nf_layers.EfficientChannelAttention(name=prefix + "eca")(r)
        base = r.shape[-1]
        if arch.channel_divisor is None:
            hidden = max(1, int(base * arch.attention_ratio))
        else:
            # timm `SEModule`: rd = make_divisible(C * rd_ratio, 8, round_limit=0).
            hidden = arch.round_channels(base * arch.attention_ratio, round_limit=0.0)
        return nf_layers.SqueezeExcite(hidden, name=prefix + "se")(r)

    r = factory.conv(mid_channels, 1, prefix + "conv0")(h)
    r = factory.act(prefix + "act0")(r)
    r = factory.conv(mid_channels, 3, prefix + "conv1", strides=stride, groups=groups)(r)
    if arch.inverted_bottleneck:
        r = attention(r)
    r = factory.act(prefix + "act1")(r)
    if arch.extra_conv:
        r = factory.conv(mid_channels, 3, prefix + "conv1b", groups=groups)(r)
        r = factory.act(prefix + "act1b")(r)
    # Without SkipInit, the last conv's gain starts at 0 (timm `gain_init=0.`).
    r = factory.conv(out_channels, 1, prefix + "conv2", gain="ones" if arch.skipinit else "zeros")(r)
    if not arch.inverted_bottleneck:
        r = attention(r)
    if arch.drop_path_schedule == "deepmind":
        # deepmind-research builds StochDepth only for 0 < rate < 1 (§3.5).
        if 0.0 < drop_rate < 1.0:
            r = nf_layers.StochasticDepth(drop_rate, name=prefix + "drop_path")(r)
    elif drop_rate > 0.0:
        r = nf_layers.StochasticDepth(drop_rate, scale_by_keep=True, name=prefix + "drop_path")(r)
    if arch.skipinit:
        r = nf_layers.SkipGain(ALPHA, name=prefix + "skip_gain")(r)
    else:
        r = layers.Rescaling(ALPHA, name=prefix + "alpha")(r)
    return layers.Add(name=prefix + "add")([r, s])


def stem(x, factory):
    arch = factory.arch
    if arch.stem == "deep_quad":
        # Three gamma-act 3x3 convs (strides 2, 1, 1), then a stride-2 conv
        # with no activation (reference doc §3.2).
        *widths, last = arch.stem_widths
        for i, (width, stride) in enumerate(zip(widths, (2, 1, 1))):
            x = factory.conv(width, 3, f"stem_conv{i}", strides=stride)(x)
            x = factory.act(f"stem_act{i}")(x)
        return factory.conv(last, 3, f"stem_conv{len(widths)}", strides=2)(x)
    if arch.stem == "7x7_pool":
        # 7x7/2 WS conv, 3x3/2 max pool, no activation (§6.1).
        x = factory.conv(arch.stem_widths[0], 7, "stem_conv0", strides=2)(x)
        return factory.max_pool("stem_pool")(x)
    # "3x3": one 3x3/2 WS conv, no activation (§6.2).
    return factory.conv(arch.stem_widths[0], 3, "stem_conv0", strides=2)(x)


def stages(x, factory, stochastic_depth_rate):
    arch = factory.arch
    widths = arch.stage_widths
    in_channels = x.shape[-1]
    schedule = block_schedule(arch.depths, ALPHA, stochastic_depth_rate, arch.drop_path_schedule)
    for index, (stage, block, beta, rate) in enumerate(schedule):
        out_channels = widths[stage]
        if arch.inverted_bottleneck:
            ratio = 1.0 if index == 0 else arch.bottleneck_ratio
            mid = arch.round_channels(in_channels * ratio)
        else:
            mid = arch.round_channels(out_channels * arch.bottleneck_ratio)
        groups = mid // arch.group_width if arch.group_width else 1
        x = nf_block(
            x,
            factory,
            f"stage{stage}_block{block}_",
            out_channels=out_channels,
            mid_channels=arch.group_width * groups if arch.group_width else mid,
            groups=groups,
            stride=arch.strides[stage] if block == 0 else 1,
            beta=beta,
            drop_rate=rate,
        )
        in_channels = out_channels
    return x


# KerasHub's `Backbone.pyramid_outputs` keys: "P<i>" at stride 2**i.
PYRAMID_KEYS = ("P1", "P2", "P3", "P4", "P5")


def pyramid_layers(arch):
    """The layers whose outputs are P1...P5: the last layer at each stride.

    P1 is the stem's last stride-2 conv (before its activation), timm's
    stem feature (`feature_info[0]`: `stem.conv3` of the deep stem,
    `stem.conv` otherwise); P2...P5 are the outputs of the last block of
    stages 0...3, timm's `stages.0` ... `stages.3` (timm's fifth
    `features_only` tap is the final 1x1 conv instead, where the network
    has one: NFNets and NF-RegNets; this model's output is that, activated).
    """
    # deep_quad: strides 2, 1, 1, 2, the third conv is the last at stride 2.
    stem = "stem_conv2" if arch.stem == "deep_quad" else "stem_conv0"
    return (stem,) + tuple(
        f"stage{stage}_block{depth - 1}_add" for stage, depth in enumerate(arch.depths)
    )


def pyramid_widths(arch):
    """Channels of P1...P5."""
    stem = arch.stem_widths[2] if arch.stem == "deep_quad" else arch.stem_widths[0]
    return (stem,) + arch.stage_widths


def classifier(classes, activation, initializer, name="predictions"):
    """The classification layer: a Dense with float32 outputs under mixed
    precision (Keras mixed-precision guide)."""
    mixed = keras.config.dtype_policy().name.startswith("mixed")
    return layers.Dense(
        classes,
        activation=activation,
        kernel_initializer=initializer,
        dtype="float32" if mixed else None,
        name=name,
    )


def head(x, *, include_top, pooling, classes, classifier_activation, dropout_rate, initializer):
    """Global pooling, dropout and the `predictions` Dense layer."""
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
            x = layers.Dropout(dropout_rate, name="top_dropout")(x)
        return classifier(classes, classifier_activation, initializer)(x)
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


# ---------------------------------------------------------------------------
# The builder.


def build(
    arch,
    include_top=True,
    weights="imagenet",
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes=1000,
    classifier_activation="softmax",
    name=None,
    include_preprocessing=True,
    dropout_rate=None,
    stochastic_depth_rate=None,
    convention=None,
    agc_clipping=0.01,
    use_se=None,
    activation=None,
    remat=False,
):
    """Builds the `NFModel` of the row `arch` (arguments: `BASE_DOCSTRING`).

    The one signature of every constructor (`make_constructor`).
    """
    from nfnet_keras import weights as weights_lib
    from nfnet_keras.agc import NFModel

    # Phase 1: the arguments.
    convention = arch.convention if convention is None else convention
    shape = validate_arguments(
        include_top=include_top,
        weights=weights,
        input_shape=input_shape,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        default_size=arch.test_size,
        convention=convention,
    )
    dropout_rate = resolve_rate(dropout_rate, arch.dropout_rate, "dropout_rate")
    stochastic_depth_rate = resolve_rate(
        stochastic_depth_rate, arch.stochastic_depth_rate, "stochastic_depth_rate"
    )
    if use_se is not None:
        if not isinstance(use_se, bool):
            raise ValueError(f"`use_se` must be None, True or False. Received: use_se={use_se!r}")
        if use_se and not arch.attention_ratio:
            raise ValueError(
                f"{arch.title} has no squeeze-excite configuration. Received: use_se=True"
            )
        arch = dataclasses.replace(arch, attention="se" if use_se else None)
    factory = Factory(arch, activation or arch.activation, convention)

    # Phase 2: the input and preprocessing.
    inputs, x = make_input(input_tensor, shape)
    if include_preprocessing:
        x = normalize(x)

    # Phase 3: stem, stages, final conv.
    x = stem(x, factory)
    x = stages(x, factory, stochastic_depth_rate)
    if arch.num_features:
        x = factory.conv(arch.num_features, 1, "final_conv")(x)
    x = factory.act("final_act")(x)

    # Phase 4: head, model, weights.
    outputs = head(
        x,
        include_top=include_top,
        pooling=pooling,
        classes=classes,
        classifier_activation=classifier_activation,
        dropout_rate=dropout_rate,
        initializer=CLASSIFIER_INITIALIZERS[arch.classifier_initializer](),
    )
    model = NFModel(
        inputs,
        outputs,
        name=name or arch.name,
        agc_clipping=agc_clipping,
        pyramid_layers=dict(zip(PYRAMID_KEYS, pyramid_layers(arch))),
        remat=remat,
    )
    checkpoint = weights_lib.load_weights(model, weights, arch, include_top=include_top)
    model.pretrained_cfg.update(weights_lib.pretrained_cfg(arch, checkpoint))
    if include_top:
        model.pretrained_cfg["num_classes"] = classes
    return model


def make_constructor(arch, pretrained_sources=()):
    """The keras.applications-style constructor of one row: `build` with the
    row bound, showing `build`'s keyword arguments as its signature."""

    signature = inspect.signature(build)
    signature = signature.replace(parameters=list(signature.parameters.values())[1:])

    def constructor(*args, **kwargs):
        try:
            arguments = signature.bind(*args, **kwargs)
        except TypeError as error:
            raise TypeError(f"{arch.constructor}(): {error}") from None
        return build(arch, *arguments.args, **arguments.kwargs)

    constructor.__signature__ = signature
    constructor.__name__ = constructor.__qualname__ = arch.constructor
    constructor.__doc__ = docstring(arch, pretrained_sources)
    constructor.architecture = arch
    return constructor
