"""Layers (`nfnet_keras.layers`) against NumPy transcriptions of the reference
formulas and against timm."""

import math

import keras
import numpy as np
import pytest

from nfnet_keras import layers as nfl
from nfnet_keras.layers import StdConv2D

RNG = np.random.default_rng(0)


def numpy_conv2d_same(x, w, stride=1, groups=1):
    """Direct NHWC convolution with TF SAME padding (reference doc §3.7)."""
    n, h, wd, cin = x.shape
    kh, kw, cin_g, cout = w.shape
    out_h, out_w = math.ceil(h / stride), math.ceil(wd / stride)
    pad_h = max((out_h - 1) * stride + kh - h, 0)
    pad_w = max((out_w - 1) * stride + kw - wd, 0)
    xp = np.pad(
        x,
        ((0, 0), (pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2), (0, 0)),
    )
    out = np.zeros((n, out_h, out_w, cout), np.float64)
    cout_g = cout // groups
    for g in range(groups):
        xs = xp[..., g * cin_g : (g + 1) * cin_g]
        ws = w[..., g * cout_g : (g + 1) * cout_g]
        for i in range(out_h):
            for j in range(out_w):
                patch = xs[:, i * stride : i * stride + kh, j * stride : j * stride + kw, :]
                out[:, i, j, g * cout_g : (g + 1) * cout_g] = np.tensordot(
                    patch, ws, axes=([1, 2, 3], [0, 1, 2])
                )
    return out


def numpy_ws(w, gain, convention):
    w = w.astype(np.float64)
    fan_in = np.prod(w.shape[:-1])
    mean = w.mean(axis=(0, 1, 2), keepdims=True)
    var = w.var(axis=(0, 1, 2), keepdims=True)
    if convention == "deepmind":
        # deepmind-research base.WSConv2D
        return (w - mean) * gain / np.sqrt(np.maximum(var * fan_in, 1e-4))
    # timm ScaledStdConv2d: (w - mean) / sqrt(var + eps) * gain * fan_in**-0.5
    return (w - mean) / np.sqrt(var + 1e-5) * gain * fan_in**-0.5


@pytest.mark.parametrize("convention", ["deepmind", "timm"])
@pytest.mark.parametrize("stride,groups,size", [(1, 1, (7, 9)), (2, 2, (8, 8)), (2, 3, (7, 6))])
def test_scaled_std_conv_matches_formula(convention, stride, groups, size):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, *size, 6)).astype("float32")
    conv = nfl.ScaledStdConv2D(6, 3, strides=stride, groups=groups, convention=convention)
    conv.build(x.shape)
    w = rng.standard_normal(conv._kernel.shape).astype("float32")
    gain = rng.uniform(0.5, 1.5, (6,)).astype("float32")
    bias = rng.standard_normal((6,)).astype("float32")
    conv.set_weights([w, bias, gain])
    expected = numpy_conv2d_same(x, numpy_ws(w, gain, convention), stride, groups) + bias
    np.testing.assert_allclose(conv(x), expected, rtol=1e-5, atol=1e-5)


def test_ws_conventions_differ_where_reference_says():
    # DeepMind floors N*var at 1e-4; timm adds 1e-5 to var: for a filter
    # with squared norm ~1 the two differ by ~(1 + N*1e-5/|w-mu|^2)^-1/2.
    conv_dm = nfl.ScaledStdConv2D(4, 3, convention="deepmind")
    conv_tm = nfl.ScaledStdConv2D(4, 3, convention="timm")
    conv_dm.build((1, 8, 8, 128))
    conv_tm.build((1, 8, 8, 128))
    conv_tm.set_weights(conv_dm.get_weights())
    k_dm = keras.ops.convert_to_numpy(conv_dm.standardized_kernel())
    k_tm = keras.ops.convert_to_numpy(conv_tm.standardized_kernel())
    w = conv_dm.get_weights()[0]
    centred_sq = ((w - w.mean(axis=(0, 1, 2))) ** 2).sum(axis=(0, 1, 2))
    ratio = (1 + 1152 * 1e-5 / centred_sq) ** -0.5
    np.testing.assert_allclose(k_tm, k_dm * ratio, rtol=1e-4, atol=1e-6)
    assert np.all(ratio < 0.9999)  # the gap is real, not rounding


def test_standardized_kernel_is_float32_under_mixed_precision():
    conv = nfl.ScaledStdConv2D(4, 3, dtype="mixed_bfloat16")
    y = conv(np.ones((1, 8, 8, 3), "float32"))
    assert keras.backend.standardize_dtype(y.dtype) == "bfloat16"
    assert conv._kernel.dtype == "float32"
    assert keras.backend.standardize_dtype(conv.standardized_kernel().dtype) == "float32"


@pytest.mark.parametrize(
    "name,convention,fn",
    [
        ("gelu", "deepmind", lambda x: 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))),
        ("gelu", "timm", lambda x: 0.5 * x * (1 + np.vectorize(math.erf)(x / np.sqrt(2)))),
        ("relu", "deepmind", lambda x: np.maximum(x, 0)),
        ("silu", "deepmind", lambda x: x / (1 + np.exp(-x))),
    ],
)
def test_gamma_act(name, convention, fn):
    x = np.linspace(-4, 4, 101).astype("float32")
    layer = nfl.GammaAct(name, beta=0.9, convention=convention)
    expected = fn(x.astype(np.float64)) * nfl.GAMMA[name] * 0.9
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)


def test_gamma_table_constants_are_reference_values():
    # deepmind-research nfnets/base.py; reference doc §3.8.
    assert nfl.GAMMA["gelu"] == 1.7015043497085571
    assert nfl.GAMMA["relu"] == 1.7139588594436646
    assert nfl.GAMMA["silu"] == 1.7881293296813965
    # gamma ~ 1/std(act(z)), z ~ N(0,1): check the relu entry analytically.
    z = np.random.default_rng(0).standard_normal(2_000_000)
    assert abs(1 / np.maximum(z, 0).std() - nfl.GAMMA["relu"]) < 5e-3


def test_gamma_act_rejects_unknown_activation():
    with pytest.raises(ValueError, match="activation"):
        nfl.GammaAct("mish")


def test_squeeze_excite():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 5, 8)).astype("float32")
    se = nfl.SqueezeExcite(4)
    se.build(x.shape)
    w1, b1 = rng.standard_normal((8, 4)), rng.standard_normal(4)
    w2, b2 = rng.standard_normal((4, 8)), rng.standard_normal(8)
    se.set_weights([a.astype("float32") for a in (w1, b1, w2, b2)])
    pooled = x.mean(axis=(1, 2))
    gate = 1 / (1 + np.exp(-(np.maximum(pooled @ w1 + b1, 0) @ w2 + b2)))
    np.testing.assert_allclose(se(x), x * 2 * gate[:, None, None, :], rtol=1e-5, atol=1e-6)


def test_stochastic_depth_drops_whole_samples_without_rescaling():
    layer = nfl.StochasticDepth(0.5, seed=1)
    x = np.ones((4000, 2, 2, 3), "float32")
    y = keras.ops.convert_to_numpy(layer(x, training=True))
    per_sample = y.reshape(4000, -1)
    assert set(np.unique(per_sample)) <= {0.0, 1.0}  # DeepMind: no 1/keep
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))
    assert abs(per_sample[:, 0].mean() - 0.5) < 0.04
    np.testing.assert_array_equal(layer(x, training=False), x)
    timm_style = nfl.StochasticDepth(0.5, scale_by_keep=True, seed=1)
    assert set(np.unique(keras.ops.convert_to_numpy(timm_style(x, training=True)))) <= {0.0, 2.0}


def test_skip_gain_starts_at_zero():
    layer = nfl.SkipGain(alpha=0.2)
    x = np.ones((2, 3), "float32")
    np.testing.assert_array_equal(layer(x), np.zeros_like(x))
    layer.skip_gain.assign(2.0)
    np.testing.assert_allclose(layer(x), x * 2.0 * 0.2)


@pytest.mark.parametrize(
    "layer,shape",
    [
        (nfl.ScaledStdConv2D(4, 3, strides=2, groups=2, convention="timm", gamma=1.5), (1, 8, 8, 4)),
        (nfl.GammaAct("silu", beta=0.5, convention="timm"), (1, 4)),
        (nfl.SqueezeExcite(2, gate_gain=2.0), (1, 3, 3, 4)),
        (nfl.EfficientChannelAttention(), (1, 3, 3, 64)),
        (nfl.StochasticDepth(0.1, scale_by_keep=True, seed=3), (2, 4)),
        (nfl.SkipGain(alpha=0.3), (1, 4)),
    ],
)
def test_layer_config_round_trip(layer, shape):
    x = np.random.default_rng(0).standard_normal(shape).astype("float32")
    y = layer(x)
    clone = layer.__class__.from_config(layer.get_config())
    clone(x)
    if layer.weights:
        clone.set_weights(layer.get_weights())
    assert clone.get_config() == layer.get_config()
    np.testing.assert_array_equal(clone(x), y)


def test_conv_rejects_bad_convention():
    with pytest.raises(ValueError, match="convention"):
        nfl.ScaledStdConv2D(4, 3, convention="torch")


def test_per_group_conv2d_equals_keras_grouped_conv2d():
    # Keras's own grouped convolution (XLA-compiled on TensorFlow) is the
    # independent reference for the per-group form.
    x = np.random.default_rng(0).standard_normal((2, 9, 11, 12)).astype("float32")
    reference = keras.layers.Conv2D(8, 3, strides=2, padding="same", groups=4)
    expected = reference(x)
    per_group = nfl.PerGroupConv2D(8, 3, strides=2, padding="same", groups=4)
    per_group.build(x.shape)
    per_group.set_weights(reference.get_weights())
    np.testing.assert_allclose(per_group(x), expected, rtol=1e-5, atol=1e-5)
    assert per_group.get_config()["groups"] == 4


# Gradients of the memory-saving backward passes (`ops.custom_gradient`)
# against TensorFlow's automatic differentiation of the plain formulas.


def _autodiff_grads(fn, *args):
    import tensorflow as tf

    args = [tf.constant(a) for a in args]
    with tf.GradientTape() as tape:
        tape.watch(args)
        out = fn(*args)
    return out, tape.gradient(out, args)


def _plain_ws(kernel, gain, layer):
    """The standardised kernel of `layer`, written out in TF ops (reference formulas)."""
    import tensorflow as tf

    fan_in = float(np.prod(kernel.shape[:-1]))
    mean = tf.reduce_mean(kernel, axis=(0, 1, 2), keepdims=True)
    var = tf.math.reduce_variance(kernel, axis=(0, 1, 2), keepdims=True)
    if isinstance(layer, nfl.StdConv2D):
        if layer.eps_mode == "std":
            return (kernel - mean) / (tf.sqrt(var) + layer.eps)
        return (kernel - mean) * tf.math.rsqrt(var + layer.eps)
    if layer.convention == "deepmind":  # deepmind-research base.WSConv2D
        scale = tf.math.rsqrt(tf.maximum(var * fan_in, layer.eps)) * gain * layer.gamma
        return kernel * scale - mean * scale
    # timm ScaledStdConv2d
    return (kernel - mean) * tf.math.rsqrt(var + layer.eps) * gain * layer.gamma * fan_in**-0.5


@pytest.mark.parametrize(
    "layer,kernel_scale",
    [
        (nfl.ScaledStdConv2D(6, 3, groups=2, convention="deepmind"), 1.0),
        (nfl.ScaledStdConv2D(6, 3, convention="deepmind", gamma=1.7), 1e-4),  # N*var under the floor
        (nfl.ScaledStdConv2D(6, 3, groups=3, convention="timm", gamma=1.7), 1.0),
        (nfl.StdConv2D(6, 3, eps_mode="std"), 1.0),
        (nfl.StdConv2D(6, 3, eps_mode="var"), 1.0),
    ],
)
def test_standardized_kernel_gradient_equals_autodiff(layer, kernel_scale):
    import tensorflow as tf

    rng = np.random.default_rng(0)
    layer.build((1, 5, 5, 6))
    kernel = (rng.standard_normal(layer._kernel.shape) * kernel_scale).astype("float32")
    layer._kernel.assign(kernel)
    gain = rng.uniform(0.5, 1.5, (6,)).astype("float32")
    if isinstance(layer, nfl.ScaledStdConv2D):
        layer.gain.assign(gain)
    upstream = tf.constant(rng.standard_normal(kernel.shape).astype("float32"))
    expected, (grad_kernel, grad_gain) = _autodiff_grads(
        lambda k, g: _plain_ws(k, g, layer) * upstream, kernel, gain)
    with tf.GradientTape() as tape:
        out = layer.standardized_kernel()
        loss = out * upstream
    got = tape.gradient(loss, layer.trainable_variables)
    np.testing.assert_allclose(loss, expected, rtol=1e-5, atol=1e-6)
    scale = np.abs(grad_kernel).max()
    np.testing.assert_allclose(got[0] / scale, grad_kernel / scale, atol=1e-6)
    if isinstance(layer, nfl.ScaledStdConv2D):
        np.testing.assert_allclose(got[-1], grad_gain, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("convention", ["deepmind", "timm"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_gamma_act_gelu_gradient_equals_autodiff(convention, dtype):
    import tensorflow as tf

    def plain(t):  # GELU in TF ops, constants in t's dtype (tf.nn.gelu rounds one to float32)
        if convention == "deepmind":
            cubic = tf.constant(0.044715, t.dtype)  # Hendrycks & Gimpel's tanh form
            y = 0.5 * t * (1 + tf.tanh(math.sqrt(2 / math.pi) * (t + cubic * t**3)))
        else:
            y = 0.5 * t * (1 + tf.math.erf(t / math.sqrt(2)))
        return y * nfl.GAMMA["gelu"] * 0.9

    x = np.linspace(-6, 6, 241).astype(dtype)
    _, (expected,) = _autodiff_grads(plain, x)
    layer = nfl.GammaAct("gelu", beta=0.9, convention=convention, dtype=dtype)
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    got = tape.gradient(y, x)
    assert got.dtype == dtype
    # A few ulps of gradients up to 1.7 (rounding of tanh near +-1 in the tails).
    tolerance = dict(rtol=0, atol=5e-6) if dtype == "float32" else dict(rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(got, expected, **tolerance)


def _saved_for_backward_bytes(layer, x):
    """Bytes of forward-pass tensors that the backward pass of `layer` reads.

    In the traced graph of forward and backward, the backward ops are those
    that depend on the upstream gradient; the forward tensors they read are
    what the forward pass must keep alive.
    """
    import tensorflow as tf

    @tf.function
    def step(x, upstream):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
        return tape.gradient(y, [x] + layer.trainable_variables, output_gradients=upstream)

    spec = tf.TensorSpec(x.shape, x.dtype)
    graph = step.get_concrete_function(spec, spec).graph
    backward = set()
    for op in graph.get_operations():  # topological order
        if op.name == "upstream" or any(t.op.name in backward for t in op.inputs):
            backward.add(op.name)
    saved = {t.ref(): t for op in graph.get_operations() if op.name in backward
             for t in op.inputs if t.op.name not in backward and t.op.type != "Const"}
    return sum(int(np.prod(t.shape)) * t.dtype.size for t in saved.values())


def test_gamma_act_gelu_backward_reads_only_its_input():
    x = np.zeros((2, 16, 16, 32), "float32")
    assert _saved_for_backward_bytes(nfl.GammaAct("gelu", beta=0.5), x) <= x.nbytes


def test_ws_conv_backward_keeps_no_kernel_sized_temporaries():
    # The convolution's backward reads its input and the standardised kernel;
    # the standardisation's backward only the kernel (no centred copy).
    conv = nfl.ScaledStdConv2D(64, 3, groups=2)
    x = np.zeros((1, 4, 4, 64), "float32")
    conv.build(x.shape)
    kernel_bytes = int(np.prod(conv._kernel.shape)) * 4
    assert _saved_for_backward_bytes(conv, x) <= x.nbytes + 2 * kernel_bytes + 4096


# ---------------------------------------------------------------------------
# StdConv2D (plain weight standardisation).


@pytest.mark.parametrize("groups", [1, 2])
def test_std_conv_is_big_vision_weight_standardization(groups):
    x = RNG.standard_normal((2, 7, 6, 4)).astype("float32")
    conv = StdConv2D(6, 3, groups=groups)
    conv.build(x.shape)
    w = RNG.standard_normal(conv.kernel.shape).astype("float32") * 3 + 0.5
    conv.set_weights([w])
    # big_vision `bit.py` StdConv: (w - mean) / (std + 1e-5), population std over (H, W, I).
    w64 = w.astype(np.float64)
    standardized = (w64 - w64.mean((0, 1, 2))) / (w64.std((0, 1, 2)) + 1e-5)
    np.testing.assert_allclose(conv(x).numpy(), numpy_conv2d_same(x, standardized, 1, groups),
                               rtol=1e-5, atol=1e-5)
    kernel = conv.standardized_kernel().numpy()
    np.testing.assert_allclose(kernel.mean((0, 1, 2)), 0, atol=1e-6)
    np.testing.assert_allclose((kernel**2).mean((0, 1, 2)), 1, atol=1e-4)


def test_std_conv_var_mode_matches_timm():
    from _timm import timm, torch

    x = RNG.standard_normal((2, 8, 8, 5)).astype("float32")
    reference = timm.layers.StdConv2d(5, 4, 3, eps=1e-6)
    conv = StdConv2D(4, 3, eps_mode="var")
    conv.build(x.shape)
    conv.set_weights([reference.weight.detach().numpy().transpose(2, 3, 1, 0)])
    with torch.no_grad():
        expected = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy().transpose(0, 2, 3, 1)
    np.testing.assert_allclose(conv(x).numpy(), expected, rtol=1e-5, atol=1e-5)
    restored = StdConv2D.from_config(conv.get_config())
    assert (restored.eps, restored.eps_mode, restored.use_bias) == (1e-6, "var", False)
    with pytest.raises(ValueError, match="`eps_mode` must be one of"):
        StdConv2D(4, 3, eps_mode="variance")


# ---------------------------------------------------------------------------
# Efficient Channel Attention.


@pytest.mark.parametrize("channels", [1, 2, 3, 8, 31, 64, 256, 512, 1000, 1024, 1536, 2048, 4096])
def test_eca_kernel_size_is_timms(channels):
    import _timm  # noqa: F401 - makes timm importable on the CPU-only torch
    from timm.layers import EcaModule

    assert nfl.eca_kernel_size(channels) == EcaModule(channels).conv.kernel_size[0]
    layer = nfl.EfficientChannelAttention()
    layer.build((None, 3, 3, channels))
    assert layer.kernel.shape == (EcaModule(channels).conv.kernel_size[0], 1, 1)


def test_eca_matches_timm_with_the_nf_gain():
    from _timm import torch
    from timm.layers import EcaModule

    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 3, 200)).astype("float32")
    reference = EcaModule(200).eval()
    assert reference.conv.weight.shape == (1, 1, 5)  # k = 5: the padding matters at both ends
    with torch.no_grad():
        reference.conv.weight.copy_(torch.from_numpy(rng.standard_normal((1, 1, 5)).astype("float32")))
        expected = 2.0 * reference(torch.from_numpy(x.transpose(0, 3, 1, 2).copy())).numpy()
    layer = nfl.EfficientChannelAttention(name="eca")
    layer.build(x.shape)
    layer.kernel.assign(np.transpose(reference.conv.weight.detach().numpy(), (2, 1, 0)))
    np.testing.assert_allclose(layer(x).numpy(), expected.transpose(0, 2, 3, 1), atol=1e-6)


def test_eca_serialises_and_refuses_bad_kernel_sizes():
    layer = nfl.EfficientChannelAttention(kernel_size=7, gate_gain=1.0, name="eca")
    clone = keras.layers.deserialize(keras.layers.serialize(layer))
    assert isinstance(clone, nfl.EfficientChannelAttention)
    assert (clone.kernel_size, clone.gate_gain) == (7, 1.0)
    for bad in (4, 0, 2.5):
        with pytest.raises(ValueError, match=f"`kernel_size` must be None or a positive odd integer. Received: kernel_size={bad}"):
            nfl.EfficientChannelAttention(kernel_size=bad)


def test_eca_model_reloads_from_a_keras_file(tmp_path):
    inputs = keras.Input((5, 3, 200))
    model = keras.Model(inputs, nfl.EfficientChannelAttention(name="eca")(inputs))
    x = np.random.default_rng(0).standard_normal((2, 5, 3, 200)).astype("float32")
    model.save(tmp_path / "eca.keras")
    clone = keras.saving.load_model(tmp_path / "eca.keras")  # no custom_objects
    np.testing.assert_array_equal(clone(x), model(x))
