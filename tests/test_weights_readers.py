"""The file formats of `weights=` (`nfnet_keras.weights.readers`): timm's
.pth and .safetensors, PyTorch pickles that carry code, and unreadable files
named in one line by the API and by `nfnet-convert`."""

import os
import re
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from conftest import tiny_nfnet  # noqa: E402

from nfnet_keras.convert import cli  # noqa: E402


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_timm_files_load_the_same_tensors_as_haiku(tiny_files, kind):
    from_haiku = tiny_nfnet(classes=10, weights=str(tiny_files["haiku"]))
    from_timm = tiny_nfnet(classes=10, weights=str(tiny_files[kind]), convention="timm")
    assert len(from_timm.weights) == len(from_haiku.weights)
    for a, b in zip(from_timm.weights, from_haiku.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    body = tiny_nfnet(weights=str(tiny_files[kind]), include_top=False)
    for a, b in zip(body.weights, from_haiku.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_pth_with_code_is_refused(tmp_path):
    from _timm import torch

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"stem.conv1.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"Cannot read .*evil\.pth as a PyTorch state dict.*posix\.system.*refused"):
        tiny_nfnet(classes=10, weights=str(tmp_path / "evil.pth"))
    assert not marker.exists()


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("random.pth", np.random.default_rng(0).bytes(4000), r"as a PyTorch state dict .*: not a pickle of tensors"),
        ("empty.pth", b"", r"as a PyTorch state dict .*: the file is empty or ends early"),
        ("random.safetensors", np.random.default_rng(1).bytes(4000), r"as a safetensors file: "),
        ("random.weights.h5", np.random.default_rng(2).bytes(4000), r"as a Keras \.weights\.h5 \(HDF5\) file"),
    ],
)
def test_unreadable_files_get_one_line_from_the_api_and_the_cli(tmp_path, capsys, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=expected) as info:
        tiny_nfnet(classes=10, weights=str(path))
    assert len(str(info.value).splitlines()) == 1 and name in str(info.value)
    assert cli.main([str(path), "--model", "nfnet_tiny", "--classes", "10", "--out", str(tmp_path / "o.weights.h5")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err and err.startswith("nfnet-convert: error:")


def test_any_corrupt_pth_is_named_as_not_a_pickle_of_tensors(tmp_path):
    # Random bytes reach many branches of torch's unpickler (UnicodeDecodeError,
    # IndexError, KeyError, ...): each is reported the same way, cause in brackets.
    from nfnet_keras.weights import readers

    path = tmp_path / "corrupt.pth"
    for seed in range(300):
        path.write_bytes(np.random.default_rng(seed).bytes(4000))
        with pytest.raises(ValueError) as info:
            readers.read_timm_file(str(path))
        message = str(info.value)
        assert len(message.splitlines()) == 1, message
        assert re.search(r"as a PyTorch state dict .*: (not a pickle of tensors|the file is empty or ends "
                         r"early)", message), f"seed {seed}: {message}"
