"""Serving throughput of exported SavedModels: unfolded vs folded, on CPU.

    python benchmarks/export_folding.py --model nfnet_f0 --image_size 256 --batch 8 1

Writes three SavedModels of the same random-weight model (random gains and
skip gains, so no branch is trivially zero) and times their
`serving_default` signature after reloading, as a server would run them:

* ``unfolded``: the fine-tunable export (weight standardisation at every call;
  Keras's XLA-compiled grouped convolutions);
* ``folded_ws``: standardised kernels folded into plain convolutions;
* ``folded_all``: plus the constant activation, residual and SE scales.

Reports median seconds per batch and images per second, and the max
|difference| of each folded export from the unfolded one.
"""

import argparse
import os
import shutil
import tempfile
import time

import numpy as np
import tensorflow as tf

from export import export as export_lib
from export import folding
from nfnet_keras import layers as nf_layers


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, nf_layers.ScaledStdConv2D):
            layer.gain.assign(rng.uniform(0.5, 1.5, layer.gain.shape).astype("float32"))
        elif isinstance(layer, nf_layers.SkipGain):
            layer.skip_gain.assign(np.float32(rng.uniform(0.5, 1.5)))


def _time_interleaved(fns, x, warmup, iters):
    """Median seconds per call of each function, calls interleaved round-robin
    so that load from other processes affects every variant alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn(x)
    times = {name: [] for name in fns}
    for _ in range(iters):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn(x)
            times[name].append(time.perf_counter() - start)
    return {name: float(np.median(t)) for name, t in times.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="nfnet_f0")
    parser.add_argument("--image_size", type=int, default=256)
    parser.add_argument("--batch", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--iters", type=int, default=5)
    args = parser.parse_args()

    model = export_lib.build_keras_model(args.model)
    _randomize(model)
    workdir = tempfile.mkdtemp()
    variants = {}
    try:
        for name, saved in (
            ("unfolded", model),
            ("folded_ws", folding.fold_model(model, fold_scales=False)),
            ("folded_all", folding.fold_model(model)),
        ):
            path = os.path.join(workdir, name)
            root = export_lib.ReusableSavedModel(
                saved, output="classification",
                transform=export_lib.model_eval_transform(args.model, args.image_size),
                trainable=name == "unfolded",
            )
            root.trace()
            tf.saved_model.save(root, path, signatures=root.signatures())
            variants[name] = tf.saved_model.load(path).signatures["serving_default"]

        print(
            f"{args.model} @ {args.image_size}px, TF {tf.__version__}, "
            f"{os.cpu_count()} CPU cores, serving_default of the reloaded SavedModel"
        )
        for batch in args.batch:
            x = tf.constant(
                np.random.default_rng(1).random(
                    (batch, args.image_size, args.image_size, 3), dtype="float32"
                )
            )
            reference = variants["unfolded"](images=x)["logits"].numpy()
            medians = _time_interleaved(
                {name: (lambda t, fn=fn: fn(images=t)) for name, fn in variants.items()},
                x, args.warmup, args.iters,
            )
            base = medians["unfolded"]
            for name, fn in variants.items():
                seconds = medians[name]
                diff = float(np.max(np.abs(fn(images=x)["logits"].numpy() - reference)))
                print(
                    f"  batch {batch:3d} {name:11s} {seconds:8.4f} s/batch "
                    f"{batch / seconds:8.2f} img/s  speed-up {base / seconds:5.2f}x  "
                    f"max|diff| {diff:.2e} (|logits| max {np.abs(reference).max():.2f})"
                )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
