"""The training job (`training/trainer.py`) end to end: the run's weights,
logs, record and export, eval mode, the guarded `--out` and the fallback to an
older checkpoint, the non-finite stop, reproducible runs that resume after a
kill, fine-tuning, mixed precision."""

import glob
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from _training import ROOT, fails, make_folder  # tests/ is on sys.path
from training import pipeline, train, trainer

TIMEOUT_S = 300  # seconds a trainer subprocess may take (a quick demo run takes ~25 s)
# A short demo run: 2 epochs of 3 steps of 16 images.
QUICK = ["--config=demo", "--batch_size=16", "--epochs=2", "--steps_per_epoch=3", "--verbose=0"]


def run(out, *flags):
    return train.run([*QUICK, f"--out={out}", *flags])


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A finished short demo run with export (shared by several tests)."""
    out = tmp_path_factory.mktemp("finished")
    return out, run(out)


def test_demo_run_writes_weights_models_logs_config_and_export(finished):
    out, summary = finished
    assert summary["steps"] == 6 and np.isfinite(summary["final_train_loss"])
    assert summary["reloaded_max_abs_diff"] < 1e-4
    assert 0.0 <= summary["eval"]["accuracy"] <= summary["eval"]["top5"] <= 1.0
    for name in ("model.keras", "best.keras", "model.weights.h5", "config.json", "summary.json"):
        assert (out / name).exists(), name
    assert glob.glob(str(out / "export" / "*.tar.gz"))
    with open(out / "config.json") as f:
        record = json.load(f)
    assert record["run"]["model"] == "nfnet_tiny" and record["run"]["seed"] == 0
    assert record["run"]["precision"] == "float32" and record["strategy"] == "default"
    assert record["versions"]["tensorflow"] == tf.__version__
    assert "--steps_per_epoch=3" in record["command"]
    # TensorBoard: train and validation scalars, top-5 included, per epoch.
    tags = {"train": set(), "validation": set()}
    for split in tags:
        for path in glob.glob(str(out / "tensorboard" / split / "events.out.tfevents.*")):
            for raw in tf.data.TFRecordDataset(path):
                event = tf.compat.v1.Event.FromString(raw.numpy())
                tags[split].update(v.tag for v in event.summary.value)
    assert {"loss", "accuracy", "top5", "grad_norm", "agc_clip_fraction", "learning_rate"} <= tags["train"]
    assert {"accuracy", "top5", "loss"} <= tags["validation"]
    reloaded = keras.models.load_model(out / "model.keras")
    assert reloaded.agc_clipping == 0.01


def test_eval_mode_reports_the_final_top1_and_top5(finished, capsys):
    out, summary = finished
    for weights in ("model.keras", "model.weights.h5"):
        metrics = train.run(["--mode=eval", "--config=demo", f"--weights={out / weights}"])
        assert metrics["accuracy"] == pytest.approx(summary["eval"]["accuracy"], abs=1e-6)
        assert metrics["top5"] == 1.0 and metrics["examples"] == 256  # 4 classes
    assert "top5" in capsys.readouterr().out


def test_out_is_guarded_and_a_broken_checkpoint_falls_back(finished, tmp_path, capsys):
    done, _ = finished
    err = fails(capsys, *QUICK, f"--out={done}")
    assert "finished run" in err and "--overwrite" in err
    # An interrupted copy of it: its config and checkpoints (steps 3 and 6).
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(done / "config.json", out)
    shutil.copytree(done / "checkpoints", out / "checkpoints")
    err = fails(capsys, *QUICK, f"--out={out}", "--config.base_lr=1.0")
    assert "base_lr: 3.2 -> 1.0" in err
    err = fails(capsys, *QUICK, f"--out={out}", "--config.model='nf_resnet26'")
    assert "model: 'nfnet_tiny' -> 'nf_resnet26'" in err
    with open(out / "config.json") as f:
        assert json.load(f)["run"]["base_lr"] == 3.2  # untouched by the refusals
    # The latest checkpoint's data file is cut short: the previous one is used.
    data = glob.glob(str(out / "checkpoints" / "ckpt-6.data-*"))[0]
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    summary = run(out, "--no_export", "--verbose=2")
    printed = capsys.readouterr().out
    assert f"{out}/checkpoints/ckpt-6 cannot be read" in printed
    assert f"resuming from step 3 of {out}/checkpoints/ckpt-3" in printed
    assert summary["steps"] == 6
    # Another model's checkpoint without a config record.
    os.remove(out / "summary.json")
    os.remove(out / "config.json")
    err = fails(capsys, *QUICK, f"--out={out}", "--config.model='nf_resnet26'")
    assert "does not fit this model" in err and "checkpoints/ckpt-6" in err


def test_a_run_whose_steps_are_all_non_finite_stops(tmp_path, capsys, monkeypatch):
    def nan_images(image, size, seed, area_range):
        return tf.fill([size, size, 3], float("nan"))

    monkeypatch.setattr(pipeline, "train_transform", nan_images)
    err = fails(capsys, *QUICK, f"--out={tmp_path}", "--no_export", code=1)
    assert "All 3 steps of epoch 1 were skipped" in err and "--base_lr" in err


# ---------------------------------------------------------------------------
# Reproducibility: two runs agree; a killed run resumes to the same weights.
# ---------------------------------------------------------------------------


def _start(out, *flags):
    # Shuffle, crop, flip, dropout and stochastic depth on (MixUp/CutMix and
    # RandAugment are stateless functions of the same seeds: see
    # test_pipeline.py and test_augment.py); a checkpoint after every step.
    return subprocess.Popen(
        ["timeout", "-k", "5", str(TIMEOUT_S), sys.executable, "-m", "training.train", *QUICK,
         "--config.dropout_rate=0.3", "--config.stochastic_depth_rate=0.2",
         "--checkpoint_every_steps=1", "--no_export",
         "--verbose=2", f"--out={out}", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
        env=dict(os.environ, TF_DETERMINISTIC_OPS="1", TF_CPP_MIN_LOG_LEVEL="3"),
        start_new_session=True,  # one process group: `timeout` and the trainer
    )


def _weights(out):
    model = keras.models.load_model(out / "model.keras")
    return [w.numpy() for w in model.weights]


def _finish(proc):
    log, _ = proc.communicate(timeout=TIMEOUT_S + 30)
    assert proc.returncode == 0, log[-4000:]
    return log


def test_runs_are_reproducible_and_a_killed_run_resumes_to_the_same_weights(tmp_path):
    first, second, killed = (_start(tmp_path / name) for name in ("a", "b", "killed"))
    index = tmp_path / "killed" / "checkpoints" / "checkpoint"
    deadline = time.time() + TIMEOUT_S
    while not index.exists() and time.time() < deadline and killed.poll() is None:
        time.sleep(0.02)
    os.killpg(killed.pid, signal.SIGKILL)
    killed.communicate(timeout=60)
    assert not (tmp_path / "killed" / "summary.json").exists()
    resumed_log = _finish(_start(tmp_path / "killed"))
    match = re.search(r"resuming from step (\d+) of ", resumed_log)
    assert match and 1 <= int(match.group(1)) < 6, resumed_log[-3000:]
    _finish(first), _finish(second)
    a, b, resumed = (_weights(tmp_path / n) for n in ("a", "b", "killed"))
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert max(float(np.max(np.abs(x - y))) for x, y in zip(a, resumed)) <= 1e-6


@pytest.mark.slow
def test_kill_9_at_random_moments_across_checkpoint_writes(tmp_path):
    # Six kills at random times after the first checkpoint, with a checkpoint
    # after every step: every rerun resumes, the last one finishes with the
    # uninterrupted run's weights.
    reference = _start(tmp_path / "reference", "--epochs=4")
    rng = np.random.default_rng(0)
    out = tmp_path / "killed"
    for _ in range(6):
        proc = _start(out, "--epochs=4")
        index = out / "checkpoints" / "checkpoint"
        while not index.exists() and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 3.0)))
        os.killpg(proc.pid, signal.SIGKILL)
        log, _ = proc.communicate(timeout=60)
        assert "Traceback" not in log, log[-3000:]
        if (out / "summary.json").exists():
            break
    if not (out / "summary.json").exists():
        _finish(_start(out, "--epochs=4"))
    _finish(reference)
    diff = max(float(np.max(np.abs(x - y)))
               for x, y in zip(_weights(tmp_path / "reference"), _weights(out)))
    assert diff <= 1e-6


# ---------------------------------------------------------------------------
# Fine-tuning, mixed precision, the demo recipe.
# ---------------------------------------------------------------------------


def test_fine_tune_from_a_weights_file_on_an_image_folder(finished, tmp_path, capsys):
    done, _ = finished
    weights = str(done / "model.weights.h5")
    root = make_folder(tmp_path / "data", per_class=(16, 8))
    out = tmp_path / "run"
    summary = train.run([
        "--config=demo", "--dataset=folder", f"--data_dir={root}", f"--weights={weights}",
        "--batch_size=8", "--epochs=2", "--freeze_backbone_epochs=1", "--steps_per_epoch=6",
        "--checkpoint_every_steps=100", "--no_export", f"--out={out}", "--verbose=0",
        "--remat",  # gradient checkpointing: the frozen backbone still stays bit-identical
        # Without EMA: the evaluation's swap of EMA weights is exact only to
        # float rounding, and this test asks for bit-identity.
        "--ema_decay=0",
    ])
    log = capsys.readouterr().out
    assert "new classifier for 3 classes" in log and "recomputed in the backward pass" in log
    assert summary["eval"]["accuracy"] > 0.5  # chance: 1/3

    config = train.resolve_config(train.parse(["--config=demo"])[0])
    source_model = keras.models.load_model(done / "model.keras")
    model, new_head = trainer.build_model(config, 3, weights)
    assert new_head and model.layers[-1].kernel.shape[-1] == 3
    backbone = {w.path: w.numpy() for w in source_model.weights if "predictions" not in w.path}
    assert len(backbone) > 50
    for w in model.weights:
        if w.path in backbone:
            np.testing.assert_array_equal(w.numpy(), backbone[w.path])
    # The checkpoint at the end of the frozen epoch: backbone bit-identical.
    tf.train.Checkpoint(model=model).restore(str(out / "checkpoints" / "ckpt-6")).expect_partial()
    for w in model.trainable_weights:
        if w.path in backbone:
            np.testing.assert_array_equal(w.numpy(), backbone[w.path])
    # Another architecture's weights: one line naming both.
    err = fails(capsys, "--config=demo", "--config.model='nf_resnet26'", "--dataset=folder",
                f"--data_dir={root}", f"--weights={weights}", f"--out={tmp_path / 'other'}")
    assert weights in err and "nf_resnet26" in err
    assert not (tmp_path / "other" / "config.json").exists()  # a corrected rerun may start


@pytest.mark.slow  # bfloat16 kernels are slow on CPUs without AVX-512 BF16
def test_mixed_bfloat16_training_exports_float32(tmp_path):
    summary = run(tmp_path, "--epochs=1", "--precision=mixed_bfloat16")
    assert summary["precision"] == "mixed_bfloat16"
    assert np.isfinite(summary["final_train_loss"])
    assert summary["reloaded_max_abs_diff"] < 1e-4  # the export is float32
    assert keras.mixed_precision.global_policy().name == "float32"  # restored
    model = keras.models.load_model(tmp_path / "model.keras")
    assert model.get_layer("stem_conv0").compute_dtype == "bfloat16"
    assert model.get_layer("stem_conv0").kernel.dtype == "float32"


@pytest.mark.slow  # the full 12-epoch demo run
def test_demo_recipe_learns_the_shapes(tmp_path):
    # The README's main job: 12 epochs reach > 85% test accuracy (measured 92-96%).
    summary = train.run(["--config=demo", f"--out={tmp_path}", "--no_export", "--verbose=0"])
    assert summary["eval"]["accuracy"] > 0.85
    with open(tmp_path / "config.json") as f:
        assert json.load(f)["run"]["agc_clipping"] == 0.01
