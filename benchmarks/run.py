"""Speed and memory of nfnet_keras next to timm and keras.applications.

Every measurement runs in a fresh process of its own (`benchmarks.measure`):
TensorFlow's and PyTorch's thread pools in one process disturb each other.
Frameworks alternate within each round (A B C, then C B A, ...), so that
load from elsewhere on the machine falls on all of them alike. The table
gives medians over all timed calls, the spread of the per-round medians, and
the speed ratio to timm per round; the CPU, its vector extensions and
whether TensorFlow runs oneDNN head it.

    .venv/bin/python -m benchmarks.run                      # NFNet-F0, ~20 min on 2 cores
    .venv/bin/python -m benchmarks.run --models nfnet_f0 nfnet_f1 --sizes train test --batches 1 8
    .venv/bin/python -m benchmarks.run --quick              # smoke run of every code path

Writes ``<out>/results.md`` and ``<out>/results.json`` (default
``benchmarks/results/``).
"""

import argparse
import datetime
from importlib.metadata import PackageNotFoundError, version
import json
import os
import platform
import statistics
import subprocess
import sys

from benchmarks.measure import FRAMEWORKS
from nfnet_keras.models import get_architecture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# x86 flags that decide TensorFlow's and PyTorch's CPU kernels.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")
# TensorFlow turns oneDNN on by default on Linux only with one of these
# (tensorflow/core/util/util.cc, `IsMKLEnabled`/`DefaultOneDnnPolicy`).
ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")
# keras.applications references at their native resolutions (keras.io/api/applications).
REFERENCES = {"EfficientNetB7": 600, "ResNet50": 224}
QUICK = dict(models=["nfnet_tiny"], sizes=["32"], batches=[2], rounds=1, warmup=1, iters=2,
             references=[], frameworks=["keras", "keras_folded", "savedmodel_folded"])


def cpu_info():
    model, flags = platform.processor() or "unknown", set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name":
                    model = value.strip()
                elif key.strip() == "flags":
                    flags = set(value.split())
    except OSError:
        pass
    present = [flag for flag in VECTOR_FLAGS if flag in flags]
    onednn_env = os.environ.get("TF_ENABLE_ONEDNN_OPTS")
    onednn = (onednn_env.lower() in ("1", "true") if onednn_env is not None
              else any(flag in flags for flag in ONEDNN_DEFAULT_FLAGS))
    return {"model": model, "cores": os.cpu_count(), "vector_extensions": present,
            "tensorflow_onednn": onednn, "TF_ENABLE_ONEDNN_OPTS": onednn_env}


def _versions():
    versions = {"python": platform.python_version()}
    for name in ("tensorflow", "keras", "torch", "timm"):
        try:
            versions[name] = version(name if name != "tensorflow" else "tensorflow-cpu")
        except PackageNotFoundError:  # reported as missing
            versions[name] = None
    return versions


def _resolve_size(model, size):
    """'train' / 'test' -> the row's resolutions; a number stays a number."""
    if size.isdigit():
        return int(size)
    row = get_architecture(model)
    return row.train_size if size == "train" else row.test_size


def measure(framework, model, size, batch, mode, warmup, iters, timeout):
    command = [sys.executable, "-m", "benchmarks.measure", "--framework", framework,
               "--model", model, "--size", str(size), "--batch", str(batch), "--mode", mode,
               "--warmup", str(warmup), "--iters", str(iters)]
    proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return {"error": tail[0]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def cases(args):
    for model in args.models:
        for size in args.sizes:
            for batch in args.batches:
                for mode in args.modes:
                    frameworks = [f for f in args.frameworks if mode in FRAMEWORKS[f]
                                  and (f != "timm" or get_architecture(model).timm_name)]
                    yield model, _resolve_size(model, size), batch, mode, frameworks
    for name in args.references:
        for mode in args.modes:
            yield name, REFERENCES[name], args.batches[-1], mode, ["keras_applications"]


def summarise(rounds):
    """Medians, spread and per-round speed ratios to timm of one case."""
    summary = {}
    for framework, runs in rounds.items():
        ok = [run for run in runs if "times" in run]
        if not ok:
            summary[framework] = {"error": runs[0].get("error", "failed")}
            continue
        round_medians = [statistics.median(run["times"]) for run in ok]
        summary[framework] = {
            "median_s": statistics.median([t for run in ok for t in run["times"]]),
            "round_medians_s": round_medians,
            "first_call_s": statistics.median([run["first_call_s"] for run in ok]),
            "build_s": statistics.median([run["build_s"] for run in ok]),
            "built_rss_mb": max(run["built_rss_mb"] for run in ok),
            "peak_rss_mb": max(run["peak_rss_mb"] for run in ok),
        }
    timm = summary.get("timm", {})
    for framework, entry in summary.items():
        if framework != "timm" and "round_medians_s" in entry and "round_medians_s" in timm:
            ratios = [t / k for t, k in zip(timm["round_medians_s"], entry["round_medians_s"])]
            entry["speed_vs_timm"] = statistics.median(ratios)
            entry["speed_vs_timm_rounds"] = ratios
    return summary


def markdown(report):
    cpu = report["cpu"]
    lines = [
        f"# nfnet_keras speed ({report['date']})",
        "",
        f"**CPU**: {cpu['model']}, {cpu['cores']} cores; vector extensions: "
        f"{', '.join(cpu['vector_extensions']) or 'none found'}; TensorFlow oneDNN: "
        f"{'on' if cpu['tensorflow_onednn'] else 'off'}"
        f"{' (TF_ENABLE_ONEDNN_OPTS=' + cpu['TF_ENABLE_ONEDNN_OPTS'] + ')' if cpu['TF_ENABLE_ONEDNN_OPTS'] is not None else ' (default for this CPU)'}.",
        "",
        "**Versions**: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        "",
        f"float32; {report['rounds']} rounds alternating the frameworks, each a fresh process "
        f"with {report['warmup']} untimed and {report['iters']} timed calls. Median over all "
        "timed calls; spread = min-max of the per-round medians; speed vs timm = timm's time / "
        "this time, median of the per-round ratios (per round in brackets). Train steps: "
        "forward, backward, AGC (0.01, head excluded) and SGD with Nesterov momentum, in both "
        "frameworks. First call includes tracing; RSS built = the process's resident memory "
        "after building the model (and before its first call), peak RSS = the whole process's "
        "peak; both are the maximum over the rounds.",
        "",
        "| model | px | batch | mode | framework | median s/batch | img/s | spread s | "
        "speed vs timm | first call s | RSS built MB | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for case in report["cases"]:
        for framework, entry in case["results"].items():
            head = f"| {case['model']} | {case['size']} | {case['batch']} | {case['mode']} | {framework} |"
            if "error" in entry:
                lines.append(f"{head} failed: {entry['error']} | | | | | | |")
                continue
            spread = f"{min(entry['round_medians_s']):.3f}-{max(entry['round_medians_s']):.3f}"
            ratio = ""
            if "speed_vs_timm" in entry:
                per_round = ", ".join(f"{r:.2f}" for r in entry["speed_vs_timm_rounds"])
                ratio = f"{entry['speed_vs_timm']:.2f}x ({per_round})"
            lines.append(
                f"{head} {entry['median_s']:.3f} | {case['batch'] / entry['median_s']:.2f} | "
                f"{spread} | {ratio} | {entry['first_call_s']:.1f} | {entry['built_rss_mb']:.0f} | "
                f"{entry['peak_rss_mb']:.0f} |"
            )
    return "\n".join(lines) + "\n"


def _previous_cases(path, report, parser):
    """The cases of an earlier run that `report` may extend."""
    try:
        with open(path) as f:
            previous = json.load(f)
    except (OSError, ValueError) as error:
        parser.error(f"--append needs a readable {path}: {error}")
    for key in ("cpu", "versions", "rounds", "warmup", "iters"):
        if previous.get(key) != report[key]:
            parser.error(f"--append: {path} was measured with another {key} "
                         f"({previous.get(key)!r}, now {report[key]!r})")
    return previous["cases"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["nfnet_f0"])
    parser.add_argument("--sizes", nargs="+", default=["train", "test"],
                        help="'train', 'test' (the row's resolutions) or pixels")
    parser.add_argument("--batches", nargs="+", type=int, default=[8])
    parser.add_argument("--modes", nargs="+", choices=("infer", "train"), default=["infer", "train"])
    parser.add_argument("--frameworks", nargs="+", default=["keras", "keras_folded", "savedmodel",
                                                            "savedmodel_folded", "timm"],
                        choices=sorted(set(FRAMEWORKS) - {"keras_applications"}))
    parser.add_argument("--references", nargs="*", default=sorted(REFERENCES),
                        choices=sorted(REFERENCES), help="keras.applications models to add")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    parser.add_argument("--quick", action="store_true",
                        help="a seconds-long smoke run of every code path (tiny model); no speed claim")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    parser.add_argument("--append", action="store_true",
                        help="add the cases to <out>/results.json (same CPU and versions) instead "
                             "of replacing it: a table measured in several runs")
    args = parser.parse_args(argv)
    if args.quick:
        for key, value in QUICK.items():
            setattr(args, key, value)
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for size in args.sizes:
        if size not in ("train", "test") and not size.isdigit():
            parser.error(f"--sizes takes 'train', 'test' or pixels. Received: {size!r}")

    report = {"date": datetime.date.today().isoformat(), "cpu": cpu_info(), "versions": _versions(),
              "rounds": args.rounds, "warmup": args.warmup, "iters": args.iters, "cases": []}
    if args.append:
        report["cases"] = _previous_cases(os.path.join(args.out, "results.json"), report, parser)
    for model, size, batch, mode, frameworks in cases(args):
        rounds = {framework: [] for framework in frameworks}
        for index in range(args.rounds):
            for framework in frameworks if index % 2 == 0 else frameworks[::-1]:
                run = measure(framework, model, size, batch, mode, args.warmup, args.iters,
                              args.timeout)
                rounds[framework].append(run)
                print(f"{model} {size}px b{batch} {mode} {framework} round {index + 1}: "
                      f"{run.get('error') or statistics.median(run['times'])}", flush=True)
        report["cases"].append({"model": model, "size": size, "batch": batch, "mode": mode,
                                "results": summarise(rounds), "raw": rounds})
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    table = markdown(report)
    with open(os.path.join(args.out, "results.md"), "w") as f:
        f.write(table)
    print(table)
    return report


if __name__ == "__main__":
    main()
