"""The NFNet paper's AGC claim in miniature, on 2 CPU cores in a few minutes.

Claim (Brock, De, Smith, Simonyan 2021, arXiv:2102.06171, §4.1, Fig. 2):
without normalisation, NF-ResNets become unstable as the batch size -- and
with it the learning rate, ``lr = base x batch / 256`` -- grows; Adaptive
Gradient Clipping keeps them stable, like a BatchNorm ResNet.

The miniature trains the package's tiny NF-ResNet row (widths 16...128, one
bottleneck block per stage; skip gains start at 1, see `SKIP_GAIN`) with
and without AGC (clipping 0.01, the paper's), and a BatchNorm
pre-activation ResNet of the same shape
(`nfnet_keras.baselines.BNResNetV2`), with the paper's SGD (Nesterov
momentum 0.9, weight decay 2e-5; `NFSGD`) and a linear-warm-up + cosine
schedule, for the same number of steps at every batch size (so a larger
batch also sees more epochs), on scikit-learn's
``digits`` (1,797 real 8x8 handwritten digits shipped inside the package,
upsampled to 32x32, 3 channels; 1,347 train / 450 test, fixed split). It
writes a table and a plot and, with ``--readme``, puts both into the README
between the ``agc-miniature`` markers; the README says what the miniature
does and does not reproduce.

    .venv/bin/python -m experiments.agc_miniature --readme README.md

Needs the ``experiments`` extra (scikit-learn, matplotlib).
"""

import argparse
import os
import re
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

# The grid: batch sizes and the base learning rate of the linear scaling rule
# lr = base * batch / 256 (the NFNet paper's rule, §4.1 / Table 7 recipe).
BATCH_SIZES = (16, 64, 256, 1024)
BASE_LR = 0.1
# NF blocks start with their SkipInit gain at 1 rather than DeepMind's 0: AGC
# bounds each step of a parameter by lambda * max(|w|, 1e-3) (clipping 0.01,
# eps 1e-3), which holds zero-initialised gains near 0 for thousands of steps
# -- far more than this run has. `--skip-gain 0` runs the default model.
SKIP_GAIN = 1.0
STEPS = 120
WARMUP_STEPS = 10
LOGGED_EPOCHS = 6  # the run is split into this many Keras epochs to log the loss
SEED = 0
TEST_SIZE = 450
CONFIGS = ("nf_noclip", "nf_agc", "bn")
LABELS = {"nf_noclip": "NF-ResNet, no clipping", "nf_agc": "NF-ResNet + AGC (0.01)",
          "bn": "BN-ResNet"}
CHANCE = 0.1


def load_digits():
    """(x_train, y_train, x_test, y_test): digits as 32x32x3 float32, standardised."""
    from sklearn.datasets import load_digits as sklearn_digits

    digits = sklearn_digits()
    images = digits.images.astype("float32") / 16.0  # pixel values 0..16
    images = np.repeat(np.repeat(images, 4, axis=1), 4, axis=2)  # 8x8 -> 32x32
    images = np.repeat(images[..., None], 3, axis=-1)
    order = np.random.default_rng(SEED).permutation(len(images))
    images, labels = images[order], digits.target[order]
    train, test = slice(TEST_SIZE, None), slice(0, TEST_SIZE)
    mean, std = images[train].mean(), images[train].std()
    images = (images - mean) / std
    return images[train], labels[train], images[test], labels[test]


def build(config, skip_gain=SKIP_GAIN, classes=10):
    import nfnet_keras
    from nfnet_keras import baselines

    shape = (32, 32, 3)
    if config == "bn":
        row = nfnet_keras.models.get_architecture("nf_resnet_tiny")
        return baselines.BNResNetV2(
            row.depths, widths=row.widths, stem_width=row.stem_widths[0], input_shape=shape,
            classes=classes, classifier_activation=None, name="bn_resnet_tiny",
        )
    model = nfnet_keras.NFResNet(
        "tiny", weights=None, include_preprocessing=False,  # the digits come standardised
        input_shape=shape, classes=classes, classifier_activation=None,
        agc_clipping=0.01 if config == "nf_agc" else None,
    )
    for layer in model.layers:
        if isinstance(layer, nfnet_keras.SkipGain):
            layer.skip_gain.assign(skip_gain)
    return model


def train_one(config, batch_size, data, steps=STEPS, base_lr=BASE_LR, skip_gain=SKIP_GAIN):
    import keras
    import tensorflow as tf

    import nfnet_keras

    if steps < max(WARMUP_STEPS + 1, LOGGED_EPOCHS):
        raise ValueError(
            f"`steps` must be at least {max(WARMUP_STEPS + 1, LOGGED_EPOCHS)} (warm-up "
            f"{WARMUP_STEPS} steps). Received: steps={steps}"
        )
    x_train, y_train, x_test, y_test = data
    keras.utils.set_random_seed(SEED)
    model = build(config, skip_gain)
    lr = base_lr * batch_size / 256
    schedule = keras.optimizers.schedules.CosineDecay(
        0.0, steps - WARMUP_STEPS, warmup_target=lr, warmup_steps=WARMUP_STEPS
    )
    train = (
        tf.data.Dataset.from_tensor_slices((x_train, y_train))
        .shuffle(len(x_train), seed=SEED)
        .repeat()
        .batch(batch_size)
    )
    model.compile(
        optimizer=nfnet_keras.NFSGD(schedule),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.perf_counter()
    history = model.fit(train, steps_per_epoch=steps // LOGGED_EPOCHS, epochs=LOGGED_EPOCHS,
                        shuffle=False, verbose=0)
    seconds = time.perf_counter() - start
    losses = np.array(history.history["loss"], np.float64)
    _, accuracy = model.evaluate(x_test, y_test, batch_size=256, verbose=0)
    skipped = sum(history.history.get("skipped_steps", [0]))
    diverged = not np.all(np.isfinite(losses)) or accuracy < 2 * CHANCE or skipped > 0
    return {
        "config": config, "batch_size": batch_size, "lr": lr, "steps": steps, "test_accuracy": float(accuracy),
        "max_train_loss": float(np.nanmax(np.where(np.isfinite(losses), losses, np.nan))
                                if np.isfinite(losses).any() else float("inf")),
        "final_train_loss": float(losses[-1]), "skipped_steps": int(skipped),
        "diverged": bool(diverged), "seconds": seconds,
    }


def table(results):
    lines = [
        "| batch | lr | " + " | ".join(LABELS[c] for c in CONFIGS) + " |",
        "|---:|---:|" + "---:|" * len(CONFIGS),
    ]
    for batch_size in sorted({r["batch_size"] for r in results}):
        row = {r["config"]: r for r in results if r["batch_size"] == batch_size}
        cells = []
        for config in CONFIGS:
            r = row[config]
            cell = f"{100 * r['test_accuracy']:.1f} %"
            if r["diverged"]:
                cell += " (diverged)"
            cells.append(cell)
        lr = row[CONFIGS[0]]["lr"]
        lines.append(f"| {batch_size} | {lr:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(results, path, base_lr):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, ax = plt.subplots(figsize=(6, 4))
    for config in CONFIGS:
        rows = sorted((r for r in results if r["config"] == config), key=lambda r: r["batch_size"])
        ax.plot([r["batch_size"] for r in rows], [100 * r["test_accuracy"] for r in rows],
                marker="o", label=LABELS[config])
    ax.axhline(100 * CHANCE, color="grey", linestyle=":", label="chance")
    ax.set_xscale("log", base=2)
    ax.set_xlabel(f"batch size (lr = {base_lr:g} x batch / 256)")
    ax.set_ylabel("digits test accuracy (%)")
    ax.set_title(f"AGC in miniature: tiny NF-ResNet, {results[0]['steps']} steps")
    ax.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def update_readme(readme, block):
    text = open(readme).read()
    start, end = "<!-- agc-miniature:start -->", "<!-- agc-miniature:end -->"
    pattern = re.compile(re.escape(start) + ".*?" + re.escape(end), re.S)
    if not pattern.search(text):
        raise ValueError(f"{readme} has no '{start}' ... '{end}' markers.")
    open(readme, "w").write(pattern.sub(lambda _: f"{start}\n{block}\n{end}", text))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=list(BATCH_SIZES))
    parser.add_argument("--steps", type=int, default=STEPS, help="SGD steps per run")
    parser.add_argument("--base-lr", type=float, default=BASE_LR)
    parser.add_argument("--skip-gain", type=float, default=SKIP_GAIN,
                        help="initial SkipInit gain of the NF blocks (DeepMind: 0)")
    parser.add_argument("--plot", default="docs/agc_miniature.png", help="PNG to write")
    parser.add_argument("--readme", default=None, help="README to put the table and plot into")
    args = parser.parse_args(argv)

    data = load_digits()
    results = []
    start = time.perf_counter()
    for batch_size in args.batch_sizes:
        for config in CONFIGS:
            result = train_one(config, batch_size, data, args.steps, args.base_lr, args.skip_gain)
            results.append(result)
            print(
                f"{config:10s} batch {batch_size:5d} lr {result['lr']:6.3f}: test accuracy "
                f"{100 * result['test_accuracy']:5.1f} %, final train loss "
                f"{result['final_train_loss']:.3g}, skipped steps {result['skipped_steps']}"
                f"{' DIVERGED' if result['diverged'] else ''} ({result['seconds']:.0f} s)",
                flush=True,
            )
    total = time.perf_counter() - start
    os.makedirs(os.path.dirname(args.plot) or ".", exist_ok=True)
    plot(results, args.plot, args.base_lr)
    markdown = table(results)
    print(markdown)
    print(f"wrote {args.plot}; {total:.0f} s in all")
    if args.readme:
        update_readme(args.readme, f"{markdown}\n\n![AGC miniature]({args.plot})\n\n"
                      f"(`python -m experiments.agc_miniature`, {total / 60:.1f} min on this "
                      "machine's 2 shared CPU cores.)")
    return results


if __name__ == "__main__":
    main()
