"""The evaluation transform of the exports (`export/preprocessing.py`)."""

import numpy as np
import pytest
import tensorflow as tf

from _tiny_io import _encoded  # tests/ is on sys.path
from export import preprocessing
from nfnet_keras.weights import deepmind_eval


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_eval_transform_matches_deepmind_resize_then_crop(kind):
    # A transcription of deepmind-research `dataset._decode_and_resize_then_crop`
    # with crop_pct = 32 (reference doc §8.1): decode_jpeg, bicubic resize to
    # size + 32, crop offset ((scaled - crop) + 1) // 2, then /255 for [0, 1].
    data = _encoded(kind)
    size = 40
    image = tf.image.decode_jpeg(data, channels=3)
    scale_size = (size + 32, size + 32)
    image = tf.image.resize(image, scale_size, tf.image.ResizeMethod.BICUBIC)
    offset = ((scale_size[0] - size) + 1) // 2
    reference = tf.image.crop_to_bounding_box(image, offset, offset, size, size) / 255.0
    out = preprocessing.eval_transform(tf.constant(data), deepmind_eval(size))
    assert out.shape == (size, size, 3) and out.dtype == tf.float32
    np.testing.assert_allclose(out.numpy(), reference.numpy(), atol=1e-6)
    # A constant image stays constant under the bicubic squash and crop.
    flat = tf.io.encode_png(tf.fill([30, 50, 3], tf.constant(200, tf.uint8)))
    np.testing.assert_allclose(
        preprocessing.eval_transform(flat, deepmind_eval(size)).numpy(), 200 / 255.0, atol=1e-5
    )
