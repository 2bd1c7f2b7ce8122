"""RandAugment as the NFNet recipe applies it, with stateless randomness.

deepmind-research `nfnets/autoaugment.py` `distort_image_with_randaugment`
(reference doc §8.1): for each of `num_layers` layers one of 16 ops is
chosen uniformly and always applied, at the recipe's *fixed* magnitude M
(out of `MAX_LEVEL`); only the sign of Rotate, Shear and Translate is
random. Keras's `RandAugment` layer instead draws a magnitude per call, one
op for the whole batch, and stateful random numbers, so this module writes
the policy out. Images are clipped to [0, 255] and cast to uint8 first, as
the reference does; every op works on uint8 like the reference's.
"""

import math

import keras
import tensorflow as tf

# The magnitude scale of AutoAugment/RandAugment (autoaugment.py _MAX_LEVEL).
MAX_LEVEL = 10.0
# Fill value of pixels that an affine op or Cutout uncovers (the reference's
# `replace = [128] * 3`).
FILL = 128
# distort_image_with_randaugment: translate_const=100, cutout_const=40.
TRANSLATE_CONST = 100.0
CUTOUT_CONST = 40.0
# Level -> argument rules of the reference (`_rotate_level_to_arg`, ...).
MAX_ROTATE_DEGREES = 30.0
MAX_SHEAR = 0.3
ENHANCE_SCALE, ENHANCE_OFFSET = 1.8, 0.1  # factor = level/10 * 1.8 + 0.1
POSTERIZE_BITS = 4  # bits kept = int(level/10 * 4)
SOLARIZE_THRESHOLD = 256  # threshold = int(level/10 * 256)
SOLARIZE_ADD = 110  # addition = int(level/10 * 110), below threshold 128
SOLARIZE_ADD_THRESHOLD = 128
# PIL's SMOOTH kernel, used by Sharpness (autoaugment.py `sharpness`).
SMOOTH_KERNEL = ((1, 1, 1), (1, 5, 1), (1, 1, 1))
SMOOTH_DIVISOR = 13.0

OPS = (
    "AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize",
    "Color", "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY",
    "TranslateX", "TranslateY", "Cutout", "SolarizeAdd",
)


def _blend(degenerate, image, factor):
    """PIL's ImageEnhance rule: degenerate + factor * (image - degenerate)."""
    d = tf.cast(degenerate, tf.float32)
    out = d + factor * (tf.cast(image, tf.float32) - d)
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def _affine(image, transform):
    """Projective transform (output -> input point map), nearest, fill 128."""
    out = keras.ops.image.affine_transform(
        tf.cast(image, tf.float32)[None], transform[None],
        interpolation="nearest", fill_mode="constant", fill_value=FILL,
    )
    return tf.cast(out[0], tf.uint8)


def _autocontrast(image):
    lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float32)
    hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float32)
    scale = tf.where(hi > lo, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
    offset = tf.where(hi > lo, -lo * scale, 0.0)
    out = tf.cast(image, tf.float32) * scale + offset
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def _equalize_channel(channel):
    channel = tf.cast(channel, tf.int32)
    histogram = tf.histogram_fixed_width(channel, [0, 255], nbins=256)
    nonzero = tf.boolean_mask(histogram, histogram > 0)
    step = (tf.reduce_sum(nonzero) - nonzero[-1]) // 255
    safe_step = tf.maximum(step, 1)
    lut = (tf.cumsum(histogram) + safe_step // 2) // safe_step
    lut = tf.clip_by_value(tf.concat([[0], lut[:-1]], 0), 0, 255)
    return tf.cast(tf.where(step > 0, tf.gather(lut, channel), channel), tf.uint8)


def _equalize(image):
    return tf.stack([_equalize_channel(image[..., c]) for c in range(3)], -1)


def _grayscale(image):
    return tf.image.rgb_to_grayscale(image)


def _sharpness(image, factor):
    x = tf.cast(image, tf.float32)[None]
    kernel = tf.constant(SMOOTH_KERNEL, tf.float32)[:, :, None, None] / SMOOTH_DIVISOR
    smooth = tf.nn.depthwise_conv2d(x, tf.tile(kernel, [1, 1, 3, 1]), [1, 1, 1, 1], "VALID")
    smooth = tf.cast(tf.clip_by_value(smooth[0], 0.0, 255.0), tf.uint8)
    # The border keeps the original pixels (PIL).
    inner = tf.pad(tf.ones_like(smooth, tf.bool), [[1, 1], [1, 1], [0, 0]])
    smooth = tf.where(inner, tf.pad(smooth, [[1, 1], [1, 1], [0, 0]]), image)
    return _blend(smooth, image, factor)


def _cutout(image, pad, seed):
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    centre = tf.random.stateless_uniform([2], seed, 0, tf.int32.max, tf.int32) % [height, width]
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    inside = (
        (rows >= centre[0] - pad) & (rows < centre[0] + pad)
        & (cols >= centre[1] - pad) & (cols < centre[1] + pad)
    )
    return tf.where(inside[..., None], tf.constant(FILL, tf.uint8), image)


def apply_op(name, image, magnitude, seed):
    """One RandAugment op at the fixed `magnitude` on a uint8 [H, W, 3] image.

    `seed` (shape [2]) draws the sign of Rotate/Shear/Translate and the
    Cutout position.
    """
    level = magnitude / MAX_LEVEL
    sign = tf.where(tf.random.stateless_uniform([], seed) < 0.5, -1.0, 1.0)
    height = tf.cast(tf.shape(image)[0], tf.float32)
    width = tf.cast(tf.shape(image)[1], tf.float32)
    enhance = level * ENHANCE_SCALE + ENHANCE_OFFSET
    if name == "AutoContrast":
        return _autocontrast(image)
    if name == "Equalize":
        return _equalize(image)
    if name == "Invert":
        return 255 - image
    if name == "Rotate":
        angle = sign * level * MAX_ROTATE_DEGREES * math.pi / 180.0
        cos, sin = tf.cos(angle), tf.sin(angle)
        cx, cy = (width - 1) / 2, (height - 1) / 2
        return _affine(image, tf.stack([cos, -sin, cx - cos * cx + sin * cy,
                                        sin, cos, cy - sin * cx - cos * cy, 0.0, 0.0]))
    if name == "Posterize":
        shift = 8 - int(level * POSTERIZE_BITS)
        return tf.bitwise.left_shift(tf.bitwise.right_shift(image, shift), shift)
    if name == "Solarize":
        threshold = int(level * SOLARIZE_THRESHOLD)
        return tf.where(tf.cast(image, tf.int32) < threshold, image, 255 - image)
    if name == "SolarizeAdd":
        added = tf.clip_by_value(tf.cast(image, tf.int32) + int(level * SOLARIZE_ADD), 0, 255)
        return tf.where(image < SOLARIZE_ADD_THRESHOLD, tf.cast(added, tf.uint8), image)
    if name == "Color":
        return _blend(tf.image.grayscale_to_rgb(_grayscale(image)), image, enhance)
    if name == "Contrast":
        mean = tf.reduce_mean(tf.cast(_grayscale(image), tf.float32))
        degenerate = tf.fill(tf.shape(image), tf.cast(mean, tf.uint8))
        return _blend(degenerate, image, enhance)
    if name == "Brightness":
        return _blend(tf.zeros_like(image), image, enhance)
    if name == "Sharpness":
        return _sharpness(image, enhance)
    if name in ("ShearX", "ShearY"):
        s = sign * level * MAX_SHEAR
        return _affine(image, tf.stack([1.0, s, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]) if name == "ShearX"
                       else tf.stack([1.0, 0.0, 0.0, s, 1.0, 0.0, 0.0, 0.0]))
    if name in ("TranslateX", "TranslateY"):
        pixels = sign * level * TRANSLATE_CONST
        return _affine(image, tf.stack([1.0, 0.0, pixels, 0.0, 1.0, 0.0, 0.0, 0.0])
                       if name == "TranslateX"
                       else tf.stack([1.0, 0.0, 0.0, 0.0, 1.0, pixels, 0.0, 0.0]))
    if name == "Cutout":
        return _cutout(image, int(level * CUTOUT_CONST), seed)
    raise ValueError(f"Unknown RandAugment op {name!r}; expected one of {OPS}.")


def rand_augment(image, seed, num_layers, magnitude, ops=OPS):
    """RandAugment of one float image in [0, 255] (any range is clipped).

    Returns a float32 image with uint8 values.
    """
    image = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
    for layer_seed in tf.unstack(tf.random.experimental.stateless_split(seed, num_layers)):
        choice_seed, op_seed = tf.unstack(tf.random.experimental.stateless_split(layer_seed, 2))
        index = tf.random.stateless_uniform([], choice_seed, 0, len(ops), tf.int32)
        branches = [
            (lambda name=name: apply_op(name, image, magnitude, op_seed)) for name in ops
        ]
        image = tf.switch_case(index, branches)
        image.set_shape([None, None, 3])
    return tf.cast(image, tf.float32)


def rand_augment_batch(images, seeds, num_layers, magnitude, ops=OPS):
    """`rand_augment` of each image of a batch, with its own seed."""
    return tf.map_fn(
        lambda args: rand_augment(args[0], args[1], num_layers, magnitude, ops),
        (images, seeds),
        fn_output_signature=tf.float32,
    )
