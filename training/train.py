"""Train, evaluate, export and reload an NF model — one command.

    python -m training.train --config=demo                      # offline, ~1 min on a CPU
    python -m training.train --config=nfnet_f0 --dataset=imagenet2012 \
        --data_dir=gs://... --strategy=tpu --out=runs/f0

Steps: build the model of the config's row inside the strategy scope;
`model.fit` with AGC (in the model's train step), the paper's SGD with
coupled weight decay, warm-up + cosine learning rate, weight EMA, label
smoothing; `BackupAndRestore` every `--checkpoint_every_steps` steps (a
restarted run resumes there, losing at most the work since), TensorBoard
logs, a `.weights.h5` of the last epoch; evaluation of the EMA weights;
`.keras` and `.weights.h5` of the final model; a SavedModel export
(`export.export`), reloaded with `tf.saved_model.load` to classify a few
test images and check that it agrees with the Keras model.
"""

import argparse
import dataclasses
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import nfnet_keras  # noqa: E402
from nfnet_keras.optimizers import NFSGD  # noqa: E402
from . import configs, datasets, pipeline  # noqa: E402

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
# Keras dtype policies: bfloat16 compute (TPU, recent CPUs/GPUs) or float16
# with loss scaling (GPUs); variables, weight standardisation, AGC and EMA
# stay float32 (design.md "Scale").
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")


def make_strategy(name, tpu_address=None):
    if name not in STRATEGIES:
        raise ValueError(f"`--strategy` must be one of {STRATEGIES}. Received: {name!r}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "one_device":
        device = "/gpu:0" if tf.config.list_physical_devices("GPU") else "/cpu:0"
        return tf.distribute.OneDeviceStrategy(device)
    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError("`--strategy=multi_worker` needs the TF_CONFIG environment variable.")
        return tf.distribute.MultiWorkerMirroredStrategy()
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=tpu_address or "")
    tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
    return tf.distribute.TPUStrategy(resolver)


def build_parser():
    parser = argparse.ArgumentParser(
        prog="python -m training.train", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--config", default="demo", help="'demo' or a model name (nfnet_f0, ...)")
    parser.add_argument("--dataset", help="'shapes', 'folder' or a TFDS name (default: the config's)")
    parser.add_argument("--data_dir", help="TFDS data dir, or the image-folder root")
    parser.add_argument("--download", action="store_true", help="let TFDS download the dataset")
    parser.add_argument("--strategy", default="default", choices=STRATEGIES)
    parser.add_argument("--tpu", help="TPU address for --strategy=tpu")
    parser.add_argument("--precision", default="float32", choices=PRECISIONS)
    parser.add_argument("--out", help="output directory (default runs/<config>)")
    parser.add_argument("--batch_size", type=int, help="global batch size")
    parser.add_argument("--epochs", type=float)
    parser.add_argument("--base_lr", type=float, help="learning rate per 256 examples")
    parser.add_argument("--weight_decay", type=float)
    parser.add_argument("--agc_clipping", type=float, help="AGC factor; 0 turns AGC off")
    parser.add_argument("--ema_decay", type=float, help="EMA decay; 0 turns EMA off")
    parser.add_argument("--steps_per_epoch", type=int, help="default: examples / batch")
    parser.add_argument("--checkpoint_every_steps", type=int)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_export", action="store_true", help="skip export and reload")
    parser.add_argument("--verbose", type=int, default=2, help="fit verbosity (0, 1, 2)")
    return parser


def resolve_config(args):
    config = configs.get_config(args.config)
    overrides = {
        "dataset": args.dataset,
        "batch_size": args.batch_size,
        "epochs": args.epochs,
        "base_lr": args.base_lr,
        "weight_decay": args.weight_decay,
        "checkpoint_every_steps": args.checkpoint_every_steps,
    }
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    if args.agc_clipping is not None:
        config.agc_clipping = args.agc_clipping or None
    if args.ema_decay is not None:
        config.ema_decay = args.ema_decay or None
    for name in ("batch_size", "checkpoint_every_steps"):
        if getattr(config, name) < 1:
            raise ValueError(f"`--{name}` must be a positive integer. Received: {getattr(config, name)}")
    if config.epochs <= 0:
        raise ValueError(f"`--epochs` must be positive. Received: {config.epochs}")
    return config


def build_model(config, num_classes):
    # A dynamic input size: trained at train_size, evaluated at test_size.
    return nfnet_keras.get_model(
        config.model,
        weights=None,
        input_tensor=keras.Input((None, None, 3), name="images"),
        classes=num_classes,
        classifier_activation=None,  # logits; the loss applies the softmax
        include_preprocessing=True,  # pipelines give [0, 255] RGB
        agc_clipping=config.agc_clipping,
        dropout_rate=config.dropout_rate,
        stochastic_depth_rate=config.stochastic_depth_rate,
    )


def make_optimizer(config, total_steps, warmup_steps):
    # Linear warm-up from 0 then cosine to 0 (deepmind-research
    # WarmupCosineDecay; reference doc §8.1), stepped with the 0-based
    # iteration count, so the first update uses lr 0 as in the reference.
    schedule = keras.optimizers.schedules.CosineDecay(
        initial_learning_rate=0.0,
        decay_steps=max(1, total_steps - warmup_steps),
        warmup_target=config.peak_lr,
        warmup_steps=warmup_steps,
    )
    return NFSGD(
        learning_rate=schedule,
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        use_ema=config.ema_decay is not None,
        ema_momentum=config.ema_decay or 0.99,
    )


def train(args, extra_callbacks=()):
    """Runs the whole job for parsed `args`; returns the summary dict."""
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(args.precision)
    try:
        return _train(args, extra_callbacks)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _train(args, extra_callbacks):
    config = resolve_config(args)
    out = args.out or os.path.join("runs", args.config)
    os.makedirs(out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    strategy = make_strategy(args.strategy, args.tpu)
    source = datasets.get_source(config.dataset, args.data_dir, args.download)
    steps_per_epoch = args.steps_per_epoch or max(1, source.num_train // config.batch_size)
    epochs = math.ceil(config.epochs)
    total_steps = int(config.epochs * steps_per_epoch)
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    print(
        f"[train] {config.model} on {config.dataset}: {source.num_train} train / "
        f"{source.num_test} test examples, {source.num_classes} classes; "
        f"{strategy.num_replicas_in_sync} replica(s), batch {config.batch_size}, "
        f"{epochs} epochs x {steps_per_epoch} steps, peak lr {config.peak_lr:g}, "
        f"AGC {config.agc_clipping}, EMA {config.ema_decay}, {args.precision}"
    )
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(dataclasses.asdict(config), f, indent=2)

    train_ds = pipeline.make_train_dataset(source, config, config.batch_size, seed=args.seed)
    eval_ds = pipeline.make_eval_dataset(source, config, config.batch_size)
    with strategy.scope():
        model = build_model(config, source.num_classes)
        model.compile(
            optimizer=make_optimizer(config, total_steps, warmup_steps),
            loss=keras.losses.CategoricalCrossentropy(
                from_logits=True, label_smoothing=config.label_smoothing
            ),
            metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
        )
    callbacks = [
        keras.callbacks.BackupAndRestore(
            os.path.join(out, "backup"), save_freq=config.checkpoint_every_steps
        ),
        keras.callbacks.TensorBoard(os.path.join(out, "tensorboard")),
        keras.callbacks.ModelCheckpoint(
            os.path.join(out, "last_epoch.weights.h5"), save_weights_only=True
        ),
    ]
    if config.ema_decay is not None:
        # Validation at each epoch end runs on the EMA weights.
        callbacks.append(keras.callbacks.SwapEMAWeights(swap_on_epoch=True))
    callbacks.extend(extra_callbacks)
    start = time.time()
    history = model.fit(
        train_ds,
        epochs=epochs,
        steps_per_epoch=steps_per_epoch,
        validation_data=eval_ds,
        callbacks=callbacks,
        verbose=args.verbose,
    )
    train_seconds = time.time() - start

    # With use_ema, `fit` ends by writing the EMA into the model's weights.
    metrics = model.evaluate(eval_ds, return_dict=True, verbose=0)
    print(f"[eval] {'EMA ' if config.ema_decay else ''}weights: {json.dumps(metrics)}")
    weights_path = os.path.join(out, "model.weights.h5")
    model.save_weights(weights_path)
    model.save(os.path.join(out, "model.keras"))
    summary = {
        "precision": args.precision,
        "train_seconds": round(train_seconds, 1),
        "final_train_loss": float(history.history["loss"][-1]),
        "eval": metrics,
        "weights": weights_path,
    }
    if not args.no_export:
        # Exports are float32 whatever the training precision.
        keras.mixed_precision.set_global_policy("float32")
        summary.update(export_and_reload(config, source, weights_path, out))
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"[done] {json.dumps(summary)}")
    return summary


def export_and_reload(config, source, weights_path, out):
    try:  # installed: nfnet_keras.training next to nfnet_keras.export
        from ..export import export as export_lib
    except ImportError:  # a checkout: the top-level training/ next to export/
        from export import export as export_lib

    export_dir = os.path.join(out, "export")
    export_lib.export(
        config.model,
        export_dir,
        weights=weights_path,
        classes=source.num_classes,
        eval_transform=config.eval_transform,
    )
    saved_model_dir = os.path.join(export_dir, "saved_model")
    reloaded = tf.saved_model.load(saved_model_dir)
    images, labels = next(iter(source.test.batch(8)))
    images = tf.stack([config.eval_transform(i) for i in images])
    served = reloaded(images / 255.0, training=False).numpy()  # TF Hub images: [0, 1]
    model = build_model(config, source.num_classes)
    model.load_weights(weights_path)
    keras_logits = model.predict(images, verbose=0)
    max_diff = float(np.abs(served - keras_logits).max())
    predicted = served.argmax(-1)
    for label, guess in zip(labels.numpy(), predicted):
        print(f"[predict] true={source.class_names[label]:<10} predicted={source.class_names[guess]}")
    if max_diff > 1e-3 * max(1.0, float(np.abs(keras_logits).max())):
        raise RuntimeError(f"The reloaded SavedModel differs from the Keras model by {max_diff}.")
    return {
        "export_dir": export_dir,
        "reloaded_max_abs_diff": max_diff,
        "reloaded_accuracy_on_8": float((predicted == labels.numpy()).mean()),
    }


def main(argv=None):
    args = build_parser().parse_args(argv)
    try:
        train(args)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
