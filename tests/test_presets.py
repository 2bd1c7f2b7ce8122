"""`from_preset`: pretrained backbone, fresh head, preprocessing inside, AGC
that leaves the new head unclipped whatever its name."""

import os
import sys
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

sys.path.insert(0, os.path.dirname(__file__))
from conftest import randomize  # noqa: E402

import nfnet_keras  # noqa: E402
from nfnet_keras import agc  # noqa: E402

TINY_SIZE = 32


@pytest.fixture(scope="module")
def tiny_file(tmp_path_factory):
    """A converted 1000-class checkpoint of the tiny row (random weights)."""
    model = nfnet_keras.get_model("nfnet_tiny", weights=None, include_preprocessing=False)
    randomize(model, seed=3)
    path = str(tmp_path_factory.mktemp("preset") / "tiny.weights.h5")
    model.save_weights(path)
    return path, model


def _data(n=8, classes=10, seed=0):
    rng = np.random.default_rng(seed)
    return (
        rng.uniform(0, 255, (n, TINY_SIZE, TINY_SIZE, 3)).astype("float32"),
        rng.integers(0, classes, n),
    )


def test_from_preset_backbone_head_and_preprocessing(tiny_file):
    path, source = tiny_file
    model = nfnet_keras.from_preset("nfnet_tiny", num_classes=10, weights=path)
    assert isinstance(model, nfnet_keras.NFModel)
    assert model.output.shape == (None, 10)
    assert model.get_layer("normalization") is not None  # takes [0, 255] RGB
    assert model.get_layer("predictions").activation is keras.activations.linear  # logits
    backbone = [w for w in source.weights if not w.path.startswith("predictions")]
    mine = {w.path: w for w in model.weights}
    for w in backbone:
        np.testing.assert_array_equal(mine[w.path].numpy(), w.numpy(), err_msg=w.path)
    assert model.pretrained_cfg["num_classes"] == 10
    assert model.pretrained_cfg["mean"] == [0.485, 0.456, 0.406]
    # The pretrained 1000-class head when num_classes is not given.
    full = nfnet_keras.from_preset("nfnet_tiny", weights=path)
    np.testing.assert_array_equal(
        full.get_layer("predictions").kernel.numpy(), source.get_layer("predictions").kernel.numpy()
    )
    with pytest.raises(ValueError, match="num_classes"):
        nfnet_keras.from_preset("nfnet_tiny", num_classes=0, weights=path)
    with pytest.raises(ValueError, match="`include_top`"):
        nfnet_keras.from_preset("nfnet_tiny", include_top=False, weights=path)
    with pytest.raises(ValueError, match="Unknown model name 'nfnet_f9'"):
        nfnet_keras.from_preset("nfnet_f9", weights=None)


def _one_step_updates(model, head_layer, lr=0.5):
    """(head kernel update, a clipped backbone kernel's update, their raw gradients)."""
    x, y = _data()
    loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss = loss_fn(y, model(x, training=True))
    grads = dict(zip([v.path for v in variables], tape.gradient(loss, variables)))
    before = {v.path: v.numpy() for v in variables}
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=loss_fn)
    model.train_on_batch(x, y)
    after = {v.path: v.numpy() for v in model.trainable_variables}
    return before, after, grads


@pytest.mark.parametrize("head_name", ["predictions", "my_classifier"])
def test_fit_leaves_the_new_head_unclipped_and_clips_the_backbone(tiny_file, head_name):
    path, _ = tiny_file
    preset = nfnet_keras.from_preset(
        "nfnet_tiny", num_classes=10, weights=path, dropout_rate=0.0, stochastic_depth_rate=0.0
    )
    features = preset.get_layer("predictions").input
    head = keras.layers.Dense(10, name=head_name)
    model = nfnet_keras.NFModel(preset.inputs, head(features))
    assert agc.classifier_layers(model) == [head]
    before, after, grads = _one_step_updates(model, head)
    lr = 0.5
    kernel = head.kernel.path
    # The head's kernel moves by the plain SGD step of its raw gradient.
    np.testing.assert_allclose(after[kernel], before[kernel] - lr * grads[kernel].numpy(), atol=1e-6)
    # A backbone kernel moves by the step of its AGC-clipped gradient.
    path_ = "stage2_block0_conv1/kernel"
    raw = grads[path_].numpy()
    clipped = np.asarray(nfnet_keras.adaptive_clip(grads[path_], before[path_]))
    assert np.abs(clipped - raw).max() > 1e-3 * np.abs(raw).max()  # clipping was active
    np.testing.assert_allclose(after[path_], before[path_] - lr * clipped, atol=1e-6)


def test_training_inside_a_plain_keras_model_warns_once(tiny_file):
    path, _ = tiny_file
    backbone = nfnet_keras.from_preset("nfnet_tiny", num_classes=10, weights=path)
    outer = keras.Sequential([keras.Input((TINY_SIZE, TINY_SIZE, 3)), backbone])
    outer.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y = _data()
    with pytest.warns(UserWarning, match="does not apply Adaptive Gradient Clipping") as record:
        outer.fit(x, y, epochs=2, batch_size=4, verbose=0)
    assert sum("Adaptive Gradient Clipping" in str(w.message) for w in record) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        backbone.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        backbone.fit(x, y, epochs=1, batch_size=4, verbose=0)  # its own fit applies AGC


@pytest.mark.slow  # builds NF-F0 twice and writes its 286 MB weights file
def test_from_preset_nfnet_f0_with_a_converted_file(tmp_path):
    source = randomize(nfnet_keras.get_model("nfnet_f0", weights=None), seed=7)
    path = str(tmp_path / "F0.weights.h5")
    source.save_weights(path)
    model = nfnet_keras.from_preset(
        "nfnet_f0", num_classes=10, weights=path, input_shape=(64, 64, 3),
        dropout_rate=0.0, stochastic_depth_rate=0.0,
    )
    assert model.output.shape == (None, 10) and model.input.shape == (None, 64, 64, 3)
    mine = {w.path: w for w in model.weights}
    for w in source.weights:
        if not w.path.startswith("predictions"):
            np.testing.assert_array_equal(mine[w.path].numpy(), w.numpy(), err_msg=w.path)
    x, y = _data(n=4)
    x = tf.image.resize(x, (64, 64)).numpy()
    head = model.get_layer("predictions")
    variables = model.trainable_variables
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, model(x, training=True))
    grads = dict(zip([v.path for v in variables], tape.gradient(loss, variables)))
    before = {v.path: v.numpy() for v in variables}
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.train_on_batch(x, y)
    kernel = head.kernel.path
    np.testing.assert_allclose(head.kernel.numpy(), before[kernel] - 0.5 * grads[kernel].numpy(), atol=1e-6)
    conv = "stage2_block0_conv1/kernel"
    clipped = np.asarray(nfnet_keras.adaptive_clip(grads[conv], before[conv]))
    assert np.abs(clipped - grads[conv].numpy()).max() > 0
    np.testing.assert_allclose(
        model.get_layer("stage2_block0_conv1").kernel.numpy(), before[conv] - 0.5 * clipped, atol=1e-6
    )
