"""`NFModel.predict` warns, once per call site, on [0, 255] pixels given to a
model that takes mean/std-normalised images (``include_preprocessing=False``)."""

import warnings

import keras
import numpy as np
import pytest

import nfnet_keras
from conftest import randomize  # noqa: E402 - tests/ is on sys.path

SIZE = 32


@pytest.fixture(scope="module")
def models():
    plain = randomize(
        nfnet_keras.NFNet("tiny", weights=None, include_preprocessing=False, input_shape=(SIZE, SIZE, 3), classes=10),
        seed=3,
    )
    with_preprocessing = nfnet_keras.NFNet("tiny", weights=None, input_shape=(SIZE, SIZE, 3), classes=10)
    with_preprocessing.set_weights(plain.get_weights())
    return plain, with_preprocessing


def _range_warnings(caught):
    return [w for w in caught if "takes mean/std-normalised images" in str(w.message)]


def test_pixels_to_a_model_without_preprocessing_warn_once_per_call_site(models):
    plain, with_preprocessing = models
    pixels = np.random.default_rng(0).uniform(0, 255, (4, SIZE, SIZE, 3)).astype("float32")
    normalised = nfnet_keras.preprocess_input(pixels)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # What each model expects: silent.
        plain.predict(normalised, verbose=0)
        with_preprocessing.predict(pixels, verbose=0)
        # The extremes of normalised [0, 1] pixels (the black and white
        # images of each channel), and Gaussian test input: silent.
        plain.predict(nfnet_keras.preprocess_input(np.zeros_like(pixels)), verbose=0)
        plain.predict(nfnet_keras.preprocess_input(np.full_like(pixels, 255)), verbose=0)
        gaussian = np.random.default_rng(23).standard_normal(pixels.shape).astype("float32")
        assert gaussian.min() < -4 and gaussian.max() > 4  # beyond normalised images
        plain.predict(gaussian, verbose=0)
        # The threshold is twice the top of the normalised range,
        # 2 * (1.28125 - 0.406) / 0.225 = 7.78 (blue): a flat 7.7 is below.
        plain.predict(np.full_like(pixels, 7.7), verbose=0)
        assert _range_warnings(caught) == []
        outputs = [plain.predict(pixels * scale, verbose=0) for scale in (1.0, 0.5, 1.0)]  # one site
        plain.predict(np.full_like(pixels, 7.9), verbose=0)  # above it, a second site
    found = _range_warnings(caught)
    assert len(found) == 2
    assert all(w.filename == __file__ for w in found)  # they point at the caller's line
    messages = [str(w.message) for w in found]
    assert f"the `x` given to `predict` holds values up to {pixels.max():.4g}, as [0, 255] pixels do" in messages[0]
    assert "holds values up to 7.9," in messages[1]
    # (-0.28125 - 0.485) / 0.229 and (1.28125 - 0.406) / 0.225: red and blue.
    assert "normalised pixels lie within [-3.35, 3.89]" in messages[0]
    assert "nfnet_keras.preprocess_input(x)" in messages[0] and "include_preprocessing=True" in messages[0]
    # The check does not touch the data: bit-equal to Keras's own predict.
    np.testing.assert_array_equal(outputs[0], keras.Model.predict(plain, pixels, verbose=0))
    np.testing.assert_array_equal(outputs[0], outputs[2])
    # A tensor is checked as an array is.
    with pytest.warns(UserWarning, match="takes mean/std-normalised images"):
        plain.predict(keras.ops.convert_to_tensor(pixels), verbose=0)
