"""Grouped 3x3 convolutions of NFNet-F0's stages: Keras grouped `ops.conv` vs per-group convs.

On the TensorFlow backend `keras.ops.conv` sends a kernel with fewer input
channels than the input (a grouped convolution) through an XLA-compiled
function. This measures forward and forward+backward of that path against
the per-group form `ScaledStdConv2D` uses (split, convolve, concatenate),
at the shapes of NFNet-F0's grouped convs, batch 8, graph mode.

    .venv/bin/python -m benchmarks.grouped_conv
"""

import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import tensorflow as tf  # noqa: E402
from keras import ops  # noqa: E402

# (spatial size at 192 px, channels, groups) of F0's stages 1-3 (group width
# 128, reference doc §2), and stage 0's single group for comparison.
SHAPES = [(48, 128, 1), (24, 256, 2), (12, 768, 6), (6, 768, 6)]


def _median(fn, *args, repeats=5):
    fn(*args)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        [t.numpy() for t in tf.nest.flatten(fn(*args))]
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def grouped(x, w):
    return ops.conv(x, w, padding="same")


def per_group(x, w, groups):
    xs, ws = ops.split(x, groups, axis=-1), ops.split(w, groups, axis=-1)
    return ops.concatenate([ops.conv(a, b, padding="same") for a, b in zip(xs, ws)], axis=-1)


def main():
    for size, channels, groups in SHAPES:
        x = tf.random.normal((8, size, size, channels))
        w = tf.Variable(tf.random.normal((3, 3, channels // groups, channels)))
        forms = {"keras_grouped": grouped, "per_group": lambda a, b: per_group(a, b, groups)}
        row = {}
        for name, conv in forms.items():
            forward = tf.function(lambda a, conv=conv: conv(a, w))

            @tf.function
            def backward(a, conv=conv):
                with tf.GradientTape() as tape:
                    tape.watch(a)
                    loss = tf.reduce_sum(conv(a, w) ** 2)
                return tape.gradient(loss, [a, w])

            row[f"{name}_fwd_ms"] = 1e3 * _median(forward, x)
            row[f"{name}_fwd_bwd_ms"] = 1e3 * _median(backward, x)
        ratio = row["keras_grouped_fwd_bwd_ms"] / row["per_group_fwd_bwd_ms"]
        print(
            f"{size:>3}x{size:<3} c={channels:<4} groups={groups:<2} "
            + " ".join(f"{k}={v:.1f}" for k, v in row.items())
            + f"  fwd+bwd speed-up of per-group: {ratio:.1f}x"
        )


if __name__ == "__main__":
    main()
