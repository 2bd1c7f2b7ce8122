"""The timm converter (`nfnet_keras.convert.timm`): every file shape is
checked before any transpose."""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import tiny_nfnet  # noqa: E402


def _tiny_state(tiny_files):
    from safetensors.numpy import load_file

    return dict(load_file(str(tiny_files["safetensors"])))


@pytest.mark.parametrize(
    "key,change,expected",
    [
        # A gain reshaped from (16, 1, 1, 1) to (4, 4).
        ("stages.1.0.conv1.gain", lambda w: w.reshape(4, 4), r"stages\.1\.0\.conv1\.gain: file \(4, 4\), expected \(16, 1, 1, 1\)"),
        # An SE kernel with a 2x2 window instead of 1x1.
        ("stages.1.0.attn_last.fc1.weight", lambda w: np.repeat(np.repeat(w, 2, 2), 2, 3),
         r"attn_last\.fc1\.weight: file \(16, 32, 2, 2\), expected \(16, 32, 1, 1\)"),
        # A conv kernel with an axis dropped, and one added.
        ("stem.conv1.weight", lambda w: w[0], r"stem\.conv1\.weight: file \(3, 3, 3\), expected \(8, 3, 3, 3\)"),
        ("stem.conv1.weight", lambda w: w[None], r"stem\.conv1\.weight: file \(1, 8, 3, 3, 3\), expected"),
    ],
)
def test_converter_checks_file_shapes_before_any_reshape(tiny_files, tmp_path, key, change, expected):
    from safetensors.numpy import save_file

    state = _tiny_state(tiny_files)
    state[key] = np.ascontiguousarray(change(state[key]))
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=expected):
        tiny_nfnet(classes=10, weights=str(path))
