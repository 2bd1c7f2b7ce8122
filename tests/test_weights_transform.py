"""The evaluation transforms (`nfnet_keras.weights.transform`) against
DeepMind's reference pipeline and torchvision's (timm's)."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))

import nfnet_keras  # noqa: E402
from nfnet_keras import weights as weights_lib  # noqa: E402


def test_deepmind_eval_transform_matches_the_reference_pipeline():
    import tensorflow as tf

    image = np.random.default_rng(0).integers(0, 256, (300, 411, 3), dtype=np.uint8)
    out = np.asarray(nfnet_keras.preprocess_input(weights_lib.checkpoint("nfnet_f0").eval_transform(image)))
    # deepmind-research `dataset._decode_and_resize_then_crop`, crop_pct=32:
    # resize to (256 + 32)^2 bicubic, crop offset ((288 - 256) + 1) // 2.
    ref = tf.image.resize(image, (288, 288), tf.image.ResizeMethod.BICUBIC)
    ref = tf.image.crop_to_bounding_box(ref, 16, 16, 256, 256).numpy()
    ref = (ref - np.array([0.485, 0.456, 0.406]) * 255) / (np.array([0.229, 0.224, 0.225]) * 255)
    assert out.shape == (256, 256, 3)
    np.testing.assert_allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize(
    "name,resize,crop", [("nfnet_f0.timm", (284, 284), 256), ("timm_nf_resnet50", 306, 288)]
)
def test_timm_eval_transform_matches_torchvision(name, resize, crop):
    from _timm import torch
    from torchvision import transforms

    image = np.random.default_rng(1).uniform(0, 255, (2, 300, 411, 3)).astype("float32")
    out = np.asarray(weights_lib.checkpoint(name).eval_transform(image))
    pipeline = transforms.Compose(
        [
            transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
            transforms.CenterCrop(crop),
        ]
    )
    ref = pipeline(torch.from_numpy(np.transpose(image, (0, 3, 1, 2)).copy())).numpy()
    assert out.shape == (2, crop, crop, 3)
    np.testing.assert_allclose(out, np.transpose(ref, (0, 2, 3, 1)), atol=2e-3)
