"""`nfnet-convert` (`nfnet_keras.convert.cli`): the function, its error
status, and the installed console script."""

import os
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(__file__))
from conftest import tiny_nfnet  # noqa: E402

from nfnet_keras.convert import cli  # noqa: E402


def test_convert_cli(tiny_files, tmp_path, capsys):
    out = tmp_path / "tiny.weights.h5"
    code = cli.main([str(tiny_files["safetensors"]), "--model", "nfnet_tiny", "--classes", "10", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "97 arrays" in printed and f"Wrote {out}" in printed
    model = tiny_nfnet(classes=10, weights=str(out))
    reference = tiny_nfnet(classes=10, weights=str(tiny_files["haiku"]))
    for a, b in zip(model.weights, reference.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Errors go to stderr with a non-zero status.
    assert cli.main([str(tiny_files["haiku"]), "--model", "nfnet_tiny", "--out", str(out)]) == 1
    assert "shape mismatches" in capsys.readouterr().err


def test_convert_console_script(tiny_files, tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "nfnet-convert")
    out = tmp_path / "cli.weights.h5"
    result = subprocess.run(
        [script, str(tiny_files["haiku"]), "--model", "nfnet_tiny", "--classes", "10", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Wrote" in result.stdout and out.exists()
