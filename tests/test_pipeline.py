"""The input pipeline (`training/pipeline.py`): the training stream restarts
exactly at a batch and its shards are disjoint; evaluation shards are padded
to the same whole steps."""

import numpy as np

from training import datasets, pipeline, train


def test_input_stream_restarts_exactly_at_a_batch_and_shards_are_disjoint():
    source = datasets.shapes(num_train=40, num_test=8)
    config = train.resolve_config(train.parse(["--config=demo", "--config.mixup_cutmix=True",
                                               "--config.shuffle_buffer=16"])[0])

    def batches(count, **kwargs):
        ds = pipeline.make_train_dataset(source, config, 4, seed=3, **kwargs)
        return [tuple(t.numpy() for t in b) for b in ds.take(count)]

    stream = batches(12)  # 12 batches of 8 examples: past two epochs of 40
    again = batches(12)
    resumed = batches(5, start_batch=7)
    for x, y in zip(stream, again):
        np.testing.assert_array_equal(x[0], y[0])
    for x, y in zip(stream[7:], resumed):
        np.testing.assert_array_equal(x[0], y[0])
        np.testing.assert_array_equal(x[1], y[1])
    # Two shards hold every training key once.
    keys = [int(k) for i in range(2) for k, _, _ in source.train(2, i).as_numpy_iterator()]
    assert sorted(keys) == list(range(40))


def test_eval_shards_are_padded_to_the_same_whole_steps():
    source = datasets.shapes(num_train=8, num_test=13)
    config = train.resolve_config(train.parse(["--config=demo"])[0])
    shards = [
        list(pipeline.make_eval_dataset(source, config, 2, num_shards=2, shard_index=i,
                                        batches_per_step=2).as_numpy_iterator())
        for i in range(2)
    ]
    # 7 and 6 examples -> 8 each: two steps of two full batches per worker.
    assert [len(s) for s in shards] == [4, 4]
    assert all(images.shape == (2, 32, 32, 3) for s in shards for images, _ in s)
    labels = np.concatenate([labels for s in shards for _, labels in s])
    real = labels[labels != pipeline.PADDING_LABEL]
    _, expected = datasets.make_shapes(13, seed=1)
    assert sorted(real) == sorted(expected)  # every test example once
