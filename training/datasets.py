"""Input data: the embedded `shapes` set, TFDS datasets and image folders.

Every source yields ``(uint8 image [H, W, 3], int label)`` examples and says
how many classes it has; the pipeline (augmentation, batching) is in
`training.pipeline`.
"""

import dataclasses
import os

import numpy as np
import tensorflow as tf

SHAPES_CLASSES = ("circle", "square", "triangle", "cross")


@dataclasses.dataclass
class Source:
    train: tf.data.Dataset
    test: tf.data.Dataset
    num_classes: int
    class_names: tuple
    num_train: int
    num_test: int


def make_shapes(num_examples, size=32, seed=0):
    """The embedded default dataset: coloured shapes on noisy backgrounds.

    Four classes (`SHAPES_CLASSES`) drawn at random positions, sizes and
    colours; deterministic for a given seed, no download. Small enough to
    train a tiny NF model in seconds on a CPU, hard enough that a broken
    training step does not reach high accuracy.

    Returns:
        (images uint8 [N, size, size, 3], labels int32 [N]).
    """
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    images = np.empty((num_examples, size, size, 3), np.uint8)
    labels = rng.integers(0, len(SHAPES_CLASSES), num_examples).astype(np.int32)
    for i, label in enumerate(labels):
        radius = rng.uniform(0.2, 0.35) * size
        cx, cy = rng.uniform(radius, size - radius, 2)
        dx, dy = xx - cx, yy - cy
        if label == 0:
            mask = dx**2 + dy**2 < radius**2
        elif label == 1:
            mask = (np.abs(dx) < radius * 0.8) & (np.abs(dy) < radius * 0.8)
        elif label == 2:
            mask = (dy > -radius) & (dy < radius) & (np.abs(dx) < (dy + radius) / 2)
        else:
            arm = radius / 3
            mask = ((np.abs(dx) < arm) & (np.abs(dy) < radius)) | (
                (np.abs(dy) < arm) & (np.abs(dx) < radius)
            )
        background = rng.uniform(0, 255, 3)
        foreground = (background + rng.uniform(80, 175, 3)) % 255
        image = np.where(mask[..., None], foreground, background)
        image = image + rng.normal(0, 12, image.shape)
        images[i] = np.clip(image, 0, 255).astype(np.uint8)
    return images, labels


def shapes(num_train=1024, num_test=256, size=32):
    train = make_shapes(num_train, size, seed=0)
    test = make_shapes(num_test, size, seed=1)
    return Source(
        tf.data.Dataset.from_tensor_slices(train),
        tf.data.Dataset.from_tensor_slices(test),
        len(SHAPES_CLASSES),
        SHAPES_CLASSES,
        num_train,
        num_test,
    )


def tfds_source(name, data_dir=None, download=False, train_split="train", test_split=None):
    """A TFDS dataset with `image` and `label` features.

    `download=False` by default: without it, a missing dataset makes TFDS
    retry the network for minutes before failing.
    """
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        builder.download_and_prepare()
    elif not tf.io.gfile.exists(builder.data_dir):
        raise FileNotFoundError(
            f"TFDS dataset {name!r} is not prepared in {builder.data_dir}. Prepare it "
            "(see the TFDS docs for manual downloads such as imagenet2012), point "
            "--data_dir at it, or pass --download."
        )
    splits = builder.info.splits
    if test_split is None:
        test_split = "validation" if "validation" in splits else "test"
    for split in (train_split, test_split):
        if split not in splits:
            raise ValueError(
                f"Dataset {name!r} has no split {split!r}; it has {sorted(splits)}."
            )
    train = builder.as_dataset(split=train_split, as_supervised=True, shuffle_files=True)
    test = builder.as_dataset(split=test_split, as_supervised=True)
    label = builder.info.features["label"]
    return Source(
        train,
        test,
        label.num_classes,
        tuple(label.names),
        splits[train_split].num_examples,
        splits[test_split].num_examples,
    )


def folder_source(root):
    """Images in ``root/{train,test}/<class>/*.{jpg,png}`` (TFDS ImageFolder)."""
    import tensorflow_datasets as tfds

    if not os.path.isdir(root):
        raise ValueError(f"`data_dir` must be a directory. Received: data_dir={root!r}")
    builder = tfds.folder_dataset.ImageFolder(root)
    splits = builder.info.splits
    test_split = "test" if "test" in splits else ("validation" if "validation" in splits else None)
    if "train" not in splits or test_split is None:
        raise ValueError(
            f"Image folder {root!r} must have a 'train' and a 'test' (or 'validation') "
            f"sub-folder of class folders; found splits {sorted(splits)}."
        )
    label = builder.info.features["label"]
    return Source(
        builder.as_dataset(split="train", as_supervised=True, shuffle_files=True),
        builder.as_dataset(split=test_split, as_supervised=True),
        label.num_classes,
        tuple(label.names),
        splits["train"].num_examples,
        splits[test_split].num_examples,
    )


def get_source(dataset, data_dir=None, download=False):
    """``"shapes"``, ``"folder"`` (with `data_dir`) or a TFDS name."""
    if dataset == "shapes":
        return shapes()
    if dataset == "folder":
        if not data_dir:
            raise ValueError("`--dataset=folder` needs `--data_dir` (the image folder root).")
        return folder_source(data_dir)
    return tfds_source(dataset, data_dir=data_dir, download=download)
