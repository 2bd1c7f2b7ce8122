"""AGC and the trainer under tf.distribute: the update is the global batch's.

The AGC checks run tests/dist_worker.py in fresh processes (logical CPU
devices must be set before TensorFlow starts); the trainer checks run
`python -m training.train` as two MultiWorkerMirroredStrategy workers on
127.0.0.1. Every process is bounded with `timeout -k` because TensorFlow
collectives can hang and ignore SIGTERM (env-findings §4).
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
WORKER = os.path.join(HERE, "dist_worker.py")
TIMEOUT_S = 240


def _env(**extra):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    env.update(extra)
    return env


def _command(*args):
    return ["timeout", "-k", "5", str(TIMEOUT_S), sys.executable, WORKER, *map(str, args)]


def _result(stdout, stderr, returncode):
    lines = [line for line in stdout.splitlines() if line.startswith("RESULT ")]
    assert returncode == 0 and lines, f"worker failed ({returncode}):\n{stderr[-4000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def _run(*args):
    proc = subprocess.run(_command(*args), capture_output=True, text=True, env=_env(), cwd=HERE)
    return _result(proc.stdout, proc.stderr, proc.returncode)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_mirrored_two_replicas_equal_one_device():
    r = _run("mirrored")
    assert r["replicas"] == 2
    # AGC is active, and sees the same global gradient on both set-ups.
    assert r["clip_fraction_1"] > 0.05
    assert r["clip_fraction_2"] == pytest.approx(r["clip_fraction_1"], abs=1e-6)
    assert r["grad_norm_2"] == pytest.approx(r["grad_norm_1"], rel=1e-5)
    assert r["loss_2"] == pytest.approx(r["loss_1"], abs=1e-5)
    # Same weights after 3 steps ...
    assert r["max_weight_change"] > 1e-3
    assert r["max_diff_2_replicas"] <= 1e-6
    # NFSGD (coupled decay, momentum, warm-up EMA) too: EMA and momenta.
    assert r["nfsgd_ema_moved"] > 1e-4
    assert r["nfsgd_ema_max_diff_2_replicas"] <= 1e-6
    # ... while clipping each replica's gradient gives another update.
    assert r["max_diff_per_replica_clipping"] > 1e-4


def test_mirrored_float16_overflow_on_one_replica_is_skipped():
    r = _run("mirrored_fp16")
    assert r["replicas"] == 2 and r["is_loss_scale_optimizer"]
    assert r["weights_unchanged"]
    assert r["skipped_steps"] == 1.0
    assert r["iterations"] == 0
    assert r["loss_scale"] == 2.0**6  # halved from the initial 2**7
    # Keras's own train_step applies the same step and corrupts the weights
    # (the trap this guards against; env-findings §3).
    assert not r["stock_keras_weights_finite"]


def test_multi_worker_two_processes_equal_one_device(tmp_path):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = []
    for index in range(2):
        tf_config = json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})
        procs.append(
            subprocess.Popen(
                _command("mwms", index, tmp_path / f"worker{index}.npz"),
                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                env=_env(TF_CONFIG=tf_config), cwd=HERE,
            )
        )
    single = _run("single", tmp_path / "single.npz")
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=TIMEOUT_S + 30)
        results.append(_result(out, err, proc.returncode))
    ref = np.load(tmp_path / "single.npz")
    for index, result in enumerate(results):
        assert result["clip_fraction"] == pytest.approx(single["clip_fraction"], abs=1e-6)
        assert single["clip_fraction"] > 0.05
        weights = np.load(tmp_path / f"worker{index}.npz")
        diff = max(np.max(np.abs(weights[k] - ref[k])) for k in ref.files)
        assert diff <= 1e-6, f"worker {index}: max |dw| = {diff}"
    # Each worker's loss is its half of the global batch; their mean is the
    # 1-device loss of the whole batch.
    mean_loss = np.mean([r["losses"] for r in results], axis=0)
    np.testing.assert_allclose(mean_loss, single["losses"], atol=1e-5)


# ---------------------------------------------------------------------------
# The trainer (`python -m training.train`) on two worker processes.
# ---------------------------------------------------------------------------

ROOT = os.path.dirname(HERE)
# A short demo run: tiny batches, unshuffled input, no dropout (its masks
# depend on how the batch is split), a checkpoint after every step.
TRAINER_FLAGS = [
    "--config=demo", "--batch_size=16", "--epochs=2", "--steps_per_epoch=4",
    "--checkpoint_every_steps=1", "--config.shuffle_buffer=0", "--config.dropout_rate=0.0",
    "--verbose=2",
]


def _trainer(out, *flags, tf_config=None):
    env = _env(**({"TF_CONFIG": json.dumps(tf_config)} if tf_config else {}))
    return subprocess.Popen(
        ["timeout", "-k", "5", str(TIMEOUT_S), sys.executable, "-m", "training.train",
         *TRAINER_FLAGS, f"--out={out}", *flags],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
        start_new_session=True,  # its own process group: `timeout` and the trainer
    )


def _workers(tmp_path, *flags):
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    return [
        _trainer(tmp_path / f"worker{i}", "--strategy=multi_worker", *flags,
                 tf_config={"cluster": cluster, "task": {"type": "worker", "index": i}})
        for i in range(2)
    ]


def _finish(proc):
    out, _ = proc.communicate(timeout=TIMEOUT_S + 30)
    assert proc.returncode == 0, out[-4000:]
    return out


def _h5_arrays(path):
    import h5py

    arrays = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, obj: arrays.__setitem__(name, obj[()])
            if isinstance(obj, h5py.Dataset) else None
        )
    return arrays


def test_trainer_on_two_workers_killed_and_restarted_equals_one_process(tmp_path):
    single = _trainer(tmp_path / "single", "--no_export")
    workers = _workers(tmp_path, "--no_export")
    # Kill worker 1 (SIGKILL) once the chief has a checkpoint, then the chief.
    index = tmp_path / "worker0" / "checkpoints" / "checkpoint"
    deadline = time.time() + TIMEOUT_S
    while not index.exists() and time.time() < deadline and workers[0].poll() is None:
        time.sleep(0.05)
    for proc in reversed(workers):
        os.killpg(proc.pid, signal.SIGKILL)
    for proc in workers:
        proc.communicate(timeout=60)
    assert not (tmp_path / "worker0" / "summary.json").exists()  # killed mid-run

    # The same command again, export included: both resume and finish.
    logs = [_finish(p) for p in _workers(tmp_path)]
    match = re.search(r"resuming from step (\d+) of ", logs[0])
    assert match and 1 <= int(match.group(1)) < 8, logs[0][-3000:]
    chief, other = tmp_path / "worker0", tmp_path / "worker1"
    with open(chief / "summary.json") as f:
        assert json.load(f)["steps"] == 8  # 2 epochs x 4 steps, none repeated
    for name in ("model.weights.h5", "model.keras", "summary.json", "config.json", "export"):
        assert (chief / name).exists(), name
        assert not (other / name).exists(), name
    assert not any(other.iterdir()) if other.exists() else True  # its temp dirs are gone

    _finish(single)
    ref = _h5_arrays(tmp_path / "single" / "model.weights.h5")
    got = _h5_arrays(chief / "model.weights.h5")
    assert ref.keys() == got.keys() and len(ref) > 50
    diff = max(float(np.max(np.abs(ref[k] - got[k]))) for k in ref)
    assert diff <= 1e-5, f"max |dw| = {diff}"


def test_trainer_refuses_a_batch_that_does_not_split_over_the_workers(tmp_path):
    logs = []
    for proc in _workers(tmp_path, "--batch_size=15"):
        out, _ = proc.communicate(timeout=TIMEOUT_S + 30)
        assert proc.returncode == 2, out[-3000:]
        logs.append(out)
    for out in logs:
        errors = [line for line in out.splitlines() if line.startswith("error: ")]
        assert errors == ["error: `--batch_size` (the global batch) must be divisible by the 2 "
                          "replicas. Received: batch_size=15"]
