"""The benchmark runs end to end and reports what it claims; no speed is asserted."""

import argparse
import importlib.util
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from benchmarks import measure, run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_summary_medians_spread_and_per_round_ratios():
    rounds = {
        "keras": [{"times": [1.0, 3.0, 2.0], "first_call_s": 5.0, "build_s": 1.0, "built_rss_mb": 600,
                   "peak_rss_mb": 900},
                  {"times": [4.0, 4.0, 4.0], "first_call_s": 7.0, "build_s": 1.0, "built_rss_mb": 500,
                   "peak_rss_mb": 950}],
        "timm": [{"times": [3.0, 3.0, 3.0], "first_call_s": 1.0, "build_s": 1.0, "built_rss_mb": 400,
                  "peak_rss_mb": 800},
                 {"times": [2.0, 2.0, 2.0], "first_call_s": 1.0, "build_s": 1.0, "built_rss_mb": 400,
                  "peak_rss_mb": 700}],
        "keras_folded": [{"error": "boom"}, {"error": "boom"}],
    }
    summary = run.summarise(rounds)
    keras = summary["keras"]
    assert keras["median_s"] == 3.5  # median of 1, 2, 3, 4, 4, 4
    assert keras["round_medians_s"] == [2.0, 4.0]
    assert keras["speed_vs_timm_rounds"] == [1.5, 0.5]  # timm 3/2, then 2/4
    assert keras["speed_vs_timm"] == 1.0
    assert keras["peak_rss_mb"] == 950 and keras["built_rss_mb"] == 600
    assert keras["first_call_s"] == 6.0
    assert "speed_vs_timm" not in summary["timm"]
    assert summary["keras_folded"] == {"error": "boom"}


def test_append_extends_only_a_table_of_the_same_setup(tmp_path):
    report = {"cpu": run.cpu_info(), "versions": {"keras": "3"}, "rounds": 2, "warmup": 1,
              "iters": 3, "precision": "float32", "device": "cpu", "gpu": {},
              "cases": [{"model": "nfnet_f0"}]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(report))
    parser = argparse.ArgumentParser()
    assert run._previous_cases(str(path), {**report, "cases": []}, parser) == [{"model": "nfnet_f0"}]
    for changed in ({"rounds": 3}, {"precision": "mixed_bfloat16"}, {"device": "gpu"}):
        with pytest.raises(SystemExit):
            run._previous_cases(str(path), {**report, **changed}, parser)
    with pytest.raises(SystemExit):
        run._previous_cases(str(tmp_path / "missing.json"), report, parser)
    # Tables written before precision and device were recorded are float32 CPU tables.
    old = {k: v for k, v in report.items() if k not in ("precision", "device", "gpu")}
    path.write_text(json.dumps(old))
    assert run._previous_cases(str(path), report, parser) == [{"model": "nfnet_f0"}]
    with pytest.raises(SystemExit):
        run._previous_cases(str(path), {**report, "precision": "mixed_float16"}, parser)


def test_model_flops_from_the_published_multiply_adds():
    # NFNet-F0: 12.38 G multiply-adds per image at its 256 px test size
    # (deepmind-research README), 2 FLOPs each; a train step is 3 forwards.
    # 256 px, batch 64, train: 2 * 12.38e9 * 64 * 3 = 4,753.92e9 FLOPs.
    assert run.model_flops("nfnet_f0", 256, 64, "train") == pytest.approx(4753.92e9, rel=1e-12)
    # 192 px has (192 / 256)^2 = 0.5625 of the pixels: batch 8 inference is
    # 2 * 12.38e9 * 0.5625 * 8 = 111.42e9 FLOPs, the train step 334.26e9.
    assert run.model_flops("nfnet_f0", 192, 8, "infer") == pytest.approx(111.42e9, rel=1e-12)
    assert run.model_flops("nfnet_f0", 192, 8, "train") == pytest.approx(334.26e9, rel=1e-12)
    # NFNet-F1: 35.54 G at 320 px; one image at 320 px, inference: 71.08e9.
    assert run.model_flops("nfnet_f1", 320, 1, "infer") == pytest.approx(71.08e9, rel=1e-12)
    assert run.model_flops("nfnet_tiny", 32, 2, "train") is None  # a test row publishes none
    assert run.model_flops("eca_nfnet_l0", 288, 2, "train") is None
    assert run.model_flops("ResNet50", 224, 8, "train") is None  # keras.applications


def _table_rows(table):
    """The markdown table's rows as {column: cell}."""
    lines = [line for line in table.splitlines() if line.startswith("|")]
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
            for line in lines[2:]]


def test_gpu_table_has_device_precision_and_model_flop_utilisation():
    def runs(seconds):
        return [{"times": [seconds] * 3, "first_call_s": 30.0, "build_s": 2.0, "built_rss_mb": 3000,
                 "peak_rss_mb": 4000, "peak_device_mb": 20000}]

    rounds = {"keras": runs(0.02), "keras+xla": runs(0.01), "timm": runs(0.016)}
    gpu = "NVIDIA H100 80GB HBM3"
    report = {"date": "2026-11-30", "cpu": run.cpu_info(), "versions": {"keras": "3"}, "rounds": 1,
              "warmup": 2, "iters": 3, "precision": "mixed_bfloat16", "device": "gpu",
              "gpu": {"tensorflow": gpu, "torch": gpu}, "peak_tflops": 989.0,
              "cases": [{"model": "nfnet_f0", "size": 256, "batch": 64, "mode": "train",
                         "results": run.summarise(rounds)}]}
    table = run.markdown(report)
    assert f"**GPU**: {gpu} (tensorflow), {gpu} (torch)" in table
    assert "**Precision**: mixed_bfloat16" in table and "989 TFLOP/s" in table
    rows = {row["framework"]: row for row in _table_rows(table)}
    # 4,753.92e9 FLOPs (previous test) in 0.01 s: 475.392 TFLOP/s, 48.07 % of 989.
    assert rows["keras+xla"]["model TFLOP/s"] == "475" and rows["keras+xla"]["MFU"] == "48.1 %"
    assert rows["keras"]["model TFLOP/s"] == "238" and rows["keras"]["MFU"] == "24.0 %"
    assert rows["keras+xla"]["speed vs timm"] == "1.60x (1.60)"
    assert rows["timm"]["peak GPU MB"] == "20000"
    # Without a peak: achieved TFLOP/s only; on the CPU no GPU columns.
    report.update(peak_tflops=None, device="cpu", gpu={})
    rows = _table_rows(run.markdown(report))
    assert "MFU" not in rows[0] and "peak GPU MB" not in rows[0]
    assert rows[0]["model TFLOP/s"] == "238"


def test_keras_jax_without_a_gpu_says_so_in_one_line(jax_env):
    proc = subprocess.run([sys.executable, "-m", "benchmarks.measure", "--framework", "keras_jax",
                           "--model", "nfnet_tiny", "--size", "32", "--batch", "2", "--device",
                           "gpu"], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=jax_env)  # JAX_PLATFORMS=cpu: JAX sees no GPU
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "--device gpu: jax finds no GPU on this machine (no GPU, no driver, or a CPU-only build "
        "of jax); measure with --device cpu")


def test_a_stopped_run_keeps_the_cases_it_measured(monkeypatch, tmp_path):
    # A run stopped by a time limit (a `timeout` around it, a lease ending)
    # must leave the table of every case it finished.
    def fake_measure(framework, model, size, batch, mode, args):
        if mode == "train":
            raise KeyboardInterrupt  # stopped in the second case
        return {"times": [0.5], "first_call_s": 1.0, "build_s": 1.0, "built_rss_mb": 10,
                "peak_rss_mb": 20}

    monkeypatch.setattr(run, "measure", fake_measure)
    with pytest.raises(KeyboardInterrupt):
        run.main(["--models", "nfnet_tiny", "--sizes", "32", "--batches", "2", "--rounds", "1",
                  "--frameworks", "keras", "--references", "--out", str(tmp_path)])
    [case] = json.loads((tmp_path / "results.json").read_text())["cases"]
    assert (case["mode"], case["results"]["keras"]["median_s"]) == ("infer", 0.5)
    assert "| nfnet_tiny | 32 | 2 | infer | keras | 0.500 |" in (tmp_path / "results.md").read_text()


def test_failed_measurements_say_why_in_one_line(monkeypatch):
    # PyTorch's C++ errors end the output with their backtrace.
    torch_error = ("Traceback (most recent call last):\n  File \"x.py\", line 1\n"
                   "RuntimeError: Tried to register an operator (torchvision::nms) twice\n"
                   "Exception raised from registerDef at register.cpp:1 (most recent call first):\n"
                   "frame #0: c10::Error::Error() + 0x9\nframe #62: _PyEval_EvalFrameDefault\n")
    assert run.error_line(torch_error) == (
        "RuntimeError: Tried to register an operator (torchvision::nms) twice")
    assert run.error_line("I0000 log line\n--device gpu: jax finds no GPU\n") == (
        "--device gpu: jax finds no GPU")
    assert run.error_line("") == "no output"

    def too_slow(*args, **kwargs):
        raise subprocess.TimeoutExpired(args[0], kwargs["timeout"])

    monkeypatch.setattr(run.subprocess, "run", too_slow)
    args = argparse.Namespace(warmup=1, iters=1, precision="float32", device="cpu", timeout=7)
    assert run.measure("keras", "nfnet_tiny", 32, 2, "infer", args) == {
        "error": "timed out after 7 s (--timeout)"}


def test_xla_rows_only_for_what_xla_compiles():
    assert run._with_xla(["keras", "timm", "keras_remat"], ["off", "on"]) == [
        "keras", "keras+xla", "timm", "keras_remat"]
    assert run._with_xla(["keras", "timm"], ["on"]) == ["keras+xla", "timm"]
    assert run._with_xla(["keras_folded"], ["off"]) == ["keras_folded"]


def test_float32_exports_and_missing_gpus_are_refused_before_building(monkeypatch, capsys,
                                                                     tmp_path):
    with pytest.raises(SystemExit):
        run.main(["--precision", "mixed_bfloat16", "--frameworks", "keras", "savedmodel_folded",
                  "--out", str(tmp_path)])
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "--frameworks: savedmodel_folded serve float32 exports; expected --precision float32 "
        "for them, received mixed_bfloat16")
    with pytest.raises(SystemExit):
        measure.main(["--framework", "savedmodel", "--model", "nfnet_tiny", "--size", "32",
                      "--batch", "2", "--precision", "mixed_float16"])
    assert "--precision: --framework=savedmodel serves a float32 export" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        measure.main(["--framework", "keras_jax", "--model", "nfnet_tiny", "--size", "32",
                      "--batch", "2", "--precision", "mixed_float16"])
    assert capsys.readouterr().err.splitlines()[-1].endswith(
        "--precision: --framework=keras_jax has no loss scaling; expected float32 or "
        "mixed_bfloat16, received mixed_float16")
    if measure.gpu_name("tensorflow") or measure.gpu_name("torch"):
        pytest.skip("this machine has a GPU")
    monkeypatch.setattr(measure, "CASES", {})  # building anything would fail with a KeyError
    # measure.main sets the backend's variable for the process it runs in.
    monkeypatch.setenv("KERAS_BACKEND", os.environ.get("KERAS_BACKEND", "tensorflow"))
    if importlib.util.find_spec("jax") is None:  # the suite's own process has none
        with pytest.raises(SystemExit) as exit_info:
            measure.main(["--framework", "keras_jax", "--model", "nfnet_f0", "--size", "32",
                          "--batch", "2"])
        assert str(exit_info.value).startswith("--framework keras_jax runs Keras's JAX backend, "
                                               "and JAX is not installed")
    for framework, name in (("keras", "tensorflow"), ("timm", "torch")):
        with pytest.raises(SystemExit) as exit_info:
            measure.main(["--framework", framework, "--model", "nfnet_f0", "--size", "32",
                          "--batch", "2", "--device", "gpu"])
        message = str(exit_info.value)
        assert message.startswith(f"--device gpu: {name} finds no GPU") and "\n" not in message
    with pytest.raises(SystemExit) as exit_info:
        run.main(["--quick", "--device", "gpu", "--out", str(tmp_path)])
    assert str(exit_info.value).startswith("--device gpu: tensorflow finds no GPU")
    assert not list(tmp_path.iterdir())


def test_cpu_header_reads_vector_extensions(monkeypatch):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    info = run.cpu_info()
    with open("/proc/cpuinfo") as f:
        flags = next(line for line in f if line.startswith("flags")).split()
    assert ("avx2" in info["vector_extensions"]) == ("avx2" in flags)
    assert ("avx512f" in info["vector_extensions"]) == ("avx512f" in flags)
    assert info["tensorflow_onednn"] is False


def test_quick_run_writes_table_and_json(tmp_path):
    # Without oneDNN (what CPUs lacking AVX-512 VNNI/BF16 or AMX run; the
    # rest of the suite runs the default) TensorFlow's graph optimizer fuses
    # convolutions with their bias into a kernel that refuses groups: the
    # train step and the folded SavedModel of a grouped NF model must run.
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_ENABLE_ONEDNN_OPTS": "0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "results.json").read_text())
    measured = {(case["mode"], framework): entry
                for case in report["cases"] for framework, entry in case["results"].items()}
    assert set(measured) == {("infer", "keras"), ("infer", "keras_folded"),
                             ("infer", "savedmodel_folded"), ("train", "keras")}
    for entry in measured.values():
        assert entry["median_s"] > 0 and entry["peak_rss_mb"] > 100 and entry["first_call_s"] > 0
    table = (tmp_path / "results.md").read_text()
    assert report["cpu"]["model"] in table and "vector extensions" in table
    assert "TensorFlow oneDNN: off (TF_ENABLE_ONEDNN_OPTS=0)" in table
    assert table.count("| nfnet_tiny | 32 | 2 |") == 4


def test_quick_run_in_mixed_bfloat16(tmp_path):
    # timm has no tiny NFNet, so the tiny model's table has Keras rows only.
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--precision",
                           "mixed_bfloat16", "--frameworks", "keras", "timm", "--modes", "train",
                           "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads((tmp_path / "results.json").read_text())
    assert report["precision"] == "mixed_bfloat16" and report["device"] == "cpu"
    [case] = report["cases"]
    [measured] = case["raw"]["keras"]
    # The network computed in bfloat16 (the policy was set before building).
    assert measured["compute_dtype"] == "bfloat16" and measured["precision"] == "mixed_bfloat16"
    assert measured["optimizer"] == "AGCOptimizer"  # no loss scaling for bfloat16
    table = (tmp_path / "results.md").read_text()
    assert "**Device**: cpu. **Precision**: mixed_bfloat16" in table
    [row] = _table_rows(table)
    assert (row["model"], row["mode"], row["framework"]) == ("nfnet_tiny", "train", "keras")
    assert float(row["median s/batch"]) > 0 and row["model TFLOP/s"] == ""


def test_keras_train_step_under_mixed_float16_scales_the_loss():
    import keras

    args = argparse.Namespace(framework="keras", model="nfnet_tiny", size=32, batch=2, mode="train",
                              precision="mixed_float16", jit_compile=False)
    previous = keras.config.dtype_policy()
    try:
        _, step, info = measure.keras_case(args)
    finally:
        keras.config.set_dtype_policy(previous)
    # Keras wraps the model's AGC optimizer in a LossScaleOptimizer.
    assert info == {"compute_dtype": "float16", "optimizer": "LossScaleOptimizer"}
    assert np.all(np.isfinite(step()))  # the loss and the AGC metrics


def test_timm_process_holds_neither_keras_nor_tensorflow():
    # Its peak memory is compared with ours: TensorFlow's libraries alone
    # would add about 400 MB to it.
    script = ("import runpy, sys\n"
              "sys.argv = ['measure', '--framework', 'timm', '--timm-name', 'nf_regnet_b0',"
              " '--model', 'timm_nf_regnet_b0', '--size', '32', '--batch', '2']\n"
              "runpy.run_module('benchmarks.measure', run_name='__main__')\n"
              "print(sorted({'keras', 'tensorflow'} & set(sys.modules)))\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured, imported = proc.stdout.strip().splitlines()[-2:]
    assert json.loads(measured)["times"] and imported == "[]"


@pytest.mark.parametrize("precision, dtype", [("mixed_bfloat16", "bfloat16"),
                                              ("mixed_float16", "float16")])
def test_timm_train_step_under_autocast(precision, dtype):
    args = argparse.Namespace(model="timm_nf_regnet_b0", timm_name=None, size=32, batch=2,
                              mode="train", precision=precision, device="cpu")
    _, step, info = measure.timm_case(args)
    step()
    step()
    assert info == {"compute_dtype": dtype}


@pytest.mark.parametrize("mode", ["infer", "train"])
def test_keras_jax_measures_the_model_and_nfmodel_step_on_jax(mode, jax_env):
    # NFModel's own step on Keras's JAX backend (AGC in its optimizer), in bfloat16.
    proc = subprocess.run([sys.executable, "-m", "benchmarks.measure", "--framework", "keras_jax",
                           "--model", "nfnet_tiny", "--size", "32", "--batch", "2", "--mode", mode,
                           "--precision", "mixed_bfloat16", "--warmup", "1", "--iters", "2"],
                          cwd=REPO, capture_output=True, text=True, timeout=300,
                          # A smoke run: XLA's quickest compile (the same arithmetic).
                          env={**jax_env, "XLA_FLAGS": "--xla_backend_optimization_level=0"})
    assert proc.returncode == 0, proc.stderr[-2000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    assert measured["compute_dtype"] == "bfloat16" and len(measured["times"]) == 2
    assert measured.get("optimizer") == ("AGCOptimizer" if mode == "train" else None)
