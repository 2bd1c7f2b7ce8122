"""Shared fixtures: offline model builders, the shape-only parameter count,
and the random weights of the tests."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402


def randomize(model, seed=0):
    """Non-trivial values for every weight of a Keras model (skip gains start
    at zero, gains at one, biases at zero: left as they are they hide bugs)."""
    rng = np.random.default_rng(seed)
    weights = []
    for w in model.weights:
        value = w.numpy()
        if "seed_generator" in w.path:
            weights.append(value)
        elif w.name in ("gain", "skip_gain"):
            weights.append(rng.uniform(0.5, 1.5, value.shape).astype(value.dtype))
        elif w.name == "bias":
            weights.append((rng.standard_normal(value.shape) * 0.1).astype(value.dtype))
        else:
            fan_in = np.prod(value.shape[:-1]) if value.ndim > 1 else 1
            weights.append((rng.standard_normal(value.shape) / np.sqrt(fan_in)).astype(value.dtype))
    model.set_weights(weights)
    return model


@pytest.fixture
def count_params():
    """Parameter count of a registry model from its layer shapes alone.

    Built in a `keras.StatelessScope` that does not initialise variables on
    exit, variables get shapes but no values (no initializer runs, no
    memory), so F7's 500M parameters count in seconds; no forward pass runs.
    `clear_session` then drops the never-initialised variables.
    """
    import nfnet_keras

    def count(name, **kwargs):
        with keras.StatelessScope(initialize_variables=False):
            model = nfnet_keras.get_model(name, weights=None, include_preprocessing=False, **kwargs)
            total = model.count_params()
        del model
        keras.backend.clear_session()
        return total

    return count
