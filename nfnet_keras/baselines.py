"""Normalised ResNet baselines to compare the NF models with.

* `BNResNetV2`: the BatchNorm pre-activation bottleneck ResNet of the
  NF-ResNet paper's signal-propagation study (deepmind-research
  `nfnets/resnet.py`, ``ResNetV2``; its ``ResNet600`` row is depths
  (50, 50, 50, 50)), in the two unit orders the paper compares,
  BN-ReLU-Conv and ReLU-BN-Conv, with He-initialised convolutions.
* `ResNetV1` with batch-independent normalisation, in the layout of the
  public GN+WS ResNet, big_vision `models/bit.py` (BiT): plain-WS
  convolutions + GroupNorm (`GNWSResNet50`, the "BYOL works even without
  batch statistics" encoder family), or EvoNorm in place of every BN-ReLU,
  as tensorflow/tpu `resnet_model.py` does (`EvoNormS0ResNet50`,
  `EvoNormB0ResNet50`).

Layers are named like the NF models' (``stem_*``, ``stage{s}_block{b}_*``,
one ``add`` per block), so `nfnet_keras.analysis.signal_propagation`
probes them the same way. They are plain `keras.Model`s: `fit` does not
clip gradients.
"""

import functools
import inspect

import keras
from keras import layers

from nfnet_keras.layers import StdConv2D
from nfnet_keras.models import builder
from nfnet_keras.normalization import EvoNormB0, EvoNormS0

# ResNet-50 (He et al. 2016): bottleneck blocks per stage, stage output
# widths (4 x 64, 128, 256, 512), bottleneck ratio 1/4, stem width 64.
RESNET50_DEPTHS = (3, 4, 6, 3)
RESNET600_DEPTHS = (50, 50, 50, 50)  # deepmind-research `resnet.py` ResNet600
WIDTHS = (256, 512, 1024, 2048)
STEM_WIDTH = 64
BOTTLENECK = 0.25
STRIDES = (1, 2, 2, 2)
# deepmind-research `resnet.py`: hk.BatchNorm(decay_rate=0.9, eps=1e-5).
BN_MOMENTUM, BN_EPSILON = 0.9, 1e-5
# big_vision `bit.py` uses flax `nn.GroupNorm()`: 32 groups, epsilon 1e-6
# (flax's default).
GN_GROUPS, GN_EPSILON = 32, 1e-6
ORDERS = ("bn_relu_conv", "relu_bn_conv")
NORMS = ("gn_ws", "evonorm_s0", "evonorm_b0")


def _check_stages(depths, widths):
    if len(depths) != len(widths) or not all(isinstance(d, int) and d >= 1 for d in depths):
        raise ValueError(
            "`depths` must hold one positive block count per entry of `widths`. "
            f"Received: depths={depths!r}, widths={widths!r}"
        )


def _blocks(depths, widths):
    """Yields, block by block, the layer-name prefix, the 3x3 conv's stride,
    the block's output and bottleneck widths, and whether the block is the
    first of its stage (the one with the projection shortcut)."""
    for stage, (depth, width) in enumerate(zip(depths, widths)):
        for block in range(depth):
            stride = STRIDES[stage] if block == 0 else 1
            yield f"stage{stage}_block{block}_", stride, width, int(width * BOTTLENECK), block == 0


def _application(body):
    """A keras.applications constructor from a network body.

    ``body(inputs, *args, **kwargs)`` builds the features of the architecture
    arguments and returns ``(features, classifier initializer, default
    name)``; the constructor adds the keras.applications arguments
    (``include_top``, ``input_shape``, ``pooling``, ``classes``,
    ``classifier_activation``, ``name``), checks them, and adds the head.
    """

    def constructor(
        *args,
        include_top=True,
        input_shape=None,
        pooling=None,
        classes=1000,
        classifier_activation="softmax",
        name=None,
        **kwargs,
    ):
        if input_shape is None:
            input_shape = (224, 224, 3)
        if (
            not isinstance(input_shape, (tuple, list))
            or len(input_shape) != 3
            or not all(isinstance(d, int) and d >= 32 for d in input_shape[:2])
        ):
            raise ValueError(
                "`input_shape` must be (height, width, channels) with sides of at least 32. "
                f"Received: input_shape={input_shape!r}"
            )
        if pooling not in (None, "avg", "max"):
            raise ValueError(f"`pooling` must be None, 'avg' or 'max'. Received: pooling={pooling!r}")
        if include_top and (not isinstance(classes, int) or classes < 1):
            raise ValueError(f"`classes` must be a positive integer. Received: classes={classes!r}")
        inputs = layers.Input(shape=tuple(input_shape))
        x, initializer, default_name = body(inputs, *args, **kwargs)
        outputs = builder.head(
            x, include_top=include_top, pooling=pooling, classes=classes,
            classifier_activation=classifier_activation, dropout_rate=0.0,
            initializer=initializer,
        )
        return keras.Model(inputs, outputs, name=name or default_name)

    signature = inspect.signature(body)
    application = inspect.signature(constructor).parameters
    constructor.__signature__ = signature.replace(
        parameters=list(signature.parameters.values())[1:]
        + [application[key] for key in ("include_top", "input_shape", "pooling", "classes",
                                        "classifier_activation", "name")]
    )
    constructor.__name__ = constructor.__qualname__ = body.__name__
    constructor.__doc__ = body.__doc__
    return constructor


@_application
def BNResNetV2(
    inputs,
    depths=RESNET50_DEPTHS,
    order="bn_relu_conv",
    widths=WIDTHS,
    stem_width=STEM_WIDTH,
    kernel_initializer="he_normal",
):
    """A BatchNorm pre-activation bottleneck ResNet (ResNet V2).

    Block ``x + f(x)``: ``h = norm_act(x)``; the projection shortcut (first
    block of a stage) is a 1x1 conv of ``h``, else ``x``; ``f`` is 1x1 ->
    norm_act -> 3x3 (strided) -> norm_act -> 1x1. ``norm_act`` is BN then
    ReLU (``order="bn_relu_conv"``, the standard order) or ReLU then BN
    (``"relu_bn_conv"``). Stem: 7x7/2 conv, 3x3/2 max pool; a final
    norm_act before the head (deepmind-research `resnet.py` `BlockV2`).
    Probe it with batch statistics (`signal_propagation` does so itself).
    Other arguments: as in `keras.applications`.
    """
    if order not in ORDERS:
        raise ValueError(f"`order` must be one of {ORDERS}. Received: order={order!r}")
    _check_stages(depths, widths)

    def conv(x, filters, kernel_size, name, strides=1):
        return layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same",
            use_bias=False,
            kernel_initializer=kernel_initializer,
            name=name,
        )(x)

    def norm_act(x, name):
        bn = layers.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name + "_bn")
        relu = layers.ReLU(name=name + "_relu")
        return relu(bn(x)) if order == "bn_relu_conv" else bn(relu(x))

    x = conv(inputs, stem_width, 7, "stem_conv", strides=2)
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for prefix, stride, width, mid, first in _blocks(depths, widths):
        h = norm_act(x, prefix + "preact")
        if first:
            shortcut = conv(h, width, 1, prefix + "shortcut_conv", strides=stride)
        else:
            shortcut = x
        r = conv(h, mid, 1, prefix + "conv0")
        r = conv(norm_act(r, prefix + "act0"), mid, 3, prefix + "conv1", strides=stride)
        r = conv(norm_act(r, prefix + "act1"), width, 1, prefix + "conv2")
        x = layers.Add(name=prefix + "add")([r, shortcut])
    x = norm_act(x, "final")
    return x, "glorot_uniform", f"bn_resnet_v2_{order}"


@_application
def ResNetV1(
    inputs,
    norm="gn_ws",
    depths=RESNET50_DEPTHS,
    widths=WIDTHS,
    stem_width=STEM_WIDTH,
    groups=GN_GROUPS,
):
    """A post-activation bottleneck ResNet with batch-independent normalisation.

    The big_vision `bit.py` layout: stem 7x7/2 conv -> norm-ReLU -> 3x3/2
    max pool; block ``relu(shortcut + f(x))`` with ``f`` = 1x1 -> norm-ReLU
    -> 3x3 (strided) -> norm-ReLU -> 1x1 -> norm (scale initialised to 0),
    and a 1x1 (strided) conv -> norm projection shortcut in the first block
    of each stage.

    Args:
        norm: ``"gn_ws"``: `StdConv2D` (plain WS, epsilon 1e-5 on the std,
            no bias) + `GroupNormalization(groups, epsilon=1e-6)` + ReLU,
            zero-initialised classifier (BiT). ``"evonorm_s0"`` /
            ``"evonorm_b0"``: plain convolutions (truncated normal,
            variance 1 / fan_in, tensorflow/tpu `conv2d_fixed_padding`) and
            `EvoNormS0(groups)` / `EvoNormB0` in place of every norm-ReLU,
            affine-only where the reference has no ReLU (tensorflow/tpu
            `resnet_model.py`), classifier N(0, 0.01).
        groups: GroupNorm / EvoNorm-S0 groups (32, both references').
        Other arguments: as in `keras.applications`; `weights` are not
        published for these baselines.
    """
    if norm not in NORMS:
        raise ValueError(f"`norm` must be one of {NORMS}. Received: norm={norm!r}")
    _check_stages(depths, widths)

    def conv(x, filters, kernel_size, name, strides=1):
        if norm == "gn_ws":
            return StdConv2D(filters, kernel_size, strides=strides, name=name)(x)
        # tf.compat.v1.variance_scaling_initializer() defaults.
        initializer = keras.initializers.VarianceScaling(1.0, "fan_in", "truncated_normal")
        return layers.Conv2D(
            filters, kernel_size, strides=strides, padding="same", use_bias=False,
            kernel_initializer=initializer, name=name,
        )(x)

    def norm_act(x, name, act=True, zero_init=False):
        gamma = "zeros" if zero_init else "ones"
        if norm == "gn_ws":
            x = layers.GroupNormalization(
                groups=groups, epsilon=GN_EPSILON, gamma_initializer=gamma, name=name + "_gn"
            )(x)
            return layers.ReLU(name=name + "_relu")(x) if act else x
        if norm == "evonorm_s0":
            return EvoNormS0(groups=groups, apply_act=act, gamma_initializer=gamma, name=name + "_evonorm")(x)
        return EvoNormB0(apply_act=act, gamma_initializer=gamma, name=name + "_evonorm")(x)

    x = conv(inputs, stem_width, 7, "stem_conv", strides=2)
    x = norm_act(x, "stem")
    x = layers.MaxPooling2D(3, strides=2, padding="same", name="stem_pool")(x)
    for prefix, stride, width, mid, first in _blocks(depths, widths):
        if first:
            shortcut = conv(x, width, 1, prefix + "shortcut_conv", strides=stride)
            shortcut = norm_act(shortcut, prefix + "shortcut", act=False)
        else:
            shortcut = x
        r = norm_act(conv(x, mid, 1, prefix + "conv0"), prefix + "norm0")
        r = norm_act(conv(r, mid, 3, prefix + "conv1", strides=stride), prefix + "norm1")
        r = norm_act(conv(r, width, 1, prefix + "conv2"), prefix + "norm2", act=False, zero_init=True)
        x = layers.Add(name=prefix + "add")([r, shortcut])
        x = layers.ReLU(name=prefix + "out")(x)
    head_init = "zeros" if norm == "gn_ws" else keras.initializers.RandomNormal(stddev=0.01)
    return x, head_init, f"{norm}_resnet"


GNWSResNet50 = functools.partial(ResNetV1, "gn_ws", name="gn_ws_resnet50")
EvoNormS0ResNet50 = functools.partial(ResNetV1, "evonorm_s0", name="evonorm_s0_resnet50")
EvoNormB0ResNet50 = functools.partial(ResNetV1, "evonorm_b0", name="evonorm_b0_resnet50")
GNWSResNet50.__doc__ = "ResNet-50 with GroupNorm + Weight Standardization (BiT layout); see `ResNetV1`."
EvoNormS0ResNet50.__doc__ = "ResNet-50 with EvoNorm-S0; see `ResNetV1`."
EvoNormB0ResNet50.__doc__ = "ResNet-50 with EvoNorm-B0; see `ResNetV1`."

# Names for `nfnet-spp` (constructors taking the keras.applications arguments).
MODELS = {
    "bn_resnet_v2_50": functools.partial(BNResNetV2, RESNET50_DEPTHS, "bn_relu_conv"),
    "bn_resnet_v2_50_relu_bn_conv": functools.partial(BNResNetV2, RESNET50_DEPTHS, "relu_bn_conv"),
    "bn_resnet_v2_600": functools.partial(BNResNetV2, RESNET600_DEPTHS, "bn_relu_conv"),
    "bn_resnet_v2_600_relu_bn_conv": functools.partial(BNResNetV2, RESNET600_DEPTHS, "relu_bn_conv"),
    "gn_ws_resnet50": GNWSResNet50,
    "evonorm_s0_resnet50": EvoNormS0ResNet50,
    "evonorm_b0_resnet50": EvoNormB0ResNet50,
}
