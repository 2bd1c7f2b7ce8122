"""EvoNorm-B0 and EvoNorm-S0 (`nfnet_keras.normalization`), against NumPy
transcriptions of the references and against timm."""

import os
import sys

import keras
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from nfnet_keras.normalization import EvoNormB0, EvoNormS0  # noqa: E402

RNG = np.random.default_rng(0)


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
