"""The normalised ResNet baselines (`nfnet_keras.baselines`): parameter
counts against timm, and which of them mix the examples of a batch."""

import inspect
import os
import sys

import keras
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

from nfnet_keras import baselines  # noqa: E402


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


def test_constructors_show_and_check_the_keras_applications_arguments():
    application = ["include_top", "input_shape", "pooling", "classes", "classifier_activation", "name"]
    for constructor, own in [
        (baselines.BNResNetV2, ["depths", "order", "widths", "stem_width", "kernel_initializer"]),
        (baselines.ResNetV1, ["norm", "depths", "widths", "stem_width", "groups"]),
    ]:
        assert list(inspect.signature(constructor).parameters) == own + application
        with pytest.raises(TypeError, match=rf"{constructor.__name__}\(\) got an unexpected keyword argument 'width'"):
            constructor(width=2, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="`pooling` must be None, 'avg' or 'max'. Received: pooling='mean'"):
        baselines.ResNetV1(pooling="mean")
    model = baselines.BNResNetV2((1,), widths=(64,), stem_width=8, include_top=False, pooling="avg",
                                 input_shape=(32, 32, 3), name="probe")
    assert model.name == "probe" and model.output.shape == (None, 64)
