"""The training command line as the training tests drive it: the repository
root, a refused command, and image folders written as PNG files."""

import os

import numpy as np
import tensorflow as tf

from training import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def fails(capsys, *argv, code=2):
    """Runs the command line; asserts the exit code and a one-line error."""
    assert train.main(list(argv)) == code
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    return err


COLOURS = {"blue": (0, 0, 255), "green": (0, 255, 0), "red": (255, 0, 0)}


def make_folder(root, per_class=(6, 3), classes=COLOURS, seed=0):
    """Noisy images whose class is their colour, as PNG files."""
    rng = np.random.default_rng(seed)
    for split, count in zip(("train", "test"), per_class):
        for name, rgb in classes.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                size = int(rng.integers(24, 48))
                image = np.clip(np.array(rgb) * 0.6 + rng.normal(0, 40, (size, size + 3, 3)), 0, 255)
                tf.io.write_file(str(folder / f"{i}.png"), tf.io.encode_png(image.astype(np.uint8)))
    return root
