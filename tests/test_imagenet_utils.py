"""`preprocess_input` and `decode_predictions` (`nfnet_keras.imagenet_utils`)."""

import numpy as np
import pytest

import nfnet_keras


def test_preprocess_input_matches_reference_normalisation():
    x = np.full((1, 2, 2, 3), 128, np.uint8)
    y = nfnet_keras.preprocess_input(x)
    # deepmind-research dataset.py: (x - 255 * mean) / (255 * std)
    expected = (128 - 255 * np.array([0.485, 0.456, 0.406])) / (255 * np.array([0.229, 0.224, 0.225]))
    np.testing.assert_allclose(y[0, 0, 0], expected, rtol=1e-6)
    with pytest.raises(ValueError, match="3 channels"):
        nfnet_keras.preprocess_input(np.zeros((1, 2, 2, 4)))


def test_decode_predictions_offline():
    preds = np.zeros((2, 1000), "float32")
    preds[0, 1] = 0.9  # goldfish
    preds[1, 999] = 0.8
    decoded = nfnet_keras.decode_predictions(preds, top=3)
    assert decoded[0][0] == ("n01443537", "goldfish", pytest.approx(0.9))
    assert decoded[1][0][0] == "n15075141"
    assert len(decoded[0]) == 3
    with pytest.raises(ValueError, match="1000"):
        nfnet_keras.decode_predictions(np.zeros((1, 10)))
