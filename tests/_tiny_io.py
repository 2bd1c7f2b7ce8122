"""Inputs and output checks of the export, folding and preprocessing tests:
random images, real image files, the tolerance of an exported model."""

import numpy as np
import tensorflow as tf

TOL = 1e-5  # float32 parity target of the export (issue text, reference doc §1)
TINY_SIZE = 32  # the tiny row's test resolution (nfnet_keras/models/nfnet.py)
TINY_CLASSES = 10  # a small classifier, not ImageNet's 1000


def _images(batch, size, seed=0):
    return np.random.default_rng(seed).random((batch, size, size, 3), dtype="float32")


def _close(actual, expected, tol=TOL):
    actual, expected = np.asarray(actual), np.asarray(expected)
    assert actual.shape == expected.shape
    scale = max(1.0, float(np.max(np.abs(expected))))
    diff = float(np.max(np.abs(actual - expected)))
    assert diff <= tol * scale, f"max |difference| {diff:.3e} > {tol * scale:.3e}"


def _encoded(kind, height=45, width=70, seed=3):
    """A real image file's bytes: smooth colours plus noise, non-square."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    image = np.stack([xx * 3.0, yy * 5.0, (xx + yy) * 2.0], -1) + rng.normal(0, 20, (height, width, 3))
    image = tf.constant(np.clip(image, 0, 255).astype("uint8"))
    encode = tf.io.encode_png if kind == "png" else tf.io.encode_jpeg
    return encode(image).numpy()
