"""The command line (`training/train.py`): `--help` before TensorFlow, bad
input as one line before training."""

import subprocess
import sys

import pytest

from _training import ROOT, fails  # tests/ is on sys.path


def test_help_answers_without_importing_tensorflow():
    code = (
        "import sys, time; start = time.time(); from training import train; "
        "train.run(['--help']); print('SECONDS', time.time() - start, 'tensorflow' in sys.modules)"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)
    assert "--freeze_backbone_epochs" in proc.stdout and "--config.<field>" in proc.stdout
    seconds, tf_imported = proc.stdout.split("SECONDS")[-1].split()
    assert tf_imported == "False"
    assert float(seconds) < 1.0


@pytest.mark.parametrize(
    "flags,match",
    [
        (["--batch_size=0"], "batch_size"),
        (["--epochs=-1"], "epochs"),
        (["--config=nfnet_f9"], "config"),
        (["--steps_per_epoch=0"], "steps_per_epoch"),
        (["--steps_per_epoch=-3"], "steps_per_epoch"),
        (["--config.nope=1"], "not a recipe field"),
        (["--config.batch_size=1.5"], "config.batch_size"),
        (["--nope"], "nope"),
        (["--dataset=folder", "--data_dir=/does/not/exist"], "data_dir"),
        (["--dataset=no_such_dataset_xyz"], "no_such_dataset_xyz"),
        (["--weights=/does/not/exist.weights.h5"], "no such file"),
        (["--mode=eval"], "--weights"),
    ],
)
def test_bad_input_is_one_line_before_training(tmp_path, capsys, flags, match):
    fails(capsys, f"--out={tmp_path}", *flags)
    assert not (tmp_path / "checkpoints").exists()
