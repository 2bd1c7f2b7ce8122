"""The benchmark runs end to end and reports what it claims; no speed is asserted."""

import argparse
import json
import os
import subprocess
import sys

import pytest

from benchmarks import run

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
              "iters": 3, "cases": [{"model": "nfnet_f0"}]}
    path = tmp_path / "results.json"
    path.write_text(json.dumps(report))
    parser = argparse.ArgumentParser()
    assert run._previous_cases(str(path), {**report, "cases": []}, parser) == [{"model": "nfnet_f0"}]
    with pytest.raises(SystemExit):
        run._previous_cases(str(path), {**report, "rounds": 3}, parser)
    with pytest.raises(SystemExit):
        run._previous_cases(str(tmp_path / "missing.json"), report, parser)


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
