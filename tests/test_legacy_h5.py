"""Legacy `.h5` files of NF models: `keras.models.load_model` reloads them as
it reloads `.keras` files, without `custom_objects` and bit-exact; saving a
compiled model, whose optimizer state Keras 3 cannot restore from `.h5`, is
refused with a pointer to `.keras`."""

import os

import keras
import numpy as np
import pytest

import nfnet_keras
from conftest import randomize  # noqa: E402 - tests/ is on sys.path
from nfnet_keras import agc

SIZE = 32


def _tiny(**kwargs):
    return nfnet_keras.NFNet("tiny", weights=None, input_shape=(SIZE, SIZE, 3), classes=10, **kwargs)


def _assert_same_model(restored, model, x):
    assert type(restored) is agc.NFModel
    assert [type(layer) for layer in restored.layers] == [type(layer) for layer in model.layers]
    assert (restored.agc_clipping, restored.agc_eps, restored.agc_exclude) == (
        model.agc_clipping, model.agc_eps, model.agc_exclude
    )
    assert restored.pretrained_cfg == model.pretrained_cfg
    assert [w.path for w in restored.weights] == [w.path for w in model.weights]
    for a, b in zip(restored.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    np.testing.assert_array_equal(restored(x, training=False), model(x, training=False))


def test_h5_round_trip_is_bit_exact_without_custom_objects(tmp_path):
    # Standardised convolutions, SE, stochastic depth, skip gains, in-model
    # normalisation, and the folded copy's plain per-group convolutions.
    model = randomize(_tiny(agc_clipping=0.02), seed=4)
    model.pretrained_cfg["num_classes"] = 10
    x = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    folded = nfnet_keras.fold_for_inference(model)
    for name, saved in (("model.h5", model), ("folded.h5", folded), ("model.keras", model)):
        path = str(tmp_path / name)
        saved.save(path)
        _assert_same_model(keras.models.load_model(path), saved, x)


def test_h5_save_of_a_compiled_model_is_refused(tmp_path):
    model = randomize(_tiny(), seed=5)
    model.compile(optimizer=nfnet_keras.NFSGD(0.01, momentum=0.9), loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)
    rng = np.random.default_rng(6)  # optimizer state to lose
    for variable in model.optimizer.variables:
        variable.assign(rng.uniform(1, 2, variable.shape).astype(variable.dtype))
    x = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")
    path = str(tmp_path / "model.h5")
    with pytest.raises(ValueError) as info:
        model.save(path)
    message = str(info.value)
    assert "\n" not in message and "include_optimizer=False" in message and ".keras" in message
    assert not os.path.exists(path)
    # Without the optimizer: the model alone, uncompiled, as Keras does.
    model.save(path, include_optimizer=False)
    restored = keras.models.load_model(path)
    assert not restored.compiled
    _assert_same_model(restored, model, x)
    # The `.h5` saves left the compiled model intact: `.keras` keeps the
    # optimizer and its state.
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert isinstance(restored.optimizer.inner_optimizer, nfnet_keras.NFSGD)
    assert len(restored.optimizer.variables) == len(model.optimizer.variables)
    for a, b in zip(restored.optimizer.variables, model.optimizer.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
