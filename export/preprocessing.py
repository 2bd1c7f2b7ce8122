"""The `serving_bytes` input path: decode, then the checkpoint's evaluation
transform (`nfnet_keras.weights.EvalTransform`, the object the weights and
the trainer's evaluation use), then [0, 1] scaling (the TF Hub image
convention).

`tf.image.resize` on uint8 returns float32 without clamping the bicubic
overshoot, exactly as deepmind-research `_decode_and_resize_then_crop` does
(reference doc §8.1).
"""

import tensorflow as tf


def eval_transform(image_bytes, transform):
    """Decodes one encoded image and applies `transform`.

    Args:
        image_bytes: a scalar `tf.string` tensor, a JPEG, PNG, GIF or BMP file.
        transform: an `EvalTransform`.

    Returns:
        A float32 tensor ``[S, S, 3]``, RGB scaled to [0, 1] (bicubic
        overshoot may leave values slightly outside).
    """
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return transform(image) / 255.0


def _is_image_file(image_bytes):
    """Whether the bytes start as a JPEG, PNG, GIF or BMP file does (the
    formats `tf.io.decode_image` reads, by their file signatures)."""
    head = tf.strings.substr(image_bytes, 0, 4)
    return tf.reduce_any(
        [
            tf.io.is_jpeg(image_bytes),
            tf.equal(head, b"\x89PNG"),
            tf.equal(tf.strings.substr(head, 0, 3), b"GIF"),
            tf.equal(tf.strings.substr(head, 0, 2), b"BM"),
        ]
    )


def eval_transform_batch(image_bytes, transform):
    """`eval_transform` over a 1-D batch of encoded images -> ``[B, S, S, 3]``.

    A batch entry that is no image file fails the call with its index.
    """

    def one(indexed):
        index, encoded = indexed
        check = tf.debugging.Assert(
            _is_image_file(encoded),
            [tf.strings.format("`image_bytes[{}]` is not a JPEG, PNG, GIF or BMP file", index)],
        )
        with tf.control_dependencies([check]):
            return eval_transform(tf.identity(encoded), transform)

    return tf.map_fn(
        one,
        (tf.range(tf.size(image_bytes)), image_bytes),
        fn_output_signature=tf.TensorSpec([transform.size, transform.size, 3], tf.float32),
    )
