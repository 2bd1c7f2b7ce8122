"""Keras layers of the Normalizer-Free model family.

Every layer here uses `keras.ops` only, is serializable through `get_config`
and is registered under the package name ``nfnet_keras`` so that `.keras`
files reload without `custom_objects`.

Two numerical conventions exist for the same published weights
(reference doc ``nfnet-reference.md`` §1, §4, §5):

* ``"deepmind"`` — deepmind-research ``nfnets/base.py``: tanh-approximate GELU,
  scaled weight standardisation ``(w - mean) * gain / sqrt(max(N * var, 1e-4))``.
* ``"timm"`` — timm ``timm/layers/std_conv.py`` / ``timm/models/nfnet.py``:
  exact (erf) GELU, ``(w - mean) / sqrt(var + 1e-5) * gain * N**-0.5``.
"""

import math

import keras
from keras import ops

PACKAGE = "nfnet_keras"

CONVENTIONS = ("deepmind", "timm")

# Activation gains gamma: 1 / std(act(z)) for z ~ N(0, 1), empirical values
# copied digit for digit from deepmind-research `nfnets/base.py`
# (`nonlinearities`), also in timm `timm/models/nfnet.py` (`_nonlin_gamma`);
# reference doc §3.8.
GAMMA = {
    "identity": 1.0,
    "celu": 1.270926833152771,
    "elu": 1.2716004848480225,
    "gelu": 1.7015043497085571,
    "leaky_relu": 1.70590341091156,
    "log_sigmoid": 1.9193484783172607,
    "log_softmax": 1.0002083778381348,
    "relu": 1.7139588594436646,
    "relu6": 1.7131484746932983,
    "selu": 1.0008515119552612,
    "sigmoid": 4.803835391998291,
    "silu": 1.7881293296813965,
    "softsign": 2.338853120803833,
    "softplus": 1.9203323125839233,
    "tanh": 1.5939117670059204,
}
_ALIASES = {"swish": "silu", "soft_sign": "softsign", "linear": "identity"}

# Scaled-WS epsilons (reference doc §4): DeepMind floors N * var at 1e-4;
# timm adds `std_conv_eps` = 1e-5 (all NfCfg models) to the variance.
DEEPMIND_WS_EPS = 1e-4
TIMM_WS_EPS = 1e-5


def _check_convention(convention, argument="convention"):
    if convention not in CONVENTIONS:
        raise ValueError(
            f"`{argument}` must be one of {CONVENTIONS}. "
            f"Received: {argument}={convention!r}"
        )


def canonical_activation(name):
    """Returns the canonical name of an activation of the gamma table."""
    if not isinstance(name, str):
        raise ValueError(
            "`activation` must be the name of an activation of the gamma table "
            f"{sorted(GAMMA)}. Received: activation={name!r}"
        )
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in GAMMA:
        raise ValueError(
            f"`activation` must be one of {sorted(GAMMA) + sorted(_ALIASES)}. "
            f"Received: activation={name!r}"
        )
    return key


def _apply_activation(name, x, approximate_gelu):
    if name == "identity":
        return x
    if name == "gelu":
        return ops.gelu(x, approximate=approximate_gelu)
    if name == "leaky_relu":
        # JAX default slope, the one the gamma constant was measured with.
        return ops.leaky_relu(x, negative_slope=0.01)
    if name == "softsign":
        return ops.soft_sign(x)
    return getattr(ops, name)(x)


# GELU's tanh approximation (Hendrycks & Gimpel 2016, arXiv:1606.08415 §2;
# the constants of `tf.nn.gelu` and `jax.nn.gelu`).
_GELU_CUBIC = 0.044715
_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def _gelu_derivative(x, approximate):
    """d/dx GELU(x): exact, x * Phi(x), or the tanh approximation."""
    if approximate:
        tanh = ops.tanh(_SQRT_2_OVER_PI * (x + _GELU_CUBIC * x * x * x))
        return 0.5 * (1.0 + tanh) + (0.5 * _SQRT_2_OVER_PI) * x * (1.0 - tanh * tanh) * (
            1.0 + 3.0 * _GELU_CUBIC * x * x
        )
    cdf = 0.5 * (1.0 + ops.erf(x * math.sqrt(0.5)))
    return cdf + x * ops.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))


@keras.saving.register_keras_serializable(package=PACKAGE)
class PerGroupConv2D(keras.layers.Conv2D):
    """A `Conv2D` that runs a grouped convolution as one convolution per group.

    The same arithmetic as `keras.layers.Conv2D(groups=G)`, in a portable
    form. On the TensorFlow backend Keras compiles every grouped convolution
    with XLA, whose gradient is 12-50x slower on the CPU than per-group
    convolutions (benchmarks/grouped_conv.py), and which TF Serving runs only
    with XLA:CPU enabled. TensorFlow's own grouped kernel is no way out
    either: without oneDNN (the default on x86 CPUs lacking AVX-512 VNNI/BF16
    and AMX) its graph optimizer fuses a grouped convolution with a following
    bias into a CPU kernel that refuses groups. Per-group convolutions run
    everywhere, and the serving benchmark (benchmarks/README.md) found them
    as fast as the native grouped kernel.

    `fold_for_inference` replaces NF convolutions with this layer.
    """

    def convolution_op(self, inputs, kernel):
        if self.groups == 1:
            return super().convolution_op(inputs, kernel)
        input_groups = ops.split(inputs, self.groups, axis=-1)
        kernel_groups = ops.split(kernel, self.groups, axis=-1)
        return ops.concatenate(
            [super(PerGroupConv2D, self).convolution_op(x, k) for x, k in zip(input_groups, kernel_groups)],
            axis=-1,
        )


def _standardize(kernel, gain, channel_scale):
    """``(kernel - mean) * f(var) * gain`` per output channel of an HWIO kernel,
    statistics over the fan-in axes (H, W, I), with an explicit backward pass.

    `channel_scale(var)` returns f(var) and df/dvar. With c = kernel - mean
    (population variance var = mean(c**2) over the fan-in of N weights), an
    upstream gradient d and p = sum(d * c) per channel, the chain rule gives

        d/dgain   = p * f
        d/dkernel = u - mean(u) + c * p * gain * f'(var) * 2 / N,  u = d * f * gain

    which needs only the kernel and per-channel values from the forward pass.
    """
    axes = (0, 1, 2)
    fan_in = float(math.prod(kernel.shape[:-1]))

    @ops.custom_gradient
    def standardize(kernel, gain):
        mean = ops.mean(kernel, axis=axes, keepdims=True)
        var = ops.mean(ops.square(kernel - mean), axis=axes, keepdims=True)
        scale, scale_derivative = channel_scale(var)

        def grad(*args, upstream=None):
            upstream = args[0] if upstream is None else upstream
            centred = kernel - mean
            projection = ops.sum(upstream * centred, axis=axes, keepdims=True)
            scaled = upstream * (scale * gain)
            grad_kernel = (scaled - ops.mean(scaled, axis=axes, keepdims=True)
                           + centred * (projection * gain * scale_derivative * (2.0 / fan_in)))
            return grad_kernel, ops.reshape(projection * scale, ops.shape(gain))

        return (kernel - mean) * (scale * gain), grad

    return standardize(kernel, gain)


class _StandardizedConv2D(PerGroupConv2D):
    """Conv2D that convolves with a function of its kernel, `standardized_kernel()`.

    The shared part of `ScaledStdConv2D` and `StdConv2D`: the kernel is read in
    float32 whatever the dtype policy, grouped convolutions run one group at a
    time (`PerGroupConv2D`), and every variable (not only kernel and bias) is
    saved. Padding and strides are Keras's own.
    """

    def __init__(self, filters, kernel_size, **kwargs):
        super().__init__(filters, kernel_size, **kwargs)
        if self.data_format != "channels_last":
            raise ValueError(
                f"{type(self).__name__} supports only `data_format='channels_last'`. "
                f"Received: data_format={self.data_format!r}"
            )

    def build(self, input_shape):
        super().build(input_shape)
        # Weight standardisation reads the float32 master weights even under
        # a mixed-precision policy (design.md "Scale"): switch off the
        # variables' autocasting; `call` casts the result once.
        self._kernel._autocast = False

    @property
    def fan_in(self):
        return int(math.prod(self._kernel.shape[:-1]))

    def _channel_scale(self, var):
        """Per-output-channel f(var) and df/dvar, where var is the population
        variance of the kernel over its fan-in: the standardised kernel is
        ``(kernel - mean) * f(var) * gain``."""
        raise NotImplementedError

    def _float32_gain(self):
        """The learnable per-channel gain in float32, or None."""
        return None

    def standardized_kernel(self):
        """The kernel the convolution uses, in float32.

        Its backward pass reads only the kernel and per-channel statistics:
        the centred kernel is recomputed there rather than kept alive from
        the forward pass, as automatic differentiation would (one kernel-sized
        copy per convolution for the whole training step).
        """
        kernel = ops.cast(self._kernel, "float32")
        gain = self._float32_gain()
        if gain is None:
            gain = ops.ones((self.filters,), "float32")
        return _standardize(kernel, gain, self._channel_scale)

    def call(self, inputs):
        kernel = ops.cast(self.standardized_kernel(), self.compute_dtype)
        outputs = self.convolution_op(inputs, kernel)
        if self.use_bias:
            outputs = ops.add(outputs, ops.cast(self.bias, self.compute_dtype))
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

    # Conv2D saves only kernel and bias; save and load every variable
    # (kernel, bias, gain) instead, in creation order.
    def save_own_variables(self, store):
        keras.layers.Layer.save_own_variables(self, store)

    def load_own_variables(self, store):
        keras.layers.Layer.load_own_variables(self, store)


@keras.saving.register_keras_serializable(package=PACKAGE)
class ScaledStdConv2D(_StandardizedConv2D):
    """Conv2D with Scaled Weight Standardization and a learnable gain.

    The kernel used in the convolution is standardised per output channel
    over its fan-in axes (H, W, I of the HWIO kernel; grouped convolutions
    standardise each filter over its own ``C_in / groups`` inputs) and
    scaled by a learnable per-channel ``gain`` (Brock et al. 2021,
    arXiv:2101.08692 §4; reference doc §4). Statistics are computed in
    float32 whatever the dtype policy; the convolution itself (padding,
    strides) is Keras's own, groups run per group (`PerGroupConv2D`).

    Args:
        filters, kernel_size, strides, padding, groups, use_bias, ...:
            as for `keras.layers.Conv2D`. Padding defaults to ``"same"``,
            the TensorFlow/XLA rule the reference uses (§3.7).
        convention: ``"deepmind"`` (default) or ``"timm"``: which
            standardisation formula (see module docstring).
        eps: the epsilon of that formula; defaults to 1e-4 (deepmind) or
            1e-5 (timm).
        gamma: an extra constant multiplier of the standardised kernel.
            timm's non-``dm_`` NF models fold the activation gain into the
            convolution this way; leave it at 1 otherwise.
        gain_initializer: initializer of ``gain`` (default ones).

    Example:
    >>> conv = ScaledStdConv2D(16, 3, strides=2)
    >>> conv(np.zeros((1, 32, 32, 3))).shape
    (1, 16, 16, 16)
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="same",
        convention="deepmind",
        eps=None,
        gamma=1.0,
        gain_initializer="ones",
        kernel_initializer=None,
        **kwargs,
    ):
        _check_convention(convention)
        if kernel_initializer is None:
            # deepmind-research `base.WSConv2D`: VarianceScaling(1, fan_in,
            # untruncated normal) = N(0, 1 / fan_in) (reference doc §3.10).
            kernel_initializer = keras.initializers.VarianceScaling(
                1.0, "fan_in", "untruncated_normal"
            )
        super().__init__(
            filters,
            kernel_size,
            strides=strides,
            padding=padding,
            kernel_initializer=kernel_initializer,
            **kwargs,
        )
        self.convention = convention
        self.eps = float(
            eps
            if eps is not None
            else (DEEPMIND_WS_EPS if convention == "deepmind" else TIMM_WS_EPS)
        )
        self.gamma = float(gamma)
        self.gain_initializer = keras.initializers.get(gain_initializer)

    def build(self, input_shape):
        super().build(input_shape)
        self.gain = self.add_weight(
            name="gain",
            shape=(self.filters,),
            initializer=self.gain_initializer,
            trainable=True,
            dtype=self.dtype,
        )
        self.gain._autocast = False

    def _float32_gain(self):
        return ops.cast(self.gain, "float32")

    def _channel_scale(self, var):
        if self.convention == "deepmind":
            # deepmind-research `base.WSConv2D`: (w - mean) * gain *
            # rsqrt(max(N * var, eps)). Below the floor var gets no gradient
            # (at the floor it does, as TensorFlow's `maximum` gives ties to x).
            floored = ops.maximum(var * self.fan_in, self.eps)
            scale = ops.rsqrt(floored) * self.gamma
            derivative = -0.5 * self.fan_in * scale / floored
            return scale, ops.where(var * self.fan_in >= self.eps, derivative, 0.0)
        # timm `ScaledStdConv2d`: batch_norm of the kernel with weight
        # gain * gamma * N**-0.5 and eps added to the variance.
        scale = ops.rsqrt(var + self.eps) * (self.gamma * self.fan_in**-0.5)
        return scale, -0.5 * scale / (var + self.eps)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "convention": self.convention,
                "eps": self.eps,
                "gamma": self.gamma,
                "gain_initializer": keras.initializers.serialize(
                    self.gain_initializer
                ),
            }
        )
        return config


# Plain-WS epsilon conventions (extensions reference §2.1): big_vision
# `bit.py` `StdConv` adds 1e-5 to the population std; timm `StdConv2d`
# adds 1e-6 to the variance.
STD_WS_EPS = {"std": 1e-5, "var": 1e-6}


@keras.saving.register_keras_serializable(package=PACKAGE)
class StdConv2D(_StandardizedConv2D):
    """Conv2D with plain Weight Standardization (Qiao et al. 2019, arXiv:1903.10520).

    The convolution uses ``(W - mean) / std`` per output channel, statistics
    over the fan-in axes (H, W, I) in float32, with no gain and no fan-in
    scaling: the convolution of GroupNorm + WS networks (BiT, "BYOL works
    even without batch statistics"). `ScaledStdConv2D` is the NF variant.

    Args:
        filters, kernel_size, strides, padding, groups, use_bias, ...:
            as for `keras.layers.Conv2D`. Padding defaults to ``"same"``
            and `use_bias` to `False` (a normalisation layer follows).
        eps: the epsilon; defaults to 1e-5 (``eps_mode="std"``) or 1e-6
            (``eps_mode="var"``).
        eps_mode: ``"std"`` divides by ``std + eps`` (big_vision `bit.py`
            `StdConv`, the BiT models) or ``"var"`` by ``sqrt(var + eps)``
            (timm `StdConv2d`). Both use the population variance.

    Example:
    >>> conv = StdConv2D(16, 3)
    >>> conv(np.zeros((1, 8, 8, 3))).shape
    (1, 8, 8, 16)
    """

    def __init__(
        self,
        filters,
        kernel_size,
        strides=(1, 1),
        padding="same",
        use_bias=False,
        eps=None,
        eps_mode="std",
        **kwargs,
    ):
        if eps_mode not in STD_WS_EPS:
            raise ValueError(
                f"`eps_mode` must be one of {tuple(STD_WS_EPS)}. Received: eps_mode={eps_mode!r}"
            )
        super().__init__(
            filters, kernel_size, strides=strides, padding=padding, use_bias=use_bias, **kwargs
        )
        self.eps_mode = eps_mode
        self.eps = float(STD_WS_EPS[eps_mode] if eps is None else eps)

    def _channel_scale(self, var):
        if self.eps_mode == "std":
            std = ops.sqrt(var)
            scale = 1.0 / (std + self.eps)
            # A constant filter (std 0) has no centred part to scale: 0, not NaN.
            return scale, ops.divide_no_nan(-0.5 * scale * scale, std)
        scale = ops.rsqrt(var + self.eps)
        return scale, -0.5 * scale / (var + self.eps)

    def get_config(self):
        config = super().get_config()
        config.update({"eps": self.eps, "eps_mode": self.eps_mode})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class GammaAct(keras.layers.Layer):
    """An activation multiplied by its gain gamma, then by a constant `beta`.

    Computes ``(act(x) * gamma) * beta`` in that order (reference doc §3.3,
    §10). gamma comes from the reference table (`GAMMA`) unless given. GELU
    is the tanh approximation under the ``"deepmind"`` convention and the
    exact erf form under ``"timm"`` (reference doc §1 item 1).

    Args:
        activation: a name of the gamma table (``"gelu"``, ``"relu"``,
            ``"silu"``/``"swish"``, ...).
        gamma: the gain; `None` takes the table's value.
        beta: an extra constant factor (the NF block's 1 / expected std).
        convention: ``"deepmind"`` or ``"timm"``.
    """

    def __init__(
        self, activation="gelu", gamma=None, beta=1.0, convention="deepmind", **kwargs
    ):
        super().__init__(**kwargs)
        _check_convention(convention)
        self.activation = canonical_activation(activation)
        self.gamma = float(GAMMA[self.activation] if gamma is None else gamma)
        self.beta = float(beta)
        self.convention = convention
        self.supports_masking = True

    def _forward(self, inputs):
        x = _apply_activation(
            self.activation, inputs, approximate_gelu=self.convention == "deepmind"
        )
        if self.gamma != 1.0:
            x = x * self.gamma
        if self.beta != 1.0:
            x = x * self.beta
        return x

    def call(self, inputs):
        if self.activation != "gelu":
            return self._forward(inputs)
        # GELU's automatic gradient keeps five input-sized intermediates of
        # the formula alive until the backward pass (NFNet-F0, 192 px, batch
        # 8: ~0.9 GB); this one reads only the input.
        approximate = self.convention == "deepmind"
        factor = self.gamma * self.beta

        @ops.custom_gradient
        def scaled_gelu(x):
            def grad(*args, upstream=None):
                upstream = args[0] if upstream is None else upstream
                dtype = keras.backend.standardize_dtype(x.dtype)
                exact = ops.cast(x, "float32") if dtype in ("float16", "bfloat16") else x
                derivative = _gelu_derivative(exact, approximate) * factor
                return upstream * ops.cast(derivative, upstream.dtype)

            return self._forward(x), grad

        return scaled_gelu(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "activation": self.activation,
                "gamma": self.gamma,
                "beta": self.beta,
                "convention": self.convention,
            }
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SqueezeExcite(keras.layers.Layer):
    """Squeeze-and-Excite with a gated output scaled by `gate_gain`.

    ``x * gate_gain * sigmoid(fc2(relu(fc1(mean_hw(x)))))`` — the plain ReLU
    and the factor 2 of deepmind-research `base.SqueezeExcite` / `NFBlock`
    (reference doc §3.9; the 2 rescales the gate's expected value 0.5 to 1).

    Args:
        hidden_units: width of the bottleneck (`fc1` output).
        gate_gain: constant multiplying the gate (2.0 in every NF model).
    """

    def __init__(self, hidden_units, gate_gain=2.0, **kwargs):
        super().__init__(**kwargs)
        if not isinstance(hidden_units, int) or hidden_units < 1:
            raise ValueError(
                "`hidden_units` must be a positive integer. "
                f"Received: hidden_units={hidden_units!r}"
            )
        self.hidden_units = hidden_units
        self.gate_gain = float(gate_gain)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        # Haiku Linear default init: truncated normal, stddev 1/sqrt(fan_in)
        # (reference doc §3.10).
        self.fc1 = keras.layers.Dense(
            self.hidden_units,
            kernel_initializer=keras.initializers.TruncatedNormal(
                stddev=1.0 / math.sqrt(channels)
            ),
            dtype=self.dtype_policy,
            name="fc1",
        )
        self.fc2 = keras.layers.Dense(
            channels,
            kernel_initializer=keras.initializers.TruncatedNormal(
                stddev=1.0 / math.sqrt(self.hidden_units)
            ),
            dtype=self.dtype_policy,
            name="fc2",
        )
        self.fc1.build((None, channels))
        self.fc2.build((None, self.hidden_units))

    def call(self, inputs):
        squeezed = ops.mean(inputs, axis=(1, 2))
        gate = ops.sigmoid(self.fc2(ops.relu(self.fc1(squeezed))))
        gate = gate[:, None, None, :]
        return (self.gate_gain * gate) * inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_units": self.hidden_units, "gate_gain": self.gate_gain})
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class StochasticDepth(keras.layers.Layer):
    """Drops a residual branch per example during training.

    DeepMind's form (`base.StochDepth`, reference doc §3.5) keeps a sample
    with probability ``1 - rate`` and does **not** rescale the kept ones;
    ``scale_by_keep=True`` gives timm's `DropPath` (divides by the keep
    probability). Identity at inference.
    """

    def __init__(self, rate, scale_by_keep=False, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= float(rate) < 1.0:
            raise ValueError(
                f"`rate` must be in [0, 1). Received: rate={rate!r}"
            )
        self.rate = float(rate)
        self.scale_by_keep = bool(scale_by_keep)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=False):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, seed=self.seed_generator, dtype="float32")
        mask = ops.cast(ops.floor(keep + noise), inputs.dtype)
        if self.scale_by_keep:
            mask = mask / keep
        return inputs * mask

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {"rate": self.rate, "scale_by_keep": self.scale_by_keep, "seed": self.seed}
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class SkipGain(keras.layers.Layer):
    """Scales a residual branch by a learnable scalar, then by `alpha`.

    ``(x * skip_gain) * alpha`` with ``skip_gain`` initialised to 0 (SkipInit;
    deepmind-research `nfnet.NFBlock`, reference doc §1 item 9), so each
    block starts as the identity. `alpha` is the NF block's residual scale
    (0.2 in every NF model, reference doc §3.4).
    """

    def __init__(self, alpha=0.2, gain_initializer="zeros", **kwargs):
        super().__init__(**kwargs)
        self.alpha = float(alpha)
        self.gain_initializer = keras.initializers.get(gain_initializer)

    def build(self, input_shape):
        self.skip_gain = self.add_weight(
            name="skip_gain", shape=(), initializer=self.gain_initializer
        )

    def call(self, inputs):
        return (inputs * ops.cast(self.skip_gain, inputs.dtype)) * self.alpha

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "alpha": self.alpha,
                "gain_initializer": keras.initializers.serialize(self.gain_initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class Normalize(keras.layers.Layer):
    """Per-channel ``(x - mean) / std`` with constants, for in-model preprocessing."""

    def __init__(self, mean, std, **kwargs):
        super().__init__(**kwargs)
        self.mean = [float(m) for m in mean]
        self.std = [float(s) for s in std]

    def call(self, inputs):
        inputs = ops.cast(inputs, self.compute_dtype)
        mean = ops.convert_to_tensor(self.mean, dtype=inputs.dtype)
        std = ops.convert_to_tensor(self.std, dtype=inputs.dtype)
        return (inputs - mean) / std

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"mean": self.mean, "std": self.std})
        return config


def eca_kernel_size(channels, gamma=2, beta=1):
    """The ECA kernel size of `channels` (timm `timm/layers/eca.py`
    `EcaModule`, from ECA-Net, Wang et al. 2020, arXiv:1910.03151 eq. 12):
    ``t = int(|log2(C) + beta| / gamma)``, made odd (``t + 1`` when even),
    at least 3."""
    t = int(abs(math.log(channels, 2) + beta) / gamma)
    return max(t if t % 2 else t + 1, 3)


@keras.saving.register_keras_serializable(package=PACKAGE)
class EfficientChannelAttention(keras.layers.Layer):
    """Efficient Channel Attention with a gated output scaled by `gate_gain`.

    ``x * gate_gain * sigmoid(conv1d_k(mean_hw(x)))``: the spatial mean of
    each channel, a bias-free 1-D convolution of size k along the channel
    axis (zero padding (k - 1) / 2 on both ends), a sigmoid gate (Wang et al.
    2020, arXiv:1910.03151; timm `timm/layers/eca.py` `EcaModule`). k follows
    `eca_kernel_size` unless given. The factor 2 of the NF models (timm
    `NfCfg.attn_gain`) rescales the gate's expected value 0.5 to 1.

    Args:
        kernel_size: odd size of the channel convolution; `None` (default)
            derives it from the number of input channels.
        gate_gain: constant multiplying the gate (2.0 in every NF model).

    Example:
    >>> eca = EfficientChannelAttention()
    >>> eca(np.ones((2, 4, 4, 256))).shape
    (2, 4, 4, 256)
    >>> eca.kernel.shape  # k = 5 for 256 channels
    (5, 1, 1)
    """

    def __init__(self, kernel_size=None, gate_gain=2.0, **kwargs):
        super().__init__(**kwargs)
        if kernel_size is not None and (
            not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0
        ):
            raise ValueError(
                "`kernel_size` must be None or a positive odd integer. "
                f"Received: kernel_size={kernel_size!r}"
            )
        self.kernel_size = kernel_size
        self.gate_gain = float(gate_gain)

    def build(self, input_shape):
        size = self.kernel_size or eca_kernel_size(int(input_shape[-1]))
        # A Keras Conv1D kernel (width, in, out) over the channel axis; PyTorch
        # Conv1d default init U(-1/sqrt(k), 1/sqrt(k)) (timm keeps it).
        bound = 1.0 / math.sqrt(size)
        self.kernel = self.add_weight(
            name="kernel",
            shape=(size, 1, 1),
            initializer=keras.initializers.RandomUniform(-bound, bound),
        )

    def call(self, inputs):
        squeezed = ops.mean(inputs, axis=(1, 2))[:, :, None]  # (N, C, 1)
        kernel = ops.cast(self.kernel, squeezed.dtype)
        # 'same' pads (k - 1) / 2 on both ends for odd k, as timm's Conv1d.
        gate = ops.sigmoid(ops.conv(squeezed, kernel, padding="same"))[:, :, 0]
        return (self.gate_gain * gate[:, None, None, :]) * inputs

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"kernel_size": self.kernel_size, "gate_gain": self.gate_gain})
        return config
