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


# The formats `tf.io.decode_image` reads, in the order of `_signatures`.
_FORMATS = ("JPEG", "PNG", "GIF", "BMP")


def _signatures(image_bytes):
    """For each of `_FORMATS`, whether the bytes start with its file signature."""
    head = tf.strings.substr(image_bytes, 0, 4)
    return tf.stack(
        [
            tf.io.is_jpeg(image_bytes),
            tf.equal(head, b"\x89PNG"),
            tf.equal(tf.strings.substr(head, 0, 3), b"GIF"),
            tf.equal(tf.strings.substr(head, 0, 2), b"BM"),
        ]
    )


def _undecodable_message(index, image_bytes):
    """The error of batch entry `index`, `image_bytes`, which did not decode."""
    matches = _signatures(image_bytes)
    return tf.where(
        tf.reduce_any(matches),
        tf.strings.join(
            [
                tf.strings.format("`image_bytes[{}]` starts as a ", index),
                tf.gather(tf.constant(_FORMATS), tf.argmax(tf.cast(matches, tf.int32))),
                " file but could not be decoded (truncated or corrupt)",
            ]
        ),
        tf.strings.format("`image_bytes[{}]` is not a JPEG, PNG, GIF or BMP file", index),
    )


def eval_transform_batch(image_bytes, transform):
    """`eval_transform` over a 1-D batch of encoded images -> ``[B, S, S, 3]``.

    A batch entry that does not decode fails the call with its index: a
    `tf.data` pipeline decodes the batch in order and drops the entries whose
    decoding fails (`ignore_errors`; graph ops have no other way to catch an
    error), and the first missing index is reported.
    """
    size = tf.size(image_bytes)
    pipeline = (
        tf.data.Dataset.from_tensor_slices((tf.range(size), image_bytes))
        .map(
            lambda index, encoded: (index, eval_transform(encoded, transform)),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        .ignore_errors()
        .batch(tf.cast(tf.maximum(size, 1), tf.int64))
    )
    # An empty batch stands in when nothing decoded (or the input is empty).
    nothing = (tf.zeros([0], tf.int32), tf.zeros([0, transform.size, transform.size, 3]))
    decoded, images = (
        pipeline.concatenate(tf.data.Dataset.from_tensors(nothing)).take(1).get_single_element()
    )
    # The first entry that did not decode, or `size` when all did.
    decoded_mask = tf.scatter_nd(decoded[:, None], tf.ones_like(decoded), [size])
    first = tf.argmin(tf.concat([decoded_mask, [0]], 0), output_type=tf.int32)
    entry = tf.gather(tf.concat([image_bytes, [""]], 0), first)
    check = tf.debugging.Assert(tf.equal(first, size), [_undecodable_message(first, entry)])
    with tf.control_dependencies([check]):
        return tf.identity(images)
