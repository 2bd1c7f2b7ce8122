"""Folding for inference (`nfnet_keras/folding.py`): folded NFNet, NF-ResNet
and NF-RegNet models match the unfolded ones; weight standardisation and the
constant scales are folded away."""

import os
import tempfile

import keras
import numpy as np
import pytest

from _tiny_io import TINY_CLASSES, TINY_SIZE, _close, _images  # tests/ is on sys.path
from conftest import randomize
from export import export as export_lib
import nfnet_keras
from nfnet_keras import layers as nf_layers


def _ws_reference(kernel, gain, eps=1e-4):
    """DeepMind scaled WS in NumPy (reference doc §4), float64."""
    kernel = kernel.astype("float64")
    fan_in = np.prod(kernel.shape[:-1])
    mean = kernel.mean(axis=(0, 1, 2), keepdims=True)
    var = kernel.var(axis=(0, 1, 2), keepdims=True)
    return (kernel - mean) * gain / np.sqrt(np.maximum(fan_in * var, eps))


def test_fold_model_matches_unfolded_and_folds_scales():
    model = export_lib.build_keras_model("nfnet_tiny", classes=TINY_CLASSES)
    randomize(model, seed=11)
    x = _images(2, TINY_SIZE, seed=12)
    expected = model(x).numpy()

    plain = nfnet_keras.fold_for_inference(model, fold_scales=False)
    _close(plain(x), expected)
    conv = model.get_layer("stage1_block0_conv1")  # grouped, strided
    np.testing.assert_allclose(
        plain.get_layer(conv.name).kernel.numpy(),
        _ws_reference(conv.kernel.numpy(), conv.gain.numpy()),
        rtol=1e-5, atol=1e-6,
    )

    folded = nfnet_keras.fold_for_inference(model)
    _close(folded(x), expected)
    types = {type(layer) for layer in folded.layers}
    assert nf_layers.ScaledStdConv2D not in types and nf_layers.SkipGain not in types
    assert nf_layers.StochasticDepth not in types
    convs = [l for l in folded.layers if isinstance(l, keras.layers.Conv2D)]
    assert convs and all(isinstance(l, nf_layers.PerGroupConv2D) for l in convs)
    acts = [l for l in folded.layers if isinstance(l, nf_layers.GammaAct)]
    assert all(l.gamma == 1.0 and l.beta == 1.0 for l in acts)
    assert all(l.gate_gain == 1.0 for l in folded.layers if isinstance(l, nf_layers.SqueezeExcite))
    # Same layer names (the weight-name contract), same parameter count.
    assert [l.name for l in folded.layers] == [l.name for l in model.layers]
    # The folded model is a Keras model like any other: it saves and reloads.
    path = os.path.join(tempfile.mkdtemp(), "folded.keras")
    folded.save(path)
    np.testing.assert_array_equal(keras.saving.load_model(path)(x), folded(x))


@pytest.mark.parametrize("name", ["nf_resnet_tiny", "nf_regnet_tiny"])
def test_fold_model_other_families(name):
    # NF-ResNet (no SE, max-pool stem) and NF-RegNet (SE in the middle of the
    # branch, zero-initialised head): the same folding rules apply.
    model = export_lib.build_keras_model(name, classes=TINY_CLASSES)
    randomize(model, seed=21)
    x = _images(2, TINY_SIZE, seed=22)
    expected = model(x).numpy()
    assert np.abs(expected).max() > 0.1
    folded = nfnet_keras.fold_for_inference(model)
    _close(folded(x), expected)
    assert not any(isinstance(l, nf_layers.ScaledStdConv2D) for l in folded.layers)


def test_fold_model_keeps_zero_skip_gain_blocks():
    model = export_lib.build_keras_model("nfnet_tiny", classes=TINY_CLASSES)
    randomize(model, seed=13)
    model.get_layer("stage2_block0_skip_gain").skip_gain.assign(0.0)
    x = _images(2, TINY_SIZE, seed=14)
    folded = nfnet_keras.fold_for_inference(model)
    _close(folded(x), model(x).numpy())
    assert isinstance(folded.get_layer("stage2_block0_skip_gain"), nf_layers.SkipGain)
