"""Pieces shared by the model families: argument checks, the NF block, the head.

The phases of every builder are the same — validate the keras.applications
arguments, make the input, (optionally) normalise, stem, stages of NF blocks,
head, wrap in the AGC-training model, load weights — and live here so that
each family module holds only its rows and its stem.
"""

import math
import sys

import keras
from keras import layers
from keras.src.applications import imagenet_utils as keras_imagenet_utils
from keras.src.ops import operation_utils

from nfnet_keras import layers as nf_layers
from nfnet_keras.imagenet_utils import IMAGENET_MEAN, IMAGENET_STD

# Keras walks functional graphs recursively (building, saving, loading);
# NFNet-F6/F7 are ~1,300 layers deep, past Python's default limit of 1,000.
_RECURSION_LIMIT = 20_000
if sys.getrecursionlimit() < _RECURSION_LIMIT:
    sys.setrecursionlimit(_RECURSION_LIMIT)

# Residual branch scale alpha of every NF model (reference doc §3.4;
# deepmind-research `nfnet.py`, `nf_resnet.py`, `nf_regnet.py` default 0.2).
ALPHA = 0.2

BASE_DOCSTRING = """Instantiates the {title} architecture.

Reference:
- {reference}

Normalizer-Free networks have no normalisation layers: every convolution
standardises its kernel (`ScaledStdConv2D`), every residual block scales its
input by a constant beta and its branch by alpha and a learned skip gain, and
`model.fit` clips gradients adaptively (AGC, on by default, classifier head
excluded).

Published: {published}.

Args:
    include_top: whether to include the classification head (final dense
        layer named `predictions`). Default `True`.
    weights: `None` (random initialisation), `"imagenet"` (pre-training on
        ImageNet), or the path to a weights file to load.
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
        Default `"softmax"`.
    name: the model's name. Default `"{name}"`.
    include_preprocessing: if `True`, the model takes RGB images with
        pixels in [0, 255] and normalises them itself; if `False` (default)
        inputs must go through `nfnet_keras.preprocess_input` first.
    dropout_rate: dropout before the classifier (training only); `None`
        takes the variant's value ({dropout}).
    stochastic_depth_rate: largest per-block drop probability of the
        residual branches (training only, DeepMind schedule); `None` takes
        the recipe's value ({stochastic_depth}).
    convention: `"deepmind"` (default; tanh GELU, DeepMind's weight
        standardisation — the conventions the published weights were trained
        with) or `"timm"` (exact GELU, timm's standardisation).
    agc_clipping: the AGC clipping factor used by `fit` (0.01, the paper's);
        `None` switches AGC off.

Returns:
    A `keras.Model` instance.
"""


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
    if not (weights in {"imagenet", None} or _is_weights_source(weights)):
        raise ValueError(
            "The `weights` argument should be either `None` (random "
            "initialization), `imagenet` (pre-training on ImageNet), "
            "or the path to the weights file to be loaded. "
            f"Received: weights={weights}"
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
        min_size=32,
        data_format="channels_last",
        require_flatten=include_top,
        weights=weights,
    )


def _is_weights_source(weights):
    """A local file or a URL; the weights module decides what it can read."""
    if not isinstance(weights, str):
        return False
    if "://" in weights:
        return True
    return keras.src.utils.file_utils.exists(weights)


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


class Factory:
    """Makes the convolutions and activations of one model with its settings."""

    def __init__(self, activation, convention):
        self.activation = activation
        self.convention = convention

    def conv(self, filters, kernel_size, name, strides=1, groups=1):
        return nf_layers.ScaledStdConv2D(
            filters,
            kernel_size,
            strides=strides,
            groups=groups,
            padding="same",  # TF/XLA SAME, the reference's rule (§3.7)
            convention=self.convention,
            name=name,
        )

    def act(self, name, beta=1.0):
        return nf_layers.GammaAct(
            self.activation, beta=beta, convention=self.convention, name=name
        )


def block_schedule(depths, alpha, stochastic_depth_rate):
    """Per-block (stage, index, beta, drop rate), deepmind-research order.

    beta = 1 / expected_std; expected_std is reset to 1 after the first
    block of each stage and grows by alpha**2 per block (reference doc
    §3.4). Drop rate of block i of N is rate * i / N (§3.5).
    """
    schedule = []
    expected_std = 1.0
    total = sum(depths)
    index = 0
    for stage, depth in enumerate(depths):
        for block in range(depth):
            beta = 1.0 / expected_std
            rate = stochastic_depth_rate * index / total
            schedule.append((stage, block, beta, rate))
            index += 1
            if block == 0:
                expected_std = 1.0
            expected_std = math.sqrt(expected_std**2 + alpha**2)
    return schedule


def nf_block(
    x,
    factory,
    prefix,
    *,
    out_channels,
    mid_channels,
    groups,
    stride,
    beta,
    stochastic_depth_rate,
    se_hidden=None,
    se_position="out",
    extra_conv=False,
    shortcut="avgpool",
    alpha=ALPHA,
):
    """One normalizer-free residual block: ``x + alpha * f(act(x) * beta)``.

    Op order of deepmind-research `nfnet.NFBlock` / `nf_regnet.NFBlock` /
    `nf_resnet.NFResBlock` (reference doc §3.3, §6):

    * ``h = gamma * act(x) * beta`` (``{prefix}preact``);
    * shortcut: on a stride or channel change a 1x1 WS conv of ``h``
      (``{prefix}shortcut_conv``), after a 2x2/2 SAME average pool
      (``{prefix}shortcut_pool``) when ``shortcut="avgpool"`` and strided,
      with the stride in the conv when ``shortcut="conv"``; else ``x``;
    * conv0 1x1 -> act -> conv1 3x3 (grouped, strided) [-> SE on the
      middle width] [-> act -> conv1b 3x3] -> act -> conv2 1x1 [-> SE];
    * stochastic depth, ``* skip_gain * alpha``, ``+ shortcut``.
    """
    in_channels = x.shape[-1]
    h = factory.act(prefix + "preact", beta=beta)(x)
    if stride > 1 or in_channels != out_channels:
        if shortcut == "avgpool" and stride > 1:
            # Haiku avg_pool SAME divides by the valid count; Keras 'same'
            # pooling does too (reference doc §3.7).
            s = layers.AveragePooling2D(
                pool_size=2, strides=2, padding="same", name=prefix + "shortcut_pool"
            )(h)
            s = factory.conv(out_channels, 1, prefix + "shortcut_conv")(s)
        else:
            conv_stride = stride if shortcut == "conv" else 1
            s = factory.conv(
                out_channels, 1, prefix + "shortcut_conv", strides=conv_stride
            )(h)
    else:
        s = x

    r = factory.conv(mid_channels, 1, prefix + "conv0")(h)
    r = factory.act(prefix + "act0")(r)
    r = factory.conv(mid_channels, 3, prefix + "conv1", strides=stride, groups=groups)(r)
    if se_hidden and se_position == "mid":
        r = nf_layers.SqueezeExcite(se_hidden, name=prefix + "se")(r)
    r = factory.act(prefix + "act1")(r)
    if extra_conv:
        r = factory.conv(mid_channels, 3, prefix + "conv1b", groups=groups)(r)
        r = factory.act(prefix + "act1b")(r)
    r = factory.conv(out_channels, 1, prefix + "conv2")(r)
    if se_hidden and se_position == "out":
        r = nf_layers.SqueezeExcite(se_hidden, name=prefix + "se")(r)
    # deepmind-research builds StochDepth only for 0 < rate < 1 (§3.5).
    if 0.0 < stochastic_depth_rate < 1.0:
        r = nf_layers.StochasticDepth(stochastic_depth_rate, name=prefix + "drop_path")(r)
    r = nf_layers.SkipGain(alpha, name=prefix + "skip_gain")(r)
    return layers.Add(name=prefix + "add")([r, s])


def head(
    x,
    *,
    include_top,
    pooling,
    classes,
    classifier_activation,
    dropout_rate,
    classifier_initializer,
):
    """Global pooling, dropout and the `predictions` Dense layer."""
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
            x = layers.Dropout(dropout_rate, name="top_dropout")(x)
        return layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_initializer=classifier_initializer,
            name="predictions",
        )(x)
    if pooling == "avg":
        return layers.GlobalAveragePooling2D(name="avg_pool")(x)
    if pooling == "max":
        return layers.GlobalMaxPooling2D(name="max_pool")(x)
    return x


def begin(arguments, *, default_size, default_dropout, default_stochastic_depth):
    """The first phase of every builder: checks, rates, input, preprocessing.

    Args:
        arguments: the builder's arguments (its `locals()` on entry): the
            keras.applications ones plus `include_preprocessing`,
            `dropout_rate`, `stochastic_depth_rate`, `convention`.
        default_size: the row's test resolution.
        default_dropout, default_stochastic_depth: the rates used when the
            arguments are `None`.

    Returns:
        (model inputs, first tensor, dropout rate, stochastic depth rate).
    """
    input_shape = validate_arguments(
        include_top=arguments["include_top"],
        weights=arguments["weights"],
        input_shape=arguments["input_shape"],
        pooling=arguments["pooling"],
        classes=arguments["classes"],
        classifier_activation=arguments["classifier_activation"],
        default_size=default_size,
        convention=arguments["convention"],
    )
    dropout_rate = resolve_rate(arguments["dropout_rate"], default_dropout, "dropout_rate")
    stochastic_depth_rate = resolve_rate(
        arguments["stochastic_depth_rate"], default_stochastic_depth, "stochastic_depth_rate"
    )
    inputs, x = make_input(arguments["input_tensor"], input_shape)
    if arguments["include_preprocessing"]:
        x = normalize(x)
    return inputs, x, dropout_rate, stochastic_depth_rate


def end(x, inputs, arguments, *, name, variant, dropout_rate, classifier_initializer):
    """The last phase of every builder: head, model class, weights."""
    outputs = head(
        x,
        include_top=arguments["include_top"],
        pooling=arguments["pooling"],
        classes=arguments["classes"],
        classifier_activation=arguments["classifier_activation"],
        dropout_rate=dropout_rate,
        classifier_initializer=classifier_initializer,
    )
    return finish(
        inputs,
        outputs,
        name=name,
        weights=arguments["weights"],
        variant=variant,
        include_top=arguments["include_top"],
        agc_clipping=arguments["agc_clipping"],
    )


def finish(inputs, outputs, *, name, weights, variant, include_top, agc_clipping):
    """Wraps the graph in the AGC-training model and loads weights."""
    from nfnet_keras.agc import NFModel  # local import: agc imports layers
    from nfnet_keras import weights as weights_lib

    model = NFModel(inputs, outputs, name=name, agc_clipping=agc_clipping)
    if weights is not None:
        weights_lib.load_weights(model, weights, variant=variant, include_top=include_top)
    return model


def resolve_rate(value, default, argument):
    if value is None:
        return default
    if not (isinstance(value, (int, float)) and 0.0 <= value < 1.0):
        raise ValueError(
            f"`{argument}` must be a float in [0, 1). Received: {argument}={value!r}"
        )
    return float(value)


def make_constructor(builder, variant, public_name, model_name, doc):
    """A keras.applications-style constructor for one row of a family.

    `builder(variant, **arguments)` builds the model; `doc` are the fields
    of `BASE_DOCSTRING` that differ between rows.
    """

    def constructor(
        include_top=True,
        weights=None,
        input_tensor=None,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        name=model_name,
        include_preprocessing=False,
        **kwargs,
    ):
        return builder(
            variant,
            include_top=include_top,
            weights=weights,
            input_tensor=input_tensor,
            input_shape=input_shape,
            pooling=pooling,
            classes=classes,
            classifier_activation=classifier_activation,
            name=name,
            include_preprocessing=include_preprocessing,
            **kwargs,
        )

    constructor.__name__ = constructor.__qualname__ = public_name
    constructor.__doc__ = BASE_DOCSTRING.format(name=model_name, **doc)
    return constructor


def check_variant(variant, variants):
    if variant not in variants:
        raise ValueError(
            f"`variant` must be one of {sorted(variants)}. Received: variant={variant!r}"
        )
    return variants[variant]
