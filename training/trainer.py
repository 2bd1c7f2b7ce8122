"""The training job: one loop for every `tf.distribute` strategy.

`run(options)` builds the model of the config's row (or fine-tunes one from
`--weights`) inside the strategy's scope and trains it with a loop of its
own: `strategy.run` over `NFModel.train_step` (AGC on the cross-replica
gradient, the paper's SGD, warm-up + cosine learning rate, EMA, label
smoothing), input from `strategy.distribute_datasets_from_function`, one
shard per worker. Keras 3.15's `fit` does not run under
`MultiWorkerMirroredStrategy`; this loop is the same for the default,
one-device, mirrored, multi-worker and TPU strategies, so the path the tests
run is the path users run.

Each epoch ends with an evaluation (top-1 / top-5, on the EMA weights when
EMA is on); the run ends with `model.keras`, `model.weights.h5`,
`best.keras` (best validation top-1), TensorBoard logs, `summary.json` and a
SavedModel export that is reloaded and compared with the Keras model. Only
the chief worker writes them. A checkpoint every `checkpoint_every_steps`
steps and at each epoch end holds everything the rest of the run depends
on, so a killed run, rerun with the same command, ends with the weights of
an uninterrupted one (see `training.checkpoints`, `training.pipeline`).
"""

import dataclasses
import json
import math
import os
import platform
import sys
import time
import warnings

import keras
import numpy as np
import tensorflow as tf

import nfnet_keras
from nfnet_keras.optimizers import NFSGD
from . import checkpoints, datasets, pipeline
from .train import TrainingError

# Top-k accuracy reported next to top-1 (the ImageNet convention).
TOP_K = 5
# Options that do not change the trained weights: a run may resume with
# other values of these.
NEUTRAL_OPTIONS = ("verbose", "no_export", "checkpoint_every_steps", "overwrite", "out",
                   "data_dir", "download", "tpu", "strategy", "mode", "deterministic", "remat")


def make_strategy(name, tpu_address=None):
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


# ---------------------------------------------------------------------------
# Model and optimizer.
# ---------------------------------------------------------------------------


def _get_model(config, weights, **kwargs):
    return nfnet_keras.get_model(
        config.model,
        weights=weights,
        # A dynamic input size: trained at train_size, evaluated at test_size.
        input_tensor=keras.Input((None, None, 3), name="images"),
        include_preprocessing=True,  # pipelines give [0, 255] RGB
        agc_clipping=config.agc_clipping,
        dropout_rate=config.dropout_rate,
        stochastic_depth_rate=config.stochastic_depth_rate,
        **kwargs,
    )


def build_model(config, num_classes, weights=None, remat=False):
    """The config's model with `num_classes` logits; returns (model, new_head).

    `remat=True` recomputes each NF block in the backward pass (the
    constructors' gradient checkpointing).

    With `weights` (anything the constructors' `weights=` takes), the whole
    model is loaded when the checkpoint's classifier fits `num_classes`;
    otherwise the backbone is loaded and the classifier is new.
    """
    with warnings.catch_warnings():
        # Keras warns about the entries of a full-model file that a model
        # without classifier lacks; every backbone weight is loaded (tested).
        warnings.filterwarnings("ignore", message="Skipping nested container")
        return _build_model(config, num_classes, weights, remat)


def _build_model(config, num_classes, weights, remat):
    # Logits: the loss applies the softmax.
    head = dict(classes=num_classes, classifier_activation=None, remat=remat)
    if weights is not None:
        try:
            return _get_model(config, weights, **head), False
        except Exception:  # noqa: BLE001 - the classifier does not fit: a new head
            pass
    model = _get_model(config, None, **head)
    if weights is None:
        return model, False
    try:
        backbone = _get_model(config, weights, include_top=False)
    except Exception as error:  # noqa: BLE001 - any converter/loader error
        raise ValueError(
            f"`--weights` {weights} does not fit model {config.model}: "
            f"{str(error).strip().splitlines()[0][:300]}"
        ) from None
    for layer in backbone.layers:
        if layer.weights:
            model.get_layer(layer.name).set_weights(layer.get_weights())
    return model, True


def classifier(model):
    """The final Dense layer (found by structure, not by name)."""
    head = model.layers[-1]
    if not isinstance(head, keras.layers.Dense):
        raise ValueError(f"Model {model.name} does not end with a Dense classifier.")
    return head


def set_backbone_trainable(model, trainable):
    head = classifier(model)
    for layer in model.layers:
        if layer is not head:
            layer.trainable = trainable


class LearningRate:
    """The learning rate of each step.

    Linear warm-up from 0 then cosine to 0 (deepmind-research
    WarmupCosineDecay; reference doc §8.1), of the 0-based step count, so
    the first update uses lr 0 as in the reference; when fine-tuning, times
    `unfrozen_lr_scale` once the backbone is unfrozen at `freeze_steps`
    (Keras's transfer-learning guide). The loop assigns it to the
    optimizer's learning-rate variable before each step, so that saved
    models hold a plain optimizer.
    """

    def __init__(self, config, total_steps, warmup_steps, freeze_steps=0):
        self.schedule = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0,
            decay_steps=max(1, total_steps - warmup_steps),
            warmup_target=config.peak_lr,
            warmup_steps=warmup_steps,
        )
        self.freeze_steps = freeze_steps
        self.unfrozen_scale = config.unfrozen_lr_scale

    def __call__(self, step):
        lr = float(self.schedule(step))
        return lr * self.unfrozen_scale if 0 < self.freeze_steps <= step else lr


def make_optimizer(config):
    return NFSGD(
        learning_rate=0.0,  # set before each step from `LearningRate`
        momentum=config.momentum,
        nesterov=config.nesterov,
        weight_decay=config.weight_decay,
        use_ema=config.ema_decay is not None,
        ema_momentum=config.ema_decay or 0.99,
    )


def compile_model(model, optimizer, config, new_head):
    kwargs = {"agc_exclude": [classifier(model).kernel]} if new_head else {}
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.CategoricalCrossentropy(
            from_logits=True, label_smoothing=config.label_smoothing
        ),
        metrics=[
            keras.metrics.CategoricalAccuracy(name="accuracy"),
            keras.metrics.TopKCategoricalAccuracy(k=TOP_K, name="top5"),
        ],
        **kwargs,
    )


# ---------------------------------------------------------------------------
# Distributed steps.
# ---------------------------------------------------------------------------


def make_train_step(strategy, model):
    @tf.function
    def step(iterator):
        logs = strategy.run(model.train_step, args=(next(iterator),))
        return {k: strategy.reduce("MEAN", v, axis=None) for k, v in logs.items()}

    return step


def make_eval_step(strategy, model, num_classes):
    k = min(TOP_K, num_classes)

    def replica_fn(images, labels):
        logits = tf.cast(model(images, training=False), tf.float32)
        real = tf.cast(labels != pipeline.PADDING_LABEL, tf.float32)
        labels = tf.maximum(labels, 0)
        loss = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, logits)
        return tf.stack([
            tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, 1), tf.float32) * real),
            tf.reduce_sum(tf.cast(tf.math.in_top_k(labels, logits, k), tf.float32) * real),
            tf.reduce_sum(loss * real),
            tf.reduce_sum(real),
        ])

    @tf.function
    def step(batch):
        return strategy.reduce("SUM", strategy.run(replica_fn, args=batch), axis=None)

    return step


def evaluate(eval_ds, eval_step):
    """Top-1, top-5 and loss over the whole (sharded) test split."""
    totals = np.zeros(4)
    for batch in eval_ds:
        totals += eval_step(batch).numpy()
    top1, top5, loss, count = totals
    count = max(count, 1.0)
    return {"accuracy": top1 / count, "top5": top5 / count, "loss": loss / count,
            "examples": int(totals[3])}


def distributed_train_dataset(strategy, source, config, seed, start_step):
    """Training batches from `start_step` on, one shard per input pipeline."""
    replicas = strategy.num_replicas_in_sync

    def dataset_fn(context):
        per_replica = context.get_per_replica_batch_size(config.batch_size)
        per_pipeline = replicas // context.num_input_pipelines
        return pipeline.make_train_dataset(
            source, config, per_replica, seed=seed,
            num_shards=context.num_input_pipelines, shard_index=context.input_pipeline_id,
            start_batch=start_step * per_pipeline,
        )

    return strategy.distribute_datasets_from_function(dataset_fn)


def distributed_eval_dataset(strategy, source, config):
    """The test split, one padded shard per input pipeline."""
    replicas = strategy.num_replicas_in_sync

    def dataset_fn(context):
        return pipeline.make_eval_dataset(
            source, config, context.get_per_replica_batch_size(config.batch_size),
            num_shards=context.num_input_pipelines, shard_index=context.input_pipeline_id,
            batches_per_step=replicas // context.num_input_pipelines,
        )

    return strategy.distribute_datasets_from_function(dataset_fn)


# ---------------------------------------------------------------------------
# The job.
# ---------------------------------------------------------------------------


def _versions():
    return {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "nfnet_keras": getattr(nfnet_keras, "__version__", "dev"),
    }


def _format(logs):
    return " ".join(f"{k} {v:.4g}" for k, v in logs.items() if k != "examples")


class _Progress:
    """Keras's progress bar on a terminal, else one line per epoch."""

    def __init__(self, verbose, steps_per_epoch):
        if verbose is None:
            verbose = 1 if sys.stdout.isatty() else 2
        self.verbose = verbose
        self.steps_per_epoch = steps_per_epoch
        self.bar = None

    def epoch_begin(self, epoch, epochs):
        self.bar = None
        if self.verbose == 1:
            print(f"Epoch {epoch + 1}/{epochs}")

    def step(self, step_in_epoch, logs):
        if self.verbose != 1:
            return
        if self.bar is None:  # the logs are running means already
            self.bar = keras.utils.Progbar(self.steps_per_epoch, stateful_metrics=list(logs))
        self.bar.update(step_in_epoch, list(logs.items()))

    def epoch_end(self, epoch, epochs, logs, val, seconds):
        if self.verbose:
            print(f"[epoch {epoch + 1}/{epochs}] {_format(logs)} | val {_format(val)} "
                  f"({seconds:.1f}s)", flush=True)


def _check_finite_epoch(logs, steps, epoch):
    if steps and logs.get("skipped_steps", 0.0) >= steps:
        raise TrainingError(
            f"All {steps} steps of epoch {epoch + 1} were skipped: the gradients were not "
            "finite (NaN/Inf). Lower the learning rate (--base_lr), check the data for bad "
            "values, or train in float32 (--precision=float32)."
        )


def run(options, argv=()):
    """Runs the job for `options` (the parsed flags); returns the summary."""
    previous_policy = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(options.precision)
    try:
        if options.mode == "eval":
            return _evaluate_only(options)
        return _train(options, argv)
    finally:
        keras.mixed_precision.set_global_policy(previous_policy)


def _setup(options):
    if options.deterministic:
        tf.config.experimental.enable_op_determinism()
    keras.utils.set_random_seed(options.seed)
    strategy = make_strategy(options.strategy, options.tpu)
    replicas = strategy.num_replicas_in_sync
    config = options.train_config
    if config.batch_size % replicas:
        raise ValueError(
            f"`--batch_size` (the global batch) must be divisible by the {replicas} replicas. "
            f"Received: batch_size={config.batch_size}"
        )
    if config.mixup_cutmix and (config.batch_size // replicas) % 2:
        raise ValueError(
            "MixUp/CutMix mix pairs within each replica's batch: `--batch_size` / replicas "
            f"must be even. Received: batch_size={config.batch_size}, {replicas} replicas"
        )
    source = datasets.get_source(
        config.dataset, options.data_dir, options.download,
        options.allow_empty_classes, options.skip_bad_images,
    )
    return strategy, config, source


def _evaluate_only(options):
    strategy, config, source = _setup(options)
    weights = options.weights
    with strategy.scope():
        if weights.endswith(".keras"):
            model = keras.models.load_model(weights)
        else:
            model, new_head = build_model(config, source.num_classes, weights)
            if new_head:
                raise ValueError(
                    f"`--weights` {weights} has no classifier for the {source.num_classes} "
                    f"classes of {config.dataset}."
                )
    eval_ds = distributed_eval_dataset(strategy, source, config)
    metrics = evaluate(eval_ds, make_eval_step(strategy, model, source.num_classes))
    print(f"[eval] {weights} on {config.dataset}: {json.dumps(metrics)}")
    return metrics


def _train(options, argv):
    strategy, config, source = _setup(options)
    cluster = checkpoints.Cluster(strategy)
    examples_per_step = pipeline.examples_per_batch(config, config.batch_size)
    steps_per_epoch = options.steps_per_epoch or max(1, source.num_train // examples_per_step)
    epochs = math.ceil(config.epochs)
    total_steps = int(config.epochs * steps_per_epoch)
    warmup_steps = int(config.warmup_epochs * steps_per_epoch)
    freeze_steps = int(config.freeze_backbone_epochs * steps_per_epoch) if options.weights else 0
    out = options.out
    fields = dataclasses.asdict(config)
    record = {
        "run": {
            **dataclasses.asdict(config),
            **{k: v for k, v in options.flag_values.items()
               if k not in NEUTRAL_OPTIONS and k not in fields and k != "config_overrides"},
            "num_classes": source.num_classes,
            "class_names": list(source.class_names),
            "steps_per_epoch": steps_per_epoch,
        },
        "strategy": options.strategy,
        "replicas": strategy.num_replicas_in_sync,
        "workers": cluster.num_workers,
        "versions": _versions(),
        "command": " ".join([sys.executable, "-m", "training.train", *argv]),
    }
    record = json.loads(json.dumps(record))  # as read back: tuples are lists
    error = None
    if cluster.is_chief:
        try:
            checkpoints.prepare(out, record, options.overwrite)
        except ValueError as e:
            error = e
    if not checkpoints.chief_agrees(strategy, cluster, error is None):
        raise error or ValueError("The chief worker refused to start this run; see its log.")
    print(
        f"[train] {config.model} on {config.dataset}: {source.num_train} train / "
        f"{source.num_test} test examples, {source.num_classes} classes; "
        f"{strategy.num_replicas_in_sync} replica(s) on {cluster.num_workers} worker(s), "
        f"batch {config.batch_size}, {epochs} epochs x {steps_per_epoch} steps, peak lr "
        f"{config.peak_lr:g}, AGC {config.agc_clipping}, EMA {config.ema_decay}, "
        f"{options.precision}" + (f", backbone frozen for {freeze_steps} steps" if freeze_steps else "")
        + (", NF blocks recomputed in the backward pass (remat)" if options.remat else ""),
        flush=True,
    )

    with strategy.scope():
        model, new_head = build_model(config, source.num_classes, options.weights, options.remat)
        if options.precision != "float32":
            # Float32 logits (Keras's mixed-precision guide): a stable loss,
            # and top-k metrics, which TensorFlow computes in float32 only.
            classifier(model).dtype_policy = "float32"
        compile_model(model, make_optimizer(config), config, new_head)
        optimizer = model.optimizer  # a LossScaleOptimizer around it for mixed_float16
        optimizer.build(model.trainable_variables)  # slots of every variable
        # Creates the metrics' variables outside the distributed step.
        x = tf.zeros((1, config.train_size, config.train_size, 3))
        y = tf.one_hot([0], source.num_classes)
        model.compute_metrics(x, y, model(x, training=False))
        model.reset_metrics()
        best = tf.Variable(-1.0, trainable=False, name="best_accuracy")
        # Steps run (optimizer.iterations does not count skipped steps).
        step_count = tf.Variable(0, trainable=False, dtype=tf.int64, name="step")
    if new_head:
        print(f"[train] new classifier for {source.num_classes} classes; backbone from "
              f"{options.weights}")
    # `model` tracks the weights; the random states of its dropout and
    # stochastic-depth layers (seed generators) are listed explicitly.
    ckpt = checkpoints.Checkpoints(out, cluster, model=model, optimizer=optimizer, best=best,
                                   step=step_count, model_state=list(model.non_trainable_variables))
    restored = ckpt.restore_latest()
    checkpoints.broadcast_from_chief(
        strategy, cluster,
        list(model.variables) + list(optimizer.variables) + [best, step_count],
    )
    start_step = int(step_count.numpy())
    if cluster.is_chief:
        checkpoints.write_json(os.path.join(out, checkpoints.CONFIG_FILE), record)
    if restored:
        print(f"[train] resuming from step {start_step} of {restored}", flush=True)

    iterator = iter(distributed_train_dataset(strategy, source, config, options.seed, start_step))
    eval_ds = distributed_eval_dataset(strategy, source, config)
    eval_step = make_eval_step(strategy, model, source.num_classes)
    ema = keras.callbacks.SwapEMAWeights() if config.ema_decay is not None else None
    if ema is not None:
        ema.set_model(model)
    writers = {}
    if cluster.is_chief:
        writers = {name: tf.summary.create_file_writer(os.path.join(out, "tensorboard", name))
                   for name in ("train", "validation")}

    def set_phase(step):
        frozen = step < freeze_steps
        set_backbone_trainable(model, not frozen)
        model.make_train_function(force=True)  # AGC for the trainable variables
        return make_train_step(strategy, model)

    train_step = set_phase(start_step)
    learning_rate = LearningRate(config, total_steps, warmup_steps, freeze_steps)
    progress = _Progress(options.verbose, steps_per_epoch)
    step = start_step
    logs, val = {}, {}
    train_seconds = 0.0
    for epoch in range(start_step // steps_per_epoch, epochs):
        end = min((epoch + 1) * steps_per_epoch, total_steps)
        if step >= end:
            continue
        model.reset_metrics()
        progress.epoch_begin(epoch, epochs)
        started = time.time()
        steps_this_epoch = 0
        while step < end:
            if step == freeze_steps > start_step:
                train_step = set_phase(step)
            optimizer.learning_rate = learning_rate(step)
            logs = {k: float(v) for k, v in train_step(iterator).items()}
            step += 1
            steps_this_epoch += 1
            progress.step(step - epoch * steps_per_epoch, logs)
            if step % config.checkpoint_every_steps == 0 and step < end:
                step_count.assign(step)
                ckpt.save(step)
        train_seconds += time.time() - started
        _check_finite_epoch(logs, steps_this_epoch, epoch)
        if ema is not None:
            ema.on_test_begin()
        val = evaluate(eval_ds, eval_step)
        if cluster.is_chief and val["accuracy"] > float(best.numpy()):
            model.save(os.path.join(out, "best.keras"))
        if ema is not None:
            ema.on_test_end()
        best.assign(max(float(best.numpy()), val["accuracy"]))
        step_count.assign(step)
        ckpt.save(step)  # after the evaluation, so a resume does not repeat it
        progress.epoch_end(epoch, epochs, logs, val, time.time() - started)
        if writers:
            lr = learning_rate(step - 1)
            for name, values in (("train", {**logs, "learning_rate": lr}), ("validation", val)):
                with writers[name].as_default(step=step):
                    for key, value in values.items():
                        tf.summary.scalar(key, value)
                writers[name].flush()

    if ema is not None:
        optimizer.finalize_variable_values(model.trainable_variables)
    metrics = evaluate(eval_ds, eval_step)
    print(f"[eval] {'EMA ' if config.ema_decay else ''}weights: {json.dumps(metrics)}")
    summary = {
        "precision": options.precision,
        "steps": step,
        "skipped_steps": step - int(optimizer.iterations.numpy()),
        "train_seconds": round(train_seconds, 1),
        "final_train_loss": logs.get("loss", float("nan")),
        "eval": metrics,
        "best_accuracy": float(best.numpy()),
    }
    if cluster.is_chief:
        weights_path = os.path.join(out, "model.weights.h5")
        model.save_weights(weights_path)
        model.save(os.path.join(out, "model.keras"))
        summary["weights"] = weights_path
        if not options.no_export:
            # Exports are float32 whatever the training precision.
            keras.mixed_precision.set_global_policy("float32")
            summary.update(export_and_reload(config, source, weights_path, out))
        checkpoints.write_json(os.path.join(out, checkpoints.SUMMARY_FILE), summary)
        print(f"[done] {json.dumps(summary)}")
    # The workers leave together, once the chief has written everything.
    checkpoints.chief_agrees(strategy, cluster, True)
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
    images, labels = next(iter(source.test(1, 0).batch(8)))
    images = tf.stack([config.eval_transform(i) for i in images])
    served = reloaded(images / 255.0, training=False).numpy()  # TF Hub images: [0, 1]
    model, _ = build_model(config, source.num_classes)
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
