"""RandAugment and MixUp/CutMix against the NFNet reference's stated behaviour.

deepmind-research `nfnets/autoaugment.py` and `nfnets/dataset.py`
(reference doc §8.1): fixed magnitude M out of 10, one op per layer always
applied, ops on uint8 images, RandAugment after MixUp/CutMix in the NFNet
recipe (`augment_before_mix=False`).
"""

import numpy as np
import pytest
import tensorflow as tf

from training import augment, pipeline, train

SEED = tf.constant([7, 11], tf.int64)


def image(seed=0, shape=(20, 24, 3)):
    return tf.constant(np.random.default_rng(seed).integers(0, 256, shape), tf.uint8)


@pytest.mark.parametrize("magnitude", [5, 10, 15])
def test_enhance_ops_use_the_fixed_factor(magnitude):
    x = image()
    factor = magnitude / 10 * 1.8 + 0.1  # `_enhance_level_to_arg`
    expected = np.clip(x.numpy().astype(np.float32) * factor, 0, 255).astype(np.uint8)
    for seed in ([1, 2], [3, 4]):  # the magnitude is not sampled
        out = augment.apply_op("Brightness", x, magnitude, tf.constant(seed, tf.int64))
        np.testing.assert_array_equal(out.numpy(), expected)


def test_posterize_and_solarize_follow_the_level_rules():
    x = image()
    # M=5 keeps int(4 * 5/10) = 2 bits: multiples of 64.
    out = augment.apply_op("Posterize", x, 5, SEED).numpy()
    np.testing.assert_array_equal(out, x.numpy() // 64 * 64)
    # Solarize threshold int(256 * M/10): a no-op from M=10 on.
    np.testing.assert_array_equal(augment.apply_op("Solarize", x, 10, SEED).numpy(), x.numpy())
    low = augment.apply_op("Solarize", x, 5, SEED).numpy()  # threshold 128
    np.testing.assert_array_equal(low, np.where(x.numpy() < 128, x.numpy(), 255 - x.numpy()))
    # SolarizeAdd adds int(110 * M/10) below 128.
    add = augment.apply_op("SolarizeAdd", x, 10, SEED).numpy().astype(int)
    xi = x.numpy().astype(int)
    np.testing.assert_array_equal(add, np.where(xi < 128, np.minimum(xi + 110, 255), xi))


def test_affine_ops_flip_their_sign_and_fill_with_128():
    x = tf.fill([16, 16, 3], tf.constant(7, tf.uint8))
    outs = {
        tuple(augment.apply_op("TranslateX", x, 1, tf.constant([s, 0], tf.int64))[0, :, 0].numpy())
        for s in range(8)
    }
    # 10 px either way (100 * 1/10): the uncovered columns are 128.
    assert outs == {tuple([128] * 10 + [7] * 6), tuple([7] * 6 + [128] * 10)}


def test_one_op_per_layer_per_image_from_its_own_seed():
    x = tf.cast(tf.stack([image(0), image(0)]), tf.float32)
    seeds = tf.constant([[1, 2], [3, 4]], tf.int64)
    ops = ("Invert", "Posterize")
    out = augment.rand_augment_batch(x, seeds, 1, 5, ops).numpy()
    again = augment.rand_augment_batch(x, seeds, 1, 5, ops).numpy()
    np.testing.assert_array_equal(out, again)  # stateless
    raw = x[0].numpy()
    candidates = [255 - raw, raw // 64 * 64]
    for i in range(2):
        assert any(np.array_equal(out[i], c) for c in candidates)


def test_randaugment_runs_after_mixup_cutmix(monkeypatch):
    config = train.resolve_config(train.parse([
        "--config=demo", "--config.mixup_cutmix=True", "--config.randaugment_layers=1",
        "--config.randaugment_magnitude=5", "--config.shuffle_buffer=0",
    ])[0])
    from training import datasets

    source = datasets.shapes(num_train=32, num_test=8)
    posterize_only = augment.rand_augment_batch
    monkeypatch.setattr(  # Posterize alone: 2 bits at M=5
        augment, "rand_augment_batch",
        lambda *args: posterize_only(*args, ops=("Posterize",)),
    )
    images, labels = next(iter(pipeline.make_train_dataset(source, config, 8)))
    # Mixing after posterizing would give values between the 4 levels.
    assert set(np.unique(images.numpy())) <= {0.0, 64.0, 128.0, 192.0}
    # Labels are mixed (one-hot rows averaged with the MixUp/CutMix ratio).
    np.testing.assert_allclose(labels.numpy().sum(-1), 1.0, rtol=1e-6)
    assert np.any((labels.numpy() > 0) & (labels.numpy() < 1))


def test_cutmix_box_and_label_ratio():
    mask = pipeline.cutmix_mask(32, 32, SEED).numpy()[..., 0]
    rows, cols = np.nonzero(mask)
    # One axis-aligned box of ones.
    assert mask.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
    a = tf.zeros([4, 32, 32, 3])
    b = tf.ones([4, 32, 32, 3])
    images = tf.concat([a[:1], b[:1], a[:1], b[:1]], 0)
    labels = tf.eye(4)
    seeds = tf.constant([[1, 2], [3, 4], [5, 6], [7, 8]], tf.int64)
    mixed, mixed_labels, _ = pipeline.mix_batch(images, labels, seeds)
    area = float(pipeline.cutmix_mask(32, 32, seeds[2]).numpy().mean())
    # CutMix output: the box from example 2 (zeros), the rest from example 3.
    assert float(tf.reduce_mean(mixed[1])) == pytest.approx(1 - area, abs=1e-6)
    np.testing.assert_allclose(mixed_labels[1].numpy(), [0, 0, area, 1 - area], atol=1e-6)
    # MixUp output: ratio r of example 0 (zeros) and 1 - r of example 1.
    ratio = 1 - float(tf.reduce_mean(mixed[0]))
    np.testing.assert_allclose(mixed_labels[0].numpy(), [ratio, 1 - ratio, 0, 0], atol=1e-6)
