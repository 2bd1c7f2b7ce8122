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
    .venv/bin/python -m benchmarks.run --device gpu --precision mixed_bfloat16 \
        --frameworks keras timm --jit-compile off on --peak-tflops 989   # on a GPU

Writes ``<out>/results.md`` and ``<out>/results.json`` (default
``benchmarks/results/``).
"""

import argparse
import datetime
from importlib.metadata import PackageNotFoundError, version
import json
import os
import platform
import re
import statistics
import subprocess
import sys

from benchmarks.measure import (
    DEVICES, FLOAT32_ONLY, FRAMEWORKS, JIT_FRAMEWORKS, NO_FLOAT16, PRECISIONS, gpu_names, library,
)
from nfnet_keras.models import get_architecture

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# x86 flags that decide TensorFlow's and PyTorch's CPU kernels.
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")
# TensorFlow turns oneDNN on by default on Linux only with one of these
# (tensorflow/core/util/util.cc, `IsMKLEnabled`/`DefaultOneDnnPolicy`).
ONEDNN_DEFAULT_FLAGS = ("avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile")
# keras.applications references at their native resolutions (keras.io/api/applications).
REFERENCES = {"EfficientNetB7": 600, "ResNet50": 224}
DEFAULT_FRAMEWORKS = ["keras", "keras_folded", "savedmodel", "savedmodel_folded", "timm"]
QUICK_FRAMEWORKS = ["keras", "keras_folded", "savedmodel_folded"]
# --quick's defaults; flags given on the command line still apply.
QUICK = dict(models=["nfnet_tiny"], sizes=["32"], batches=[2], rounds=1, warmup=1, iters=2,
             references=[])
# In the table, frameworks compiled by XLA are called e.g. "keras+xla".
XLA_SUFFIX = "+xla"
# The registry's `flops` are multiply-accumulates (MACs) of one image at the
# row's test resolution (deepmind-research README, its `count_flops`:
# convolutions, SE and the classifier; reference doc §2): 2 FLOPs each.
FLOPS_PER_MAC = 2
# A training step counts as 3 forward passes (the backward pass as twice the
# forward), the convention of model FLOP utilisation in PaLM (Chowdhery et
# al. 2022, arXiv:2204.02311, appendix B); recomputation (remat) is not
# counted, so MFU compares implementations of the same model.
TRAIN_STEP_FORWARDS = 3
# Setup fields an --append run must share, with their values in tables
# written before they were recorded.
SETUP = {"cpu": None, "versions": None, "rounds": None, "warmup": None, "iters": None,
         "precision": "float32", "device": "cpu", "gpu": {}}


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
    for name in ("tensorflow", "keras", "jax", "torch", "timm"):
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            try:  # TensorFlow's CPU-only wheel
                versions[name] = version(f"{name}-cpu")
            except PackageNotFoundError:  # reported as missing
                versions[name] = None
    return versions


def _resolve_size(model, size):
    """'train' / 'test' -> the row's resolutions; a number stays a number."""
    if size.isdigit():
        return int(size)
    row = get_architecture(model)
    return row.train_size if size == "train" else row.test_size


def model_flops(model, size, batch, mode):
    """The model FLOPs of one call (`infer`) or training step (`train`) of
    `batch` images of `size` px, from the row's published MACs; None where
    the row publishes none (test rows, timm's light NFNets) or `model` is
    not a row (keras.applications references)."""
    try:
        row = get_architecture(model)
    except ValueError:
        return None
    if not row.flops:
        return None
    # Convolutions scale with the pixel count; the classifier and SE do not,
    # so this is approximate away from the test size (F0 at 192 px: 6.96
    # GMACs here, 6.98 from the layer shapes, reference doc §2).
    forward = FLOPS_PER_MAC * row.flops * (size / row.test_size) ** 2 * batch
    return forward * (TRAIN_STEP_FORWARDS if mode == "train" else 1)


def measure(framework, model, size, batch, mode, args):
    """One measurement in a fresh process; `framework` may carry the XLA suffix."""
    jit = framework.endswith(XLA_SUFFIX)
    command = [sys.executable, "-m", "benchmarks.measure",
               "--framework", framework.removesuffix(XLA_SUFFIX), "--model", model,
               "--size", str(size), "--batch", str(batch), "--mode", mode,
               "--warmup", str(args.warmup), "--iters", str(args.iters),
               "--precision", args.precision, "--device", args.device] + ["--jit-compile"] * jit
    if framework == "timm":  # so that timm's process imports neither Keras nor TensorFlow
        command += ["--timm-name", get_architecture(model).timm_name]
    try:
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True,
                              timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s (--timeout)"}
    if proc.returncode != 0:
        return {"error": error_line(proc.stderr or proc.stdout)}
    return json.loads(proc.stdout.strip().splitlines()[-1])


# A C++ backtrace that PyTorch appends to an exception's message (c10::Error).
_BACKTRACE_LINE = re.compile(r"^(frame #\d+: |Exception raised from )")


def error_line(output):
    """The line that says why a measurement failed: the last line, before
    any C++ backtrace that ends the output."""
    lines = [line.strip() for line in output.strip().splitlines() if line.strip()]
    while len(lines) > 1 and _BACKTRACE_LINE.match(lines[-1]):
        lines.pop()
    return lines[-1] if lines else "no output"


def _with_xla(frameworks, jit_compile):
    """The frameworks as measured: those XLA compiles once per `jit_compile`
    setting ("keras", "keras+xla"), the others once."""
    measured = []
    for framework in frameworks:
        if framework in JIT_FRAMEWORKS:
            measured += [framework + XLA_SUFFIX * (jit == "on") for jit in jit_compile]
        else:
            measured.append(framework)
    return list(dict.fromkeys(measured))


def cases(args):
    for model in args.models:
        for size in args.sizes:
            for batch in args.batches:
                for mode in args.modes:
                    frameworks = [f for f in args.frameworks if mode in FRAMEWORKS[f]
                                  and (f != "timm" or get_architecture(model).timm_name)]
                    yield (model, _resolve_size(model, size), batch, mode,
                           _with_xla(frameworks, args.jit_compile))
    for name in args.references:
        for mode in args.modes:
            yield (name, REFERENCES[name], args.batches[-1], mode,
                   _with_xla(["keras_applications"], args.jit_compile))


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
        if all("peak_device_mb" in run for run in ok):
            summary[framework]["peak_device_mb"] = max(run["peak_device_mb"] for run in ok)
    timm = summary.get("timm", {})
    for framework, entry in summary.items():
        if framework != "timm" and "round_medians_s" in entry and "round_medians_s" in timm:
            ratios = [t / k for t, k in zip(timm["round_medians_s"], entry["round_medians_s"])]
            entry["speed_vs_timm"] = statistics.median(ratios)
            entry["speed_vs_timm_rounds"] = ratios
    return summary


def _precision_note(precision):
    if precision == "float32":
        return "float32 (TensorFlow, JAX and PyTorch use TF32 in convolutions on GPUs that have it)"
    dtype = precision.removeprefix("mixed_")
    scaling = dtype == "float16"
    return (f"{precision}: the Keras dtype policy ({dtype} compute, float32 variables and logits"
            f"{', dynamic loss scaling' if scaling else ''}); timm under torch.autocast({dtype})"
            f"{' with GradScaler' if scaling else ''}, as timm's train script runs `--amp`. "
            "The SavedModel exports are float32 only and not measured in it")


def markdown(report):
    cpu = report["cpu"]
    device = report.get("device", SETUP["device"])
    peak = report.get("peak_tflops")
    gpu = ", ".join(f"{name} ({lib})" for lib, name in report.get("gpu", {}).items())
    labels = {framework for case in report["cases"] for framework in case["results"]}
    lines = [
        f"# nfnet_keras speed ({report['date']})",
        "",
        f"**CPU**: {cpu['model']}, {cpu['cores']} cores; vector extensions: "
        f"{', '.join(cpu['vector_extensions']) or 'none found'}; TensorFlow oneDNN: "
        f"{'on' if cpu['tensorflow_onednn'] else 'off'}"
        f"{' (TF_ENABLE_ONEDNN_OPTS=' + cpu['TF_ENABLE_ONEDNN_OPTS'] + ')' if cpu['TF_ENABLE_ONEDNN_OPTS'] is not None else ' (default for this CPU)'}.",
        "",
    ]
    if device == "gpu":
        lines += [f"**GPU**: {gpu}; the CPU above only feeds it.", ""]
    lines += [
        f"**Device**: {device}. **Precision**: "
        f"{_precision_note(report.get('precision', SETUP['precision']))}.",
        "",
        "**Versions**: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()) + ".",
        "",
        f"{report['rounds']} rounds alternating the frameworks, each a fresh process "
        f"with {report['warmup']} untimed and {report['iters']} timed calls. Median over all "
        "timed calls; spread = min-max of the per-round medians; speed vs timm = timm's time / "
        "this time, median of the per-round ratios (per round in brackets). Train steps: "
        "forward, backward, AGC (0.01, head excluded) and SGD with Nesterov momentum, in both "
        "frameworks. First call includes tracing"
        f"{' and XLA compilation' if any(l.endswith(XLA_SUFFIX) for l in labels) else ''}; "
        "RSS built = the process's resident memory "
        "after building the model (and before its first call), peak RSS = the whole process's "
        "peak; both are the maximum over the rounds. Model TFLOP/s = the model's FLOPs (2 x the "
        "published multiply-adds at the test size, scaled by pixels; x3 for a train step) / "
        "median time; empty where no FLOPs are published.",
    ]
    if any(label.endswith(XLA_SUFFIX) for label in labels):
        lines[-1] += (f" `{XLA_SUFFIX}`: the same model with the call or train step compiled by "
                      "XLA (`jit_compile=True`).")
    if "keras_jax" in labels:
        lines[-1] += (" `keras_jax`: the same Keras model on Keras's JAX backend, its call or "
                      "NFModel's train step one jitted XLA program.")
    if device == "gpu":
        lines[-1] += (" Peak GPU MB: TensorFlow's allocator peak (`get_memory_info`), "
                      "PyTorch's `max_memory_allocated`, JAX's `peak_bytes_in_use`.")
    if peak:
        lines[-1] += (f" MFU = model TFLOP/s / {peak:g} TFLOP/s, the accelerator's dense peak "
                      "for this precision as given by `--peak-tflops`.")
    columns = ["model", "px", "batch", "mode", "framework", "median s/batch", "img/s", "spread s",
               "speed vs timm", "model TFLOP/s"] + ["MFU"] * bool(peak) + [
               "first call s", "RSS built MB", "peak RSS MB"] + ["peak GPU MB"] * (device == "gpu")
    lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for case in report["cases"]:
        flops = model_flops(case["model"], case["size"], case["batch"], case["mode"])
        for framework, entry in case["results"].items():
            cells = [case["model"], case["size"], case["batch"], case["mode"], framework]
            if "error" in entry:
                cells += [f"failed: {entry['error']}"] + [""] * (len(columns) - len(cells) - 1)
                lines.append("| " + " | ".join(map(str, cells)) + " |")
                continue
            ratio = ""
            if "speed_vs_timm" in entry:
                per_round = ", ".join(f"{r:.2f}" for r in entry["speed_vs_timm_rounds"])
                ratio = f"{entry['speed_vs_timm']:.2f}x ({per_round})"
            achieved = flops / entry["median_s"] / 1e12 if flops else None
            cells += [
                f"{entry['median_s']:.3f}", f"{case['batch'] / entry['median_s']:.2f}",
                f"{min(entry['round_medians_s']):.3f}-{max(entry['round_medians_s']):.3f}", ratio,
                "" if achieved is None else f"{achieved:.3g}",
            ]
            if peak:
                cells.append("" if achieved is None else f"{100 * achieved / peak:.1f} %")
            cells += [f"{entry['first_call_s']:.1f}", f"{entry['built_rss_mb']:.0f}",
                      f"{entry['peak_rss_mb']:.0f}"]
            if device == "gpu":
                cells.append(f"{entry['peak_device_mb']:.0f}" if "peak_device_mb" in entry else "")
            lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines) + "\n"


def _previous_cases(path, report, parser):
    """The cases of an earlier run that `report` may extend."""
    try:
        with open(path) as f:
            previous = json.load(f)
    except (OSError, ValueError) as error:
        parser.error(f"--append needs a readable {path}: {error}")
    for key, default in SETUP.items():
        if previous.get(key, default) != report[key]:
            parser.error(f"--append: {path} was measured with another {key} "
                         f"({previous.get(key, default)!r}, now {report[key]!r})")
    return previous["cases"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["nfnet_f0"])
    parser.add_argument("--sizes", nargs="+", default=["train", "test"],
                        help="'train', 'test' (the row's resolutions) or pixels")
    parser.add_argument("--batches", nargs="+", type=int, default=[8])
    parser.add_argument("--modes", nargs="+", choices=("infer", "train"), default=["infer", "train"])
    parser.add_argument("--frameworks", nargs="+",
                        choices=sorted(set(FRAMEWORKS) - {"keras_applications"}),
                        help=f"default: {' '.join(DEFAULT_FRAMEWORKS)} (--quick: "
                             f"{' '.join(QUICK_FRAMEWORKS)}), the SavedModels in float32 only")
    parser.add_argument("--references", nargs="*", default=sorted(REFERENCES),
                        choices=sorted(REFERENCES), help="keras.applications models to add")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per measurement")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="the Keras dtype policy; timm runs under torch.autocast of its dtype")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="gpu: TensorFlow's and JAX's default placement, CUDA for timm; "
                             "cpu: GPUs hidden")
    parser.add_argument("--jit-compile", nargs="+", choices=("off", "on"), default=["off"],
                        help="XLA for the Keras models: off, on, or both ('off on': keras and "
                             "keras+xla rows)")
    parser.add_argument("--peak-tflops", type=float,
                        help="the accelerator's dense peak TFLOP/s at --precision: adds model FLOP "
                             "utilisation (MFU) to the table")
    parser.add_argument("--quick", action="store_true",
                        help="a seconds-long smoke run of every code path (tiny model); no speed claim")
    parser.add_argument("--out", default=os.path.join(REPO, "benchmarks", "results"))
    parser.add_argument("--append", action="store_true",
                        help="add the cases to <out>/results.json (same CPU and versions) instead "
                             "of replacing it: a table measured in several runs")
    args = parser.parse_args(argv)
    if args.quick:
        parser.set_defaults(**QUICK)
        args = parser.parse_args(argv)
    float32_only = [f for f in args.frameworks or () if f in FLOAT32_ONLY]
    if args.precision != "float32" and float32_only:
        parser.error(f"--frameworks: {' '.join(float32_only)} serve float32 exports; expected "
                     f"--precision float32 for them, received {args.precision}")
    if args.frameworks is None:
        args.frameworks = [f for f in (QUICK_FRAMEWORKS if args.quick else DEFAULT_FRAMEWORKS)
                           if args.precision == "float32" or f not in FLOAT32_ONLY]
    no_float16 = [f for f in args.frameworks if f in NO_FLOAT16]
    if args.precision == "mixed_float16" and no_float16:
        parser.error(f"--frameworks: no loss scaling in {' '.join(no_float16)}; expected "
                     "--precision float32 or mixed_bfloat16 for them, received mixed_float16")
    if args.peak_tflops is not None and not args.peak_tflops > 0:
        parser.error(f"--peak-tflops must be a positive number. Received: {args.peak_tflops}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    for size in args.sizes:
        if size not in ("train", "test") and not size.isdigit():
            parser.error(f"--sizes takes 'train', 'test' or pixels. Received: {size!r}")

    libraries = [library(f) for f in args.frameworks] + ["tensorflow"] * bool(args.references)
    gpu = gpu_names(libraries) if args.device == "gpu" else {}  # one line and out without a GPU
    report = {"date": datetime.date.today().isoformat(), "cpu": cpu_info(), "versions": _versions(),
              "rounds": args.rounds, "warmup": args.warmup, "iters": args.iters,
              "precision": args.precision, "device": args.device, "gpu": gpu,
              "peak_tflops": args.peak_tflops, "cases": []}
    if args.append:
        report["cases"] = _previous_cases(os.path.join(args.out, "results.json"), report, parser)
    for model, size, batch, mode, frameworks in cases(args):
        rounds = {framework: [] for framework in frameworks}
        for index in range(args.rounds):
            for framework in frameworks if index % 2 == 0 else frameworks[::-1]:
                run = measure(framework, model, size, batch, mode, args)
                rounds[framework].append(run)
                print(f"{model} {size}px b{batch} {mode} {framework} round {index + 1}: "
                      f"{run.get('error') or statistics.median(run['times'])}", flush=True)
        report["cases"].append({"model": model, "size": size, "batch": batch, "mode": mode,
                                "results": summarise(rounds), "raw": rounds})
        table = write(report, args.out)  # after each case: a stopped run keeps what it measured
    print(table)
    return report


def write(report, out):
    """Writes `<out>/results.json` and `<out>/results.md`; returns the table."""
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "results.json"), "w") as f:
        json.dump(report, f, indent=1)
    table = markdown(report)
    with open(os.path.join(out, "results.md"), "w") as f:
        f.write(table)
    return table


if __name__ == "__main__":
    main()
