"""Input data: the embedded `shapes` set, TFDS datasets and image folders.

A `Source` hands out its training examples as ``(key, record, int label)``,
where `decode(record)` is the uint8 image [H, W, 3] (records are encoded
files, paths or arrays: cheap to shuffle and to skip), and its test examples
as ``(image, label)``, both split into
disjoint shards (one per input pipeline, i.e. per worker) so that no example
is read by two workers. The key is the example's index in the split; the
pipeline derives the example's random augmentation from it, so an example is
augmented the same way whichever worker reads it. Augmentation and batching
are in `training.pipeline`.

Image folders are scanned before training: empty class folders and files that
do not decode are reported by name (or, on request, allowed / left out).
"""

import dataclasses
import os
from concurrent import futures

import numpy as np
import tensorflow as tf

SHAPES_CLASSES = ("circle", "square", "triangle", "cross")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
# How many offending files an error message lists before "... and N more".
_LISTED = 5


@dataclasses.dataclass
class Source:
    """A dataset split into disjoint shards.

    `train(num_shards, index)` and `test(num_shards, index)` return the
    examples of one shard; `num_train` / `num_test` count the whole split.
    """

    train: object
    test: object
    decode: object
    num_classes: int
    class_names: tuple
    num_train: int
    num_test: int
    skipped_files: tuple = ()

    def shard_size(self, num_shards, index):
        """Training examples in shard `index` (`Dataset.shard` semantics)."""
        return len(range(index, self.num_train, num_shards))


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


def _keyed(*tensors):
    """A dataset of ``(index, *tensors[index])``."""
    keys = np.arange(len(tensors[0]), dtype=np.int64)
    return tf.data.Dataset.from_tensor_slices((keys, *tensors))


def shapes(num_train=1024, num_test=256, size=32):
    train = make_shapes(num_train, size, seed=0)
    test = make_shapes(num_test, size, seed=1)
    return Source(
        lambda n, i: _keyed(*train).shard(n, i),
        lambda n, i: tf.data.Dataset.from_tensor_slices(test).shard(n, i),
        lambda image: image,
        len(SHAPES_CLASSES),
        SHAPES_CLASSES,
        num_train,
        num_test,
    )


def _decode(data):
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def tfds_source(name, data_dir=None, download=False, train_split="train", test_split=None):
    """A TFDS dataset with `image` and `label` features.

    `download=False` by default: without it, a missing dataset makes TFDS
    retry the network for minutes before failing. Images are decoded after
    sharding, so that each worker decodes only its own examples.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as error:  # noqa: BLE001 - TFDS's not-found errors vary
        raise ValueError(
            f"`--dataset` must be 'shapes', 'folder' or a TFDS dataset name. "
            f"Received: dataset={name!r} ({str(error).splitlines()[0]})"
        ) from None
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

    def read(split):
        return builder.as_dataset(
            split=split,
            as_supervised=True,
            shuffle_files=False,  # the pipeline shuffles, from the run's seed
            decoders={"image": tfds.decode.SkipDecoding()},
        )

    def train(n, i):
        return read(train_split).enumerate().shard(n, i).map(
            lambda key, example: (key, *example)
        )

    def test(n, i):
        return read(test_split).shard(n, i).map(lambda image, label: (_decode(image), label))

    label = builder.info.features["label"]
    return Source(
        train,
        test,
        _decode,
        label.num_classes,
        tuple(label.names),
        splits[train_split].num_examples,
        splits[test_split].num_examples,
    )


def _listing(paths):
    shown = ", ".join(paths[:_LISTED])
    more = len(paths) - _LISTED
    return shown + (f" and {more} more" if more > 0 else "")


def _undecodable(paths):
    """The files among `paths` that TensorFlow cannot decode as an image."""

    def fails(path):
        try:
            _decode(tf.io.read_file(path))
            return False
        except (tf.errors.OpError, ValueError):
            return True

    with futures.ThreadPoolExecutor(max(2, os.cpu_count() or 1)) as pool:
        return [p for p, bad in zip(paths, pool.map(fails, paths)) if bad]


def _scan_split(root, split, class_names, allow_empty_classes, skip_bad_images):
    """(paths, labels, skipped) of one split of an image folder."""
    paths, labels, empty = [], [], []
    for label, name in enumerate(class_names):
        folder = os.path.join(root, split, name)
        files = sorted(
            f for f in (os.listdir(folder) if os.path.isdir(folder) else [])
            if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            empty.append(os.path.join(split, name))
        paths += [os.path.join(folder, f) for f in files]
        labels += [label] * len(files)
    if not paths:
        raise ValueError(
            f"Image folder {root!r} has no images in {split!r} (looked for "
            f"{', '.join(IMAGE_EXTENSIONS)} files in its class folders)."
        )
    if empty and not allow_empty_classes:
        raise ValueError(
            f"Image folder {root!r} has empty class folders: {_listing(empty)}. Add images, "
            "remove the folders, or pass --allow_empty_classes to keep them as classes."
        )
    bad = _undecodable(paths)
    if bad and not skip_bad_images:
        raise ValueError(
            f"{len(bad)} file(s) of image folder {root!r} cannot be decoded: "
            f"{_listing(bad)}. Fix or remove them, or pass --skip_bad_images."
        )
    bad_set = set(bad)
    keep = [i for i, p in enumerate(paths) if p not in bad_set]
    return [paths[i] for i in keep], [labels[i] for i in keep], bad


def folder_source(root, allow_empty_classes=False, skip_bad_images=False):
    """Images in ``root/{train,test|validation}/<class>/*.{jpg,png,...}``.

    The class names are the sorted sub-folders of ``root/train``. Every file
    is decoded once here, so that bad data is found before training.
    """
    if not os.path.isdir(root):
        raise ValueError(f"`--data_dir` must be a directory. Received: data_dir={root!r}")
    test_split = next((s for s in ("test", "validation") if os.path.isdir(os.path.join(root, s))),
                      None)
    if not os.path.isdir(os.path.join(root, "train")) or test_split is None:
        raise ValueError(
            f"Image folder {root!r} must have a 'train' and a 'test' (or 'validation') "
            f"sub-folder of class folders; found {sorted(os.listdir(root))}."
        )
    class_names = tuple(
        sorted(d for d in os.listdir(os.path.join(root, "train"))
               if os.path.isdir(os.path.join(root, "train", d)))
    )
    if not class_names:
        raise ValueError(f"Image folder {root!r} has no class folders in 'train'.")
    scans = [
        _scan_split(root, split, class_names, allow_empty_classes, skip_bad_images)
        for split in ("train", test_split)
    ]
    (train_paths, train_labels, bad_train), (test_paths, test_labels, bad_test) = scans
    skipped = tuple(bad_train + bad_test)
    if skipped:
        print(f"[data] left out {len(skipped)} undecodable file(s): {_listing(list(skipped))}")

    def read(path):
        return _decode(tf.io.read_file(path))

    train_labels = np.asarray(train_labels, np.int32)
    return Source(
        lambda n, i: _keyed(train_paths, train_labels).shard(n, i),
        lambda n, i: tf.data.Dataset.from_tensor_slices(
            (test_paths, np.asarray(test_labels, np.int32))
        ).shard(n, i).map(lambda path, label: (read(path), label)),
        read,
        len(class_names),
        class_names,
        len(train_paths),
        len(test_paths),
        skipped,
    )


def get_source(dataset, data_dir=None, download=False, allow_empty_classes=False,
               skip_bad_images=False):
    """``"shapes"``, ``"folder"`` (with `data_dir`) or a TFDS name."""
    if dataset == "shapes":
        return shapes()
    if dataset == "folder":
        if not data_dir:
            raise ValueError("`--dataset=folder` needs `--data_dir` (the image folder root).")
        return folder_source(data_dir, allow_empty_classes, skip_bad_images)
    return tfds_source(dataset, data_dir=data_dir, download=download)
