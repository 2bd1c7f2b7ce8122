"""Plain WS, EvoNorm and the batch-independent baselines, against NumPy
transcriptions of the references and against timm."""

import os
import sys

import keras
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from test_layers import numpy_conv2d_same  # noqa: E402

from nfnet_keras import baselines  # noqa: E402
from nfnet_keras.layers import StdConv2D  # noqa: E402
from nfnet_keras.normalization import EvoNormB0, EvoNormS0  # noqa: E402

RNG = np.random.default_rng(0)


# ---------------------------------------------------------------------------
# StdConv2D.


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
# EvoNorm: tensorflow/tpu `resnet_model.py` transcribed into NumPy (NHWC).


def tf_evonorm_b0(x, gamma, beta, v, moving_variance, training, decay=0.9, eps=1e-5):
    """`evonorm(layer=B0)` with `_batch_std` and `_instance_std`; returns (y, new moving var)."""
    x = x.astype(np.float64)
    if training:
        variance = x.var(axis=(0, 1, 2))
        moving_variance = moving_variance - (moving_variance - variance) * (1 - decay)
    else:
        variance = moving_variance
    left = np.sqrt(variance + eps)
    right = v * x + np.sqrt(x.var(axis=(1, 2), keepdims=True) + eps)
    return x / np.maximum(left, right) * gamma + beta, moving_variance


def tf_evonorm_s0(x, gamma, beta, v, num_groups=32, eps=1e-5):
    """`evonorm(layer=S0)` with `_group_std` (channels_last)."""
    x = x.astype(np.float64)
    n, h, w, c = x.shape
    while num_groups > 1 and c % num_groups:
        num_groups -= 1
    grouped = x.reshape(n, h, w, num_groups, c // num_groups)
    std = np.sqrt(grouped.var(axis=(1, 2, 4), keepdims=True) + eps)
    std = np.broadcast_to(std, grouped.shape).reshape(x.shape)
    return x * (1 / (1 + np.exp(-v * x))) / std * gamma + beta


def _randomize(layer, channels):
    values = {
        "gamma": RNG.uniform(0.5, 1.5, channels),
        "beta": RNG.normal(0, 0.5, channels),
        "v": RNG.normal(0, 1, channels),
        "moving_variance": RNG.uniform(0.5, 2.0, channels),
    }
    for weight in layer.weights:
        weight.assign(values[weight.name].astype("float32"))
    return {w.name: w.numpy().astype(np.float64) for w in layer.weights}


def test_evonorm_b0_matches_the_reference_in_training_and_inference():
    x = (RNG.standard_normal((4, 5, 6, 8)) * 2 + 0.3).astype("float32")
    layer = EvoNormB0()
    layer.build(x.shape)
    p = _randomize(layer, 8)
    expected, moving = tf_evonorm_b0(x, p["gamma"], p["beta"], p["v"], p["moving_variance"], True)
    np.testing.assert_allclose(layer(x, training=True).numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), moving, rtol=1e-6)
    expected, _ = tf_evonorm_b0(x, p["gamma"], p["beta"], p["v"], moving, False)
    np.testing.assert_allclose(layer(x, training=False).numpy(), expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(layer.moving_variance.numpy(), moving, rtol=1e-6)  # untouched


@pytest.mark.parametrize("groups,group_size", [(32, None), (4, None), (None, 8)])
def test_evonorm_s0_matches_the_reference(groups, group_size):
    x = (RNG.standard_normal((3, 5, 4, 64)) * 2 + 0.3).astype("float32")
    layer = EvoNormS0(groups=groups, group_size=group_size)
    layer.build(x.shape)
    p = _randomize(layer, 64)
    expected = tf_evonorm_s0(x, p["gamma"], p["beta"], p["v"], num_groups=groups or 64 // group_size)
    np.testing.assert_allclose(layer(x).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer_class", [EvoNormB0, EvoNormS0])
def test_evonorm_affine_only_mode(layer_class):
    x = RNG.standard_normal((2, 3, 3, 32)).astype("float32")
    layer = layer_class(apply_act=False)
    layer.build(x.shape)
    assert sorted(w.name for w in layer.weights) == ["beta", "gamma"]
    p = _randomize(layer, 32)
    np.testing.assert_allclose(layer(x, training=True) if layer_class is EvoNormB0 else layer(x),
                               x * p["gamma"] + p["beta"], rtol=1e-6, atol=1e-6)


def _to_timm(layer, reference, torch):
    names = {"gamma": "weight", "beta": "bias", "v": "v", "moving_variance": "running_var"}
    with torch.no_grad():
        for weight in layer.weights:
            getattr(reference, names[weight.name]).copy_(torch.from_numpy(weight.numpy()))


def test_evonorm_matches_timm_and_the_moving_variance_convention_is_documented():
    from _timm import timm, torch

    x = (RNG.standard_normal((4, 5, 6, 64)) + 0.2).astype("float32")
    nchw = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())
    s0 = EvoNormS0()
    s0.build(x.shape)
    _randomize(s0, 64)
    timm_s0 = timm.layers.EvoNorm2dS0(64, groups=32, eps=1e-5)
    _to_timm(s0, timm_s0, torch)
    with torch.no_grad():
        np.testing.assert_allclose(s0(x).numpy(), timm_s0(nchw).numpy().transpose(0, 2, 3, 1),
                                   rtol=1e-5, atol=1e-6)

    b0 = EvoNormB0()
    b0.build(x.shape)
    _randomize(b0, 64)
    timm_b0 = timm.layers.EvoNorm2dB0(64, eps=1e-5)  # timm's default epsilon is 1e-3
    _to_timm(b0, timm_b0, torch)
    before = b0.moving_variance.numpy().copy()
    with torch.no_grad():
        np.testing.assert_allclose(b0(x, training=True).numpy(),
                                   timm_b0.train()(nchw).numpy().transpose(0, 2, 3, 1),
                                   rtol=1e-5, atol=1e-6)
        # Same decay (timm momentum 0.1); timm feeds the unbiased batch variance.
        n = x.size / 64
        ours = b0.moving_variance.numpy() - 0.9 * before
        theirs = timm_b0.running_var.numpy() - 0.9 * before
        np.testing.assert_allclose(theirs, ours * n / (n - 1), rtol=1e-5)
        # With equal moving variances the inference passes agree.
        _to_timm(b0, timm_b0, torch)
        np.testing.assert_allclose(b0(x, training=False).numpy(),
                                   timm_b0.eval()(nchw).numpy().transpose(0, 2, 3, 1),
                                   rtol=1e-5, atol=1e-6)


def test_evonorm_arguments_are_checked_and_serialized():
    with pytest.raises(ValueError, match="`groups` must divide the channel count 48"):
        EvoNormS0(groups=32).build((None, 4, 4, 48))
    with pytest.raises(ValueError, match="`momentum` must be a float in"):
        EvoNormB0(momentum=1.0)
    with pytest.raises(ValueError, match="expects NHWC inputs of rank 4"):
        EvoNormB0().build((None, 8))
    layer = EvoNormS0(group_size=8, apply_act=False, gamma_initializer="zeros")
    config = keras.saving.serialize_keras_object(layer)
    restored = keras.saving.deserialize_keras_object(config)
    assert (restored.group_size, restored.apply_act) == (8, False)


# ---------------------------------------------------------------------------
# The normalised ResNet baselines.


def test_gn_ws_resnet50_has_the_resnet50_parameter_count():
    from _timm import timm

    reference = timm.create_model("resnet50_gn")  # ResNet-50 v1.5 with GroupNorm
    expected = sum(p.numel() for p in reference.parameters())
    assert baselines.GNWSResNet50().count_params() == expected == 25_557_032
    # EvoNorm adds one `v` per channel of every normalisation followed by a ReLU
    # (stem 64, and two bottleneck widths per block).
    v_params = 64 + sum(d * 2 * w // 4 for d, w in zip((3, 4, 6, 3), (256, 512, 1024, 2048)))
    assert baselines.EvoNormS0ResNet50().count_params() == expected + v_params


def _randomized_tiny(norm, dtype="float32"):
    policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(dtype)
    try:
        model = baselines.ResNetV1(norm, depths=(1, 1), widths=(64, 128), stem_width=32, groups=8,
                                   include_top=False, input_shape=(32, 32, 3))
    finally:
        keras.config.set_dtype_policy(policy)
    rng = np.random.default_rng(1)
    for variable in model.weights:  # gammas away from their zero/one init
        offset = 1.0 if variable.name in ("gamma", "moving_variance") else 0.0
        variable.assign(offset + 0.3 * rng.standard_normal(variable.shape).astype("float32"))
        if variable.name == "moving_variance":
            variable.assign(np.abs(variable.numpy()))
    return model


@pytest.mark.parametrize("norm", ["gn_ws", "evonorm_s0"])
def test_batch_independent_baselines(norm):
    # In float64, so that the convolutions' batch-size-dependent float32
    # summation order (~5e-6 here) does not hide what is tested: no
    # statistic mixes examples.
    model = _randomized_tiny(norm, "float64")
    images = np.random.default_rng(2).standard_normal((64, 32, 32, 3))
    batch = model(images, training=True).numpy()
    assert np.abs(batch).max() > 0.1
    for i in (0, 17, 63):
        alone = model(images[i : i + 1], training=True).numpy()
        np.testing.assert_allclose(alone[0], batch[i], rtol=0, atol=1e-6)


def test_evonorm_b0_baseline_depends_on_the_batch_in_training():
    # The control that shows the test above can fail.
    model = _randomized_tiny("evonorm_b0")
    images = np.random.default_rng(2).standard_normal((64, 32, 32, 3)).astype("float32")
    batch = model(images, training=True).numpy()
    alone = model(images[:1], training=True).numpy()
    assert np.abs(alone[0] - batch[0]).max() > 1e-3


@pytest.mark.parametrize("layer_class", [EvoNormB0, EvoNormS0])
def test_evonorm_under_mixed_precision(layer_class):
    x = (RNG.standard_normal((4, 5, 6, 32)) + 0.2).astype("float32")
    reference = layer_class()
    mixed = layer_class(dtype="mixed_float16")
    reference.build(x.shape)
    mixed.build(x.shape)
    _randomize(reference, 32)
    for source, target in zip(reference.weights, mixed.weights):
        target.assign(source.numpy())
    out = mixed(x.astype("float16"), training=True)
    assert keras.backend.standardize_dtype(out.dtype) == "float16"
    np.testing.assert_allclose(out.numpy(), reference(x, training=True).numpy(), rtol=1e-2, atol=1e-2)
    if layer_class is EvoNormB0:  # statistics kept in float32
        assert keras.backend.standardize_dtype(mixed.moving_variance.dtype) == "float32"
        np.testing.assert_allclose(mixed.moving_variance.numpy(), reference.moving_variance.numpy(),
                                   rtol=1e-3)
