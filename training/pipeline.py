"""tf.data pipelines: the paper's training augmentation and eval transform.

Train (deepmind-research `nfnets/dataset.py`, reference doc §8.1): Inception
crop (`sample_distorted_bounding_box`, min object covered 0.1, aspect
3/4-4/3, area 0.08-1, 10 attempts, else centre crop), random horizontal flip,
bicubic resize to the training size; then per batch RandAugment and
MixUp (first half of the batch) / CutMix (second half). RandAugment and
MixUp/CutMix are Keras's preprocessing layers; Keras's RandAugment samples
its magnitude per op instead of DeepMind's fixed one (documented
difference).

Eval: the config's `EvalTransform` (`nfnet_keras.weights`), the object the
weights rows and the export's `serving_bytes` use: for DeepMind's recipes a
bicubic squash-resize to (S + 32)^2, centre crop S (`resize_crop_32`).

Images stay in [0, 255]: the models are built with
`include_preprocessing=True` and normalise themselves.
"""

import keras
import tensorflow as tf

# Inception-crop parameters (deepmind-research dataset.py; reference §8.1).
MIN_OBJECT_COVERED = 0.1
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
AREA_RANGE = (0.08, 1.0)
MAX_ATTEMPTS = 10


def inception_crop(image, size, area_range=AREA_RANGE):
    shape = tf.shape(image)
    bbox = tf.zeros([1, 0, 4], tf.float32)
    begin, crop_size, _ = tf.image.sample_distorted_bounding_box(
        shape,
        bounding_boxes=bbox,
        min_object_covered=MIN_OBJECT_COVERED,
        aspect_ratio_range=ASPECT_RATIO_RANGE,
        area_range=area_range,
        max_attempts=MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, crop_size)
    return tf.image.resize(crop, (size, size), method="bicubic")


def train_transform(image, size, area_range=AREA_RANGE):
    image = inception_crop(tf.cast(image, tf.float32), size, area_range)
    image = tf.image.random_flip_left_right(image)
    return tf.clip_by_value(image, 0.0, 255.0)


def mix_batch(images, labels, mixup, cutmix):
    """MixUp on the first half of the batch, CutMix on the second (§8.1)."""
    half = tf.shape(images)[0] // 2
    first = mixup({"images": images[:half], "labels": labels[:half]})
    second = cutmix({"images": images[half:], "labels": labels[half:]})
    return (
        tf.concat([first["images"], second["images"]], 0),
        tf.concat([first["labels"], second["labels"]], 0),
    )


def make_train_dataset(source, config, global_batch_size, seed=0):
    num_classes = source.num_classes
    ds = source.train.repeat().shuffle(config.shuffle_buffer, seed=seed)
    ds = ds.map(
        lambda image, label: (
            train_transform(image, config.train_size, config.crop_area_range),
            tf.one_hot(label, num_classes),
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    ds = ds.batch(global_batch_size, drop_remainder=True)
    if config.randaugment_layers > 0:
        augment = keras.layers.RandAugment(
            value_range=(0, 255),
            num_ops=config.randaugment_layers,
            factor=config.randaugment_magnitude / 30.0,  # Keras factor in [0, 1]
            interpolation="bilinear",
            seed=seed,
        )
        ds = ds.map(lambda x, y: (augment(x), y), num_parallel_calls=tf.data.AUTOTUNE)
    if config.mixup_cutmix:
        # MixUp ratio ~ Beta(0.2, 0.2) (reference doc §8.1).
        mixup = keras.layers.MixUp(alpha=0.2, seed=seed)
        cutmix = keras.layers.CutMix(factor=1.0, seed=seed)
        ds = ds.map(lambda x, y: mix_batch(x, y, mixup, cutmix), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.prefetch(tf.data.AUTOTUNE)


def make_eval_dataset(source, config, global_batch_size):
    num_classes = source.num_classes
    ds = source.test.map(
        lambda image, label: (
            config.eval_transform(image),
            tf.one_hot(label, num_classes),
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    return ds.batch(global_batch_size).prefetch(tf.data.AUTOTUNE)
