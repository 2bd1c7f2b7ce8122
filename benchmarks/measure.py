"""One timed measurement in this process: one framework, one model, one case.

`benchmarks.run` starts this module once per framework and round, so that
TensorFlow's and PyTorch's thread pools never share a process. Prints one
JSON line: the seconds of every timed call, the first call (trace or compile
included), the build time, the process's peak resident memory, the device
and the dtype the network computed in (and, on a GPU, its peak memory).

    .venv/bin/python -m benchmarks.measure --framework keras --model nfnet_f0 \
        --size 192 --batch 8 --mode train
    .venv/bin/python -m benchmarks.measure --framework timm --model nfnet_f0 \
        --size 256 --batch 64 --mode train --device gpu --precision mixed_bfloat16
"""

import argparse
import contextlib
import importlib.util
import json
import os
import resource
import shutil
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# JAX takes GPU memory as it needs it, as PyTorch does, rather than 75 % of
# the card when its client starts (JAX's default): `benchmarks.run`, which
# imports this module, would otherwise hold that memory once it asked JAX for
# the GPU's name, while the measurements run in other processes.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import numpy as np  # noqa: E402

from training.train import PRECISIONS  # noqa: E402

# Frameworks and the modes they are measured in.
FRAMEWORKS = {
    "keras": ("infer", "train"),  # the Keras model, tf.function, AGC in the train step
    "keras_remat": ("train",),  # the same with `remat=True` (each NF block recomputed)
    "keras_folded": ("infer",),  # nfnet_keras.fold_for_inference
    "savedmodel": ("infer",),  # the fine-tunable export's serving_default, reloaded
    "savedmodel_folded": ("infer",),  # the --fold export, reloaded
    "timm": ("infer", "train"),  # the same architecture in timm, AGC in the step
    "keras_applications": ("infer", "train"),  # a keras.applications reference model
    "keras_jax": ("infer", "train"),  # the Keras model on Keras's JAX backend (always XLA)
}
# Frameworks that XLA can compile (`--jit-compile`).
JIT_FRAMEWORKS = ("keras", "keras_folded", "keras_applications")
# Exported graphs are float32 whatever the training precision (the exporter's rule).
FLOAT32_ONLY = ("savedmodel", "savedmodel_folded")
# NFModel refuses loss scaling, which float16 needs, on the JAX backend.
NO_FLOAT16 = ("keras_jax",)
DEVICES = ("cpu", "gpu")
# timm's autocast dtype of each Keras policy (timm train.py `--amp-dtype`).
AUTOCAST_DTYPES = {"mixed_bfloat16": "bfloat16", "mixed_float16": "float16"}
NUM_CLASSES = 1000
AGC_CLIPPING = 0.01  # the paper's clipping factor for batch <= 4096 (reference doc §7)
LEARNING_RATE = 0.1  # any value: the step's cost does not depend on it
MOMENTUM = 0.9  # the paper's Nesterov momentum (reference doc §8)


def _peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _rss_mb():
    """The process's resident memory now (Linux `/proc/self/statm`, in pages)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _time_calls(fn, warmup, iters):
    start = time.perf_counter()
    fn()
    first = time.perf_counter() - start
    for _ in range(warmup - 1):
        fn()
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return first, times


def _nonzero_skip_gains(model):
    """Skip gains start at 0 (SkipInit); trained models have none at 0, and
    folding leaves a zero-scale branch as it is."""
    from nfnet_keras import layers as nf_layers

    for layer in model.layers:
        if isinstance(layer, nf_layers.SkipGain):
            layer.skip_gain.assign(1.0)


def _keras_step(args, build):
    import keras

    from nfnet_keras.agc import classifier_layers

    keras.mixed_precision.set_dtype_policy(args.precision)  # before the model is built
    rng = np.random.default_rng(0)
    x = _on_device(rng.random((args.batch, args.size, args.size, 3), dtype="float32"))
    started = time.perf_counter()
    model = build()
    build_s = time.perf_counter() - started
    if args.precision != "float32":
        for head in classifier_layers(model):
            # Float32 logits, as the trainer does (Keras's mixed-precision guide).
            head.dtype_policy = "float32"
    info = {"compute_dtype": keras.backend.standardize_dtype(model.layers[-2].output.dtype)}
    # JAX runs every step as one XLA program (Keras's JAX trainer jits it).
    jit_compile = args.jit_compile or keras.backend.backend() == "jax"
    if args.mode == "infer":
        return build_s, _inference(model, x, jit_compile), info
    y = _on_device(rng.integers(0, NUM_CLASSES, (args.batch,)))
    # Under mixed_float16 Keras wraps the optimizer in a LossScaleOptimizer
    # (for an NFModel: around its AGC optimizer).
    model.compile(
        optimizer=keras.optimizers.SGD(LEARNING_RATE, momentum=MOMENTUM, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=jit_compile,
    )
    info["optimizer"] = type(model.optimizer).__name__
    # `train_on_batch` returns the logs as Python floats, read back after the
    # whole step was queued: it returns when the step is done, on a GPU too.
    return build_s, lambda: model.train_on_batch(x, y), info


def _on_device(array):
    """`array` on the backend's default device (the GPU where there is one)."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        # An op's output lives on the default device; a tensor made from
        # NumPy stays in host memory and would be copied in every call.
        return tf.identity(array)
    return keras.ops.convert_to_tensor(array)


def _inference(model, x, jit_compile):
    """A call of `model` on `x` that returns when the result is on the host."""
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        infer = tf.function(lambda t: model(t, training=False), jit_compile=jit_compile)
        return lambda: infer(x).numpy()
    import jax

    infer = jax.jit(lambda t, n, images: model.stateless_call(t, n, images, training=False)[0])
    trainable = [v.value for v in model.trainable_variables]
    non_trainable = [v.value for v in model.non_trainable_variables]
    return lambda: np.asarray(infer(trainable, non_trainable, x))


def keras_case(args):
    import nfnet_keras

    def build():
        model = nfnet_keras.get_model(
            args.model, weights=None, input_shape=(args.size, args.size, 3),
            classifier_activation=None, agc_clipping=AGC_CLIPPING,
            remat=args.framework == "keras_remat",
        )
        _nonzero_skip_gains(model)
        if args.framework == "keras_folded":
            model = nfnet_keras.fold_for_inference(model)
        return model

    return _keras_step(args, build)


def keras_applications_case(args):
    import keras

    def build():
        constructor = getattr(keras.applications, args.model)
        return constructor(weights=None, input_shape=(args.size, args.size, 3),
                           classifier_activation=None)

    return _keras_step(args, build)


def saved_model_case(args):
    import tensorflow as tf

    from export import export as export_lib

    started = time.perf_counter()
    model = export_lib.build_keras_model(args.model)
    _nonzero_skip_gains(model)
    workdir = tempfile.mkdtemp()
    try:
        path = os.path.join(workdir, "saved_model")
        export_lib.save(model, path, output="classification",
                        transform=export_lib.model_eval_transform(args.model, args.size),
                        fold=args.framework == "savedmodel_folded")
        serve = tf.saved_model.load(path).signatures["serving_default"]
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    build_s = time.perf_counter() - started
    x = tf.identity(np.random.default_rng(0).random((args.batch, args.size, args.size, 3),
                                                    dtype="float32"))
    return build_s, lambda: serve(images=x)["logits"].numpy(), {}


def timm_name_of(model):
    """timm's name of a package model's network (looked up through Keras)."""
    from nfnet_keras.models import get_architecture

    timm_name = get_architecture(model).timm_name
    if timm_name is None:
        raise SystemExit(f"timm has no model of {model!r}'s network")
    return timm_name


def timm_case(args):
    timm_name = args.timm_name or timm_name_of(args.model)
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    # The test-only oracle, with its import shim; no Keras or TensorFlow in
    # this process, whose memory is timm's.
    from _timm_import import timm, torch
    from timm.utils.agc import adaptive_clip_grad

    torch.set_num_threads(os.cpu_count())
    device = "cuda" if args.device == "gpu" else "cpu"
    torch.backends.cudnn.benchmark = True  # as timm's train.py sets it
    started = time.perf_counter()
    model = timm.create_model(timm_name, num_classes=NUM_CLASSES).to(device)
    build_s = time.perf_counter() - started
    x = torch.rand(args.batch, 3, args.size, args.size, device=device)
    dtype = AUTOCAST_DTYPES.get(args.precision)

    def autocast():  # timm train.py `--amp`: forward and loss under autocast
        return (torch.autocast(device, dtype=getattr(torch, dtype)) if dtype
                else contextlib.nullcontext())

    def done(logits):  # CUDA runs asynchronously: wait for the queued work
        if device == "cuda":
            torch.cuda.synchronize()
        info["compute_dtype"] = str(logits.dtype).removeprefix("torch.")

    info = {}
    if args.mode == "infer":
        model.eval()

        def infer():
            with torch.inference_mode(), autocast():
                done(model(x))

        return build_s, infer, info
    model.train()
    head = {id(p) for p in model.get_classifier().parameters()}
    clipped = [p for p in model.parameters() if id(p) not in head]
    optimizer = torch.optim.SGD(model.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM,
                                nesterov=True)
    # float16 only: dynamic loss scaling (timm train.py's `NativeScaler`);
    # disabled, the scaler passes the loss and the step through unchanged.
    scaler = torch.amp.GradScaler(device, enabled=dtype == "float16")
    y = torch.randint(0, NUM_CLASSES, (args.batch,), device=device)

    def step():
        optimizer.zero_grad()
        with autocast():
            logits = model(x)
            loss = torch.nn.functional.cross_entropy(logits, y)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)  # AGC sees the true gradients
        adaptive_clip_grad(clipped, clip_factor=AGC_CLIPPING)
        scaler.step(optimizer)
        scaler.update()
        done(logits)

    return build_s, step, info


CASES = {
    "keras": keras_case,
    "keras_folded": keras_case,
    "keras_remat": keras_case,
    "savedmodel": saved_model_case,
    "savedmodel_folded": saved_model_case,
    "timm": timm_case,
    "keras_applications": keras_applications_case,
    "keras_jax": keras_case,
}


def library(framework):
    """The library that runs a framework's measurement."""
    return {"timm": "torch", "keras_jax": "jax"}.get(framework, "tensorflow")


def gpu_name(name):
    """The first GPU that library `name` ("tensorflow", "torch" or "jax") sees, or None."""
    if name == "torch":
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    if name == "jax":
        import jax

        try:
            return jax.devices("gpu")[0].device_kind
        except RuntimeError:  # "Unknown backend: 'gpu' requested, but no platforms ..."
            return None
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    return tf.config.experimental.get_device_details(gpus[0]).get("device_name", gpus[0].name)


def gpu_names(libraries):
    """{library: the GPU it runs on}; exits with one line where one sees none."""
    names = {}
    for name in sorted(set(libraries)):
        names[name] = gpu_name(name)
        if names[name] is None:
            raise SystemExit(
                f"--device gpu: {name} finds no GPU on this machine (no GPU, no driver, or a "
                f"CPU-only build of {name}); measure with --device cpu"
            )
    return names


def _peak_device_mb(framework):
    if library(framework) == "torch":
        import torch

        return torch.cuda.max_memory_allocated() / 2**20
    if library(framework) == "jax":
        import jax

        return jax.devices("gpu")[0].memory_stats()["peak_bytes_in_use"] / 2**20
    import tensorflow as tf

    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--framework", required=True, choices=sorted(FRAMEWORKS))
    parser.add_argument("--model", required=True,
                        help="a package model name, or a keras.applications name")
    parser.add_argument("--timm-name",
                        help="timm: timm's model name (default: the row's, looked up through Keras)")
    parser.add_argument("--size", type=int, required=True)
    parser.add_argument("--batch", type=int, required=True)
    parser.add_argument("--mode", choices=("infer", "train"), default="infer")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls, the first included")
    parser.add_argument("--iters", type=int, default=5, help="timed calls")
    parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                        help="the Keras dtype policy; timm: torch.autocast with its dtype")
    parser.add_argument("--device", choices=DEVICES, default="cpu",
                        help="gpu: TensorFlow's and JAX's default placement, CUDA for timm; "
                             "cpu: GPUs hidden")
    parser.add_argument("--jit-compile", action="store_true",
                        help="TensorFlow frameworks: compile the call or train step with XLA")
    parser.add_argument("--inter-op-threads", type=int, default=0,
                        help="TensorFlow's inter-op thread pool (0: its default)")
    parser.add_argument("--intra-op-threads", type=int, default=0,
                        help="TensorFlow's intra-op thread pool (0: its default)")
    args = parser.parse_args(argv)
    if args.mode not in FRAMEWORKS[args.framework]:
        parser.error(f"--framework={args.framework} measures only {FRAMEWORKS[args.framework]}")
    if args.jit_compile and args.framework not in JIT_FRAMEWORKS:
        parser.error(f"--jit-compile applies to Keras models, not --framework={args.framework}")
    if args.precision != "float32" and args.framework in FLOAT32_ONLY:
        parser.error(f"--precision: --framework={args.framework} serves a float32 export; "
                     f"expected --precision float32, received {args.precision}")
    if args.precision == "mixed_float16" and args.framework in NO_FLOAT16:
        parser.error(f"--precision: --framework={args.framework} has no loss scaling; expected "
                     "float32 or mixed_bfloat16, received mixed_float16")
    if args.warmup < 1 or args.iters < 1:
        parser.error("--warmup and --iters must be at least 1")
    if library(args.framework) == "jax" and importlib.util.find_spec("jax") is None:
        raise SystemExit(f"--framework {args.framework} runs Keras's JAX backend, and JAX is not "
                         'installed: pip install "nfnet_keras[jax]" (or a CUDA build of jax)')
    # Before Keras is imported: the backend that runs a Keras framework
    # (timm's measurement uses Keras only to look up the row).
    if library(args.framework) != "torch":
        os.environ["KERAS_BACKEND"] = library(args.framework)
    if library(args.framework) == "jax" and args.device == "cpu":
        os.environ["JAX_PLATFORMS"] = "cpu"  # before JAX is imported: its CPU client alone
    if args.device == "gpu":
        device = gpu_names([library(args.framework)])[library(args.framework)]
    elif library(args.framework) == "tensorflow":
        device = "cpu"
        import tensorflow as tf

        tf.config.set_visible_devices([], "GPU")  # before TensorFlow places anything
    else:
        device = "cpu"
    if args.inter_op_threads or args.intra_op_threads:
        import tensorflow as tf

        tf.config.threading.set_inter_op_parallelism_threads(args.inter_op_threads)
        tf.config.threading.set_intra_op_parallelism_threads(args.intra_op_threads)
    build_s, fn, info = CASES[args.framework](args)
    built_rss_mb = _rss_mb()
    first_call_s, times = _time_calls(fn, args.warmup, args.iters)
    result = {"build_s": build_s, "first_call_s": first_call_s, "times": times,
              "built_rss_mb": built_rss_mb, "peak_rss_mb": _peak_rss_mb(), "device": device,
              "precision": args.precision, **info}
    if args.device == "gpu":
        result["peak_device_mb"] = _peak_device_mb(args.framework)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
