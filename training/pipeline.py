"""tf.data pipelines: the paper's training augmentation and eval transform.

Train (deepmind-research `nfnets/dataset.py`, reference doc §8.1): Inception
crop (`sample_distorted_bounding_box`, min object covered 0.1, aspect
3/4-4/3, area 0.08-1, 10 attempts, else the whole image), random horizontal
flip, bicubic resize to the training size (not clamped, as the reference);
then, with `mixup_cutmix`, batches of twice the size are mixed into one:
MixUp on the first half of the outputs, CutMix on the second, each output
mixing example i of its quarter with example i of the next quarter; then
RandAugment with DeepMind's fixed magnitude (`training.augment`) on each
mixed image (`augment_before_mix=False`, the NFNet recipe).

Every random number is drawn by a stateless op from a seed derived from
(run seed, epoch, example key): the stream is a function of the run seed and
of the position in it. A run that resumes at step N rebuilds the pipeline at
the position of step N and sees the batches the uninterrupted run saw, and
an example is augmented alike whichever worker reads it.

Eval: the config's `EvalTransform` (`nfnet_keras.weights`), the object the
weights rows and the export's `serving_bytes` use: for DeepMind's recipes a
bicubic squash-resize to (S + 32)^2, centre crop S (`resize_crop_32`).

Images stay in [0, 255]: the models are built with
`include_preprocessing=True` and normalise themselves.
"""

import tensorflow as tf

from . import augment

# Inception-crop parameters (deepmind-research dataset.py; reference §8.1).
MIN_OBJECT_COVERED = 0.1
ASPECT_RATIO_RANGE = (3 / 4, 4 / 3)
AREA_RANGE = (0.08, 1.0)
MAX_ATTEMPTS = 10
# MixUp ratio ~ Beta(0.2, 0.2) (dataset.py `mixup_alpha`; reference §8.1).
MIXUP_ALPHA = 0.2
# The stream's epochs (at most 2**20) and the shuffle blocks of an epoch
# (at most 2**32) give each block the distinct seed epoch * 2**32 + block.
_EPOCH_BITS = 20
_BLOCK_BITS = 32


def example_seed(seed, epoch, key):
    """The stateless seed (shape [2]) of one example in one epoch."""
    base = tf.stack([tf.cast(seed, tf.int64), tf.constant(0, tf.int64)])
    return tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(base, epoch), key
    )


def inception_crop(image, size, seed, area_range=AREA_RANGE):
    begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image),
        bounding_boxes=tf.zeros([1, 0, 4], tf.float32),
        seed=seed,
        min_object_covered=MIN_OBJECT_COVERED,
        aspect_ratio_range=ASPECT_RATIO_RANGE,
        area_range=area_range,
        max_attempts=MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    crop = tf.slice(image, begin, crop_size)
    return tf.image.resize(crop, (size, size), method="bicubic")


def train_transform(image, size, seed, area_range=AREA_RANGE):
    """Inception crop and flip; float32, not clamped (bicubic overshoots)."""
    crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    image = inception_crop(tf.cast(image, tf.float32), size, crop_seed, area_range)
    return tf.image.stateless_random_flip_left_right(image, flip_seed)


def beta_sample(seed, alpha):
    """One Beta(alpha, alpha) draw from two stateless Gamma draws."""
    g = tf.random.stateless_gamma([2], seed, alpha)
    return g[0] / (g[0] + g[1])


def cutmix_mask(height, width, seed):
    """DeepMind's `cutmix_padding`: a box of side sqrt(1 - U) x the image side,
    centred uniformly and clipped; 1 inside the box (the first image)."""
    centre_seed, area_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    centre = tf.random.stateless_uniform([2], centre_seed, 0.0, 1.0)
    side = tf.sqrt(1.0 - tf.random.stateless_uniform([], area_seed))
    size = tf.cast([height, width], tf.float32)
    half = tf.cast(side * size, tf.int32) // 2
    middle = tf.cast(centre * size, tf.int32)
    low = tf.clip_by_value(middle - half, 0, [height, width])
    high = tf.clip_by_value(middle + half, 0, [height, width])
    rows = tf.range(height)[:, None]
    cols = tf.range(width)[None, :]
    inside = (rows >= low[0]) & (rows < high[0]) & (cols >= low[1]) & (cols < high[1])
    return tf.cast(inside, tf.float32)[..., None]


def mix_batch(images, labels, seeds):
    """DeepMind's `my_mixup_cutmix` on a batch of 4q examples -> 2q outputs.

    Output i < q: MixUp of examples i and q + i with ratio ~ Beta(0.2, 0.2);
    output q + i: CutMix of examples 2q + i and 3q + i. Labels mix with the
    ratio (for CutMix, the area of the first image). The ratio or box of an
    output is drawn from the seed of its first example.
    """
    q = tf.shape(images)[0] // 4
    ratio = tf.map_fn(lambda s: beta_sample(s, MIXUP_ALPHA), seeds[:q], fn_output_signature=tf.float32)
    height, width = tf.shape(images)[1], tf.shape(images)[2]
    masks = tf.map_fn(
        lambda s: cutmix_mask(height, width, s), seeds[2 * q : 3 * q],
        fn_output_signature=tf.float32,
    )
    mixup = ratio[:, None, None, None] * images[:q] + (1 - ratio[:, None, None, None]) * images[q : 2 * q]
    cutmix = masks * images[2 * q : 3 * q] + (1 - masks) * images[3 * q :]
    area = tf.reduce_mean(masks, axis=[1, 2, 3])
    mixup_labels = ratio[:, None] * labels[:q] + (1 - ratio[:, None]) * labels[q : 2 * q]
    cutmix_labels = area[:, None] * labels[2 * q : 3 * q] + (1 - area[:, None]) * labels[3 * q :]
    return (
        tf.concat([mixup, cutmix], 0),
        tf.concat([mixup_labels, cutmix_labels], 0),
        tf.concat([seeds[:q], seeds[2 * q : 3 * q]], 0),
    )


def examples_per_batch(config, batch_size):
    """Source examples read per output batch (mixing reads twice as many)."""
    return 2 * batch_size if config.mixup_cutmix else batch_size


def make_train_dataset(source, config, batch_size, seed=0, num_shards=1, shard_index=0,
                       start_batch=0):
    """Training batches of one shard, from batch `start_batch` of its stream.

    The stream runs through the shard epoch after epoch. Each epoch cuts
    the shard into blocks of `shuffle_buffer` records and permutes each block
    with a stateless seed from (seed, epoch, block) -- the whole epoch when
    the shard fits in one block; no shuffle when `shuffle_buffer` < 2.
    Batches are `batch_size` images with one-hot (mixed) labels.
    """
    num_classes = source.num_classes
    examples = source.train(num_shards, shard_index)
    per_epoch = source.shard_size(num_shards, shard_index)
    per_batch = examples_per_batch(config, batch_size)
    if per_epoch < per_batch:
        raise ValueError(
            f"Each input pipeline needs at least {per_batch} training examples for one batch; "
            f"pipeline {shard_index} of {num_shards} has {per_epoch}. Lower --batch_size."
        )
    start_epoch, offset = divmod(start_batch * per_batch, per_epoch)
    block = max(1, min(config.shuffle_buffer, per_epoch))

    def shuffle_block(index, keys, records, labels):
        # One stateless permutation per block of `block` consecutive records.
        order = tf.random.experimental.stateless_shuffle(
            tf.range(tf.shape(keys)[0]), tf.stack([tf.cast(seed, tf.int64), index])
        )
        return tf.data.Dataset.from_tensor_slices(
            (tf.gather(keys, order), tf.gather(records, order), tf.gather(labels, order))
        )

    def epoch(e):
        ds = examples
        if block > 1:
            ds = ds.batch(block).enumerate().flat_map(
                lambda i, batch: shuffle_block(e * 2**_BLOCK_BITS + i, *batch)
            )
        return ds.map(lambda key, record, label: (example_seed(seed, e, key), record, label))

    ds = tf.data.Dataset.range(start_epoch, 2**_EPOCH_BITS).flat_map(epoch).skip(offset)
    ds = ds.map(
        lambda s, record, label: (
            train_transform(source.decode(record), config.train_size, s, config.crop_area_range),
            tf.one_hot(label, num_classes),
            s,
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    ds = ds.batch(per_batch, drop_remainder=True)
    if config.mixup_cutmix:
        ds = ds.map(mix_batch, num_parallel_calls=tf.data.AUTOTUNE)
    if config.randaugment_layers > 0:
        ds = ds.map(
            lambda images, labels, seeds: (
                augment.rand_augment_batch(
                    images, seeds, config.randaugment_layers, config.randaugment_magnitude
                ),
                labels,
                seeds,
            ),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
    ds = ds.map(lambda images, labels, seeds: (images, labels))
    return ds.prefetch(tf.data.AUTOTUNE)


# Label of the padding examples that even out the eval shards.
PADDING_LABEL = -1


def make_eval_dataset(source, config, batch_size, num_shards=1, shard_index=0, batches_per_step=1):
    """Eval batches of one shard: (images, integer labels), all full.

    Every shard is padded with blank examples labelled `PADDING_LABEL` to
    the same number of whole steps (`batches_per_step` batches each), so
    that every replica of every worker gets a batch at every eval step:
    a replica left without data would get an empty batch, which the model
    cannot run, and TPUs need static shapes.
    """
    per_step = batch_size * batches_per_step
    largest = -(-source.num_test // num_shards)  # ceil
    total = -(-largest // per_step) * per_step
    count = len(range(shard_index, source.num_test, num_shards))
    ds = source.test(num_shards, shard_index).map(
        lambda image, label: (config.eval_transform(image), tf.cast(label, tf.int32)),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    size = config.eval_transform.size
    blank = (tf.zeros([size, size, 3]), tf.constant(PADDING_LABEL))
    ds = ds.concatenate(tf.data.Dataset.from_tensors(blank).repeat(total - count))
    return ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
