"""Numerical parity of the NFNet forward pass with timm (independent oracle)."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _timm import randomize_timm, timm, timm_outputs  # noqa: E402

import nfnet_keras  # noqa: E402
from nfnet_keras.convert.timm import load_timm_state_dict  # noqa: E402


@pytest.fixture(scope="module")
def timm_f0():
    return randomize_timm(timm.create_model("dm_nfnet_f0"))


# The odd, non-square size (uneven "SAME" padding at every stride) runs by
# default; F0's train and test sizes run with `-m slow`.
@pytest.mark.parametrize(
    "size",
    [pytest.param((192, 192), marks=pytest.mark.slow), pytest.param((256, 256), marks=pytest.mark.slow), (223, 255)],
)
def test_nfnet_f0_matches_timm(timm_f0, size):
    rng = np.random.default_rng(1)
    images = rng.standard_normal((2, *size, 3)).astype("float32")
    ref_features, ref_logits = timm_outputs(timm_f0, images)

    model = nfnet_keras.NFNetF0(
        weights=None, include_preprocessing=False, input_shape=(*size, 3), classifier_activation=None, convention="timm"
    )
    load_timm_state_dict(model, timm_f0.state_dict())
    logits = model.predict(images, verbose=0)
    features = nfnet_keras.NFNetF0(
        weights=None, include_preprocessing=False, include_top=False, pooling="avg", input_shape=(*size, 3), convention="timm"
    )
    features.set_weights(model.get_weights()[: len(features.weights)])
    pooled = features.predict(images, verbose=0)

    tol = 1e-4 * max(1.0, float(np.abs(ref_logits).max()))
    assert np.abs(ref_logits).max() > 0.1  # the head is not trivially zero
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=tol)
    np.testing.assert_allclose(
        pooled, ref_features, rtol=0, atol=1e-4 * max(1.0, float(np.abs(ref_features).max()))
    )


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["F1", "F2", "F3", "F4", "F5", "F6"])
def test_deeper_nfnets_match_timm(variant):
    # Every released variant's structure (depths) against timm, at 128 px.
    reference = randomize_timm(timm.create_model(f"dm_nfnet_{variant.lower()}"), seed=2)
    images = np.random.default_rng(3).standard_normal((1, 128, 128, 3)).astype("float32")
    _, ref_logits = timm_outputs(reference, images)
    model = getattr(nfnet_keras, f"NFNet{variant}")(
        input_shape=(128, 128, 3), classifier_activation=None, convention="timm"
    )
    load_timm_state_dict(model, reference.state_dict())
    logits = model.predict(images, verbose=0)
    tol = 1e-4 * max(1.0, float(np.abs(ref_logits).max()))
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=tol)
