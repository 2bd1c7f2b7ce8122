"""FilterOrthogonal: the extension reference's test vectors, BigGAN-PyTorch's
gradient, and Keras's own (different) OrthogonalRegularizer."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from nfnet_keras.regularizers import FilterOrthogonal

# A Dense kernel (in 2, units 3): filters (1, 0), (0, 1), (1, 1)
# (extensions reference §6.3).
K = np.array([[1.0, 0.0, 1.0], [0.0, 1.0, 1.0]], "float32")


def test_reference_vectors():
    assert float(FilterOrthogonal(1.0, "biggan")(K)) == pytest.approx(4.0)
    assert float(FilterOrthogonal(1.0, "npe")(K)) == pytest.approx(5.0)
    assert float(FilterOrthogonal(1e-4, "biggan")(K)) == pytest.approx(4e-4)


def test_keras_orthogonal_regularizer_is_the_cosine_dense_only_form():
    dense = tf.constant(K)
    assert float(keras.regularizers.OrthogonalRegularizer(1.0, mode="columns")(dense)) == pytest.approx(
        np.sqrt(2) / 3, abs=1e-4  # 0.4714
    )
    assert float(keras.regularizers.OrthogonalRegularizer(1.0, mode="rows")(dense)) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="rank 2"):
        keras.regularizers.OrthogonalRegularizer(1.0)(tf.zeros((3, 3, 2, 4)))


@pytest.mark.parametrize("mode", ["biggan", "npe"])
def test_zero_for_orthonormal_filters(mode):
    q, _ = np.linalg.qr(np.random.default_rng(0).standard_normal((3 * 3 * 2, 5)))
    kernel = q.reshape(3, 3, 2, 5).astype("float32")  # HWIO, filters orthonormal
    assert float(FilterOrthogonal(1.0, mode)(kernel)) == pytest.approx(0.0, abs=1e-5)
    # BigGAN's form leaves the filter norms free; NPE's pulls them to 1.
    doubled = float(FilterOrthogonal(1.0, mode)(2 * kernel))
    assert doubled == pytest.approx(0.0, abs=1e-4) if mode == "biggan" else doubled > 1.0


def test_gradient_is_twice_biggan_pytorch_injected_gradient():
    rng = np.random.default_rng(1)
    kernel = rng.standard_normal((3, 3, 4, 6)).astype("float32")  # HWIO
    beta = 1e-4
    variable = tf.Variable(kernel)
    with tf.GradientTape() as tape:
        penalty = FilterOrthogonal(beta)(variable)
    gradient = tape.gradient(penalty, variable).numpy()
    # ajbrock/BigGAN-PyTorch `utils.ortho`: w = W.view(out, -1) (OIHW), then
    # grad += 2 * beta * ((w @ w.T) * (1 - I)) @ w.
    oihw = kernel.transpose(3, 2, 0, 1).astype(np.float64)
    w = oihw.reshape(6, -1)
    injected = (2 * beta * ((w @ w.T) * (1 - np.eye(6))) @ w).reshape(oihw.shape)
    np.testing.assert_allclose(gradient, 2 * injected.transpose(2, 3, 1, 0), rtol=1e-4, atol=1e-9)


def test_attaches_to_conv_layers_and_serializes():
    regularizer = FilterOrthogonal(1e-3, mode="npe")
    conv = keras.layers.Conv2D(8, 3, kernel_regularizer=regularizer)
    model = keras.Sequential([keras.Input((6, 6, 2)), conv])
    model(np.zeros((1, 6, 6, 2), "float32"))
    assert float(model.losses[0]) == pytest.approx(float(regularizer(conv.kernel)))
    restored = keras.saving.deserialize_keras_object(keras.saving.serialize_keras_object(regularizer))
    assert (restored.beta, restored.mode) == (1e-3, "npe")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="`mode` must be one of"):
        FilterOrthogonal(mode="l2")
    with pytest.raises(ValueError, match="`beta` must be a non-negative float"):
        FilterOrthogonal(beta=-1.0)
    with pytest.raises(ValueError, match="rank >= 2"):
        FilterOrthogonal()(np.zeros((4,), "float32"))
