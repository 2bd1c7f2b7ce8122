"""The data sources (`training/datasets.py`): the shapes dataset, image
folders scanned before training, a missing TFDS dataset."""

import shutil

import numpy as np

from _training import fails, make_folder  # tests/ is on sys.path
from training import datasets


def test_shapes_dataset_is_deterministic_and_balanced():
    images, labels = datasets.make_shapes(400, seed=3)
    again, _ = datasets.make_shapes(400, seed=3)
    np.testing.assert_array_equal(images, again)
    assert images.shape == (400, 32, 32, 3) and images.dtype == np.uint8
    counts = np.bincount(labels, minlength=4)
    assert counts.min() > 70  # four classes, roughly balanced
    # Classes differ in shape, not in colour statistics alone.
    assert images.std() > 30


def test_image_folder_is_scanned_before_training(tmp_path, capsys):
    root = make_folder(tmp_path / "data")
    source = datasets.get_source("folder", str(root))
    assert source.class_names == ("blue", "green", "red")
    assert (source.num_train, source.num_test) == (18, 9)
    # One empty class folder: listed; kept as a class when allowed.
    (root / "train" / "yellow").mkdir()
    (root / "test" / "yellow").mkdir()
    err = fails(capsys, "--dataset=folder", f"--data_dir={root}", f"--out={tmp_path / 'run'}")
    assert "train/yellow" in err and "--allow_empty_classes" in err
    source = datasets.get_source("folder", str(root), allow_empty_classes=True)
    assert source.num_classes == 4 and source.num_train == 18
    shutil.rmtree(root / "train" / "yellow"), shutil.rmtree(root / "test" / "yellow")
    # A file that does not decode: named; left out and counted when asked.
    bad = root / "train" / "red" / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    err = fails(capsys, "--dataset=folder", f"--data_dir={root}", f"--out={tmp_path / 'run'}")
    assert str(bad) in err and "--skip_bad_images" in err
    source = datasets.get_source("folder", str(root), skip_bad_images=True)
    assert source.skipped_files == (str(bad),) and source.num_train == 18
    # Every class folder empty.
    empty = tmp_path / "empty"
    for split in ("train", "test"):
        (empty / split / "cat").mkdir(parents=True)
    err = fails(capsys, "--dataset=folder", f"--data_dir={empty}", f"--out={tmp_path / 'run'}")
    assert "no images" in err


def test_missing_tfds_dataset_fails_fast_with_a_clear_message(tmp_path, capsys):
    err = fails(capsys, "--dataset=cifar10", f"--data_dir={tmp_path}", f"--out={tmp_path / 'run'}")
    assert "cifar10" in err and "--download" in err
