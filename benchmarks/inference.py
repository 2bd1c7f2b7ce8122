"""Inference (and optionally train-step) throughput: nfnet_keras vs timm vs keras.applications.

All three are measured in the same process, on the same machine, with the
same batch, so the ratios are meaningful even where absolute numbers move.

    .venv/bin/python -m benchmarks.inference --model nfnet_f0 --size 192 --batch 8
    .venv/bin/python -m benchmarks.inference --model nfnet_f0 --size 256 --xla --train

Prints one line per measurement and a final JSON summary.
"""

import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402


def _median_seconds(fn, warmup, repeats):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_keras(model_name, size, batch, xla, train, warmup, repeats):
    import keras
    import tensorflow as tf

    import nfnet_keras

    model = nfnet_keras.get_model(
        model_name, weights=None, input_shape=(size, size, 3), classifier_activation=None
    )
    x = tf.constant(np.random.default_rng(0).standard_normal((batch, size, size, 3)), tf.float32)
    infer = tf.function(lambda t: model(t, training=False), jit_compile=xla)
    results = {"keras_infer_s": _median_seconds(lambda: infer(x).numpy(), warmup, repeats)}
    if train:
        y = tf.constant(np.random.default_rng(1).integers(0, 1000, (batch,)))
        model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
                      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                      jit_compile=xla)
        step = lambda: model.train_on_batch(x, y)  # noqa: E731
        results["keras_train_s"] = _median_seconds(step, warmup, repeats)
    return results


def bench_keras_applications(size, batch, warmup, repeats):
    import keras
    import tensorflow as tf

    model = keras.applications.ResNet50(weights=None, input_shape=(size, size, 3))
    x = tf.constant(np.random.default_rng(0).standard_normal((batch, size, size, 3)), tf.float32)
    infer = tf.function(lambda t: model(t, training=False))
    return {"keras_resnet50_infer_s": _median_seconds(lambda: infer(x).numpy(), warmup, repeats)}


def bench_timm(model_name, size, batch, train, warmup, repeats):
    sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
    from _timm import timm, torch  # the test-only oracle, with its import shim

    from nfnet_keras.models import get_architecture

    timm_name = get_architecture(model_name).timm_name
    if timm_name is None:
        print(f"timm has no model of {model_name}'s network; skipped")
        return {}
    model = timm.create_model(timm_name).eval()
    x = torch.randn(batch, 3, size, size)

    def infer():
        with torch.inference_mode():
            model(x)

    results = {"timm_infer_s": _median_seconds(infer, warmup, repeats)}
    if train:
        model.train()
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
        y = torch.randint(0, 1000, (batch,))

        def step():
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()

        results["timm_train_s"] = _median_seconds(step, warmup, repeats)
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nfnet_f0")
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--xla", action="store_true", help="XLA-compile the Keras functions")
    parser.add_argument("--train", action="store_true", help="also time a training step")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args(argv)

    results = dict(vars(args))
    results.update(bench_keras(args.model, args.size, args.batch, args.xla, args.train,
                               args.warmup, args.repeats))
    results.update(bench_keras_applications(args.size, args.batch, args.warmup, args.repeats))
    try:
        results.update(bench_timm(args.model, args.size, args.batch, args.train,
                                  args.warmup, args.repeats))
    except ImportError as error:  # timm is a test-only dependency
        print(f"timm not measured: {error}")
    for key in [k for k in results if k.endswith("_s")]:
        print(f"{key:28s} {results[key]:.3f} s/batch = {args.batch / results[key]:.1f} img/s")
    if "timm_infer_s" in results:
        results["speedup_vs_timm_infer"] = results["timm_infer_s"] / results["keras_infer_s"]
        print(f"nfnet_keras / timm inference speed: {results['speedup_vs_timm_infer']:.2f}x")
    if "timm_train_s" in results:
        results["speedup_vs_timm_train"] = results["timm_train_s"] / results["keras_train_s"]
        print(f"nfnet_keras / timm train-step speed: {results['speedup_vs_timm_train']:.2f}x")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
