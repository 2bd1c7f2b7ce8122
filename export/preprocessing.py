"""The checkpoints' evaluation transform, as TensorFlow ops for a SavedModel.

DeepMind evaluates NFNets with `resize_crop_32` (deepmind-research
`nfnets/dataset.py`, `_decode_and_resize_then_crop` with ``crop_pct = 32``;
reference doc §8.1 "Eval preprocessing"): decode to uint8 RGB, bicubic
resize of the whole image (aspect ratio not kept) to ``(S + 32) x (S + 32)``,
centre crop ``S x S``, normalise. `tf.image.resize` on uint8 returns float32
without clamping the bicubic overshoot, exactly as the reference does.
"""

import tensorflow as tf

from nfnet_keras.imagenet_utils import resize_and_center_crop

# The 32-px border of `resize_crop_32` (reference doc §8.1).
EVAL_PADDING = 32


def eval_transform(image_bytes, image_size):
    """Decodes one encoded image and applies the evaluation transform.

    Args:
        image_bytes: a scalar `tf.string` tensor, a JPEG, PNG, GIF or BMP file.
        image_size: ``S``, the side of the square the model sees.

    Returns:
        A float32 tensor ``[S, S, 3]``, RGB scaled to [0, 1] (the TF Hub image
        convention; bicubic overshoot may leave values slightly outside).
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    # Bicubic, no antialiasing, centre offset ((scaled - crop) + 1) // 2, as
    # deepmind-research `_decode_and_resize_then_crop`.
    image = resize_and_center_crop(image, image_size, image_size + EVAL_PADDING)
    return image / 255.0


def eval_transform_batch(image_bytes, image_size):
    """`eval_transform` over a 1-D batch of encoded images -> ``[B, S, S, 3]``."""
    return tf.map_fn(
        lambda b: eval_transform(b, image_size),
        image_bytes,
        fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32),
    )
