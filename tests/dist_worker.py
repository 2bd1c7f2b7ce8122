"""Distributed AGC checks, run in a fresh process by tests/test_distributed.py.

Logical CPU devices must be configured before TensorFlow initialises, so
these checks cannot run inside the pytest process. Each mode prints one
line ``RESULT <json>`` on stdout.

Modes:
  mirrored        1 device vs MirroredStrategy on 2 logical CPUs: same
                  weights after 3 fit steps with AGC active; plus the same
                  run with the clipping done per replica (must differ).
  mirrored_fp16   mixed_float16 + loss scaling, 2 replicas, an overflow on
                  replica 1 only: the step must be skipped everywhere.
  mwms INDEX      one worker of a 2-process MultiWorkerMirroredStrategy
                  (TF_CONFIG set by the caller), driving NFModel.train_step
                  from a minimal loop (Keras 3.15 `fit` does not run under
                  this strategy, env-findings §4).
  single          the 1-device reference of the mwms run.

Every mode runs the hand-built NF model of `small_nf_model` (fast to
trace); the trainer's multi-worker test in test_distributed.py runs the
tiny NFNet.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

MODE = sys.argv[1]
if MODE.startswith("mirrored"):
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
tf.config.threading.set_intra_op_parallelism_threads(1)
tf.config.threading.set_inter_op_parallelism_threads(2)

import keras  # noqa: E402

import nfnet_keras  # noqa: E402
from nfnet_keras import agc  # noqa: E402

GLOBAL_BATCH = 8
STEPS = 3
# Small enough that many units are clipped at every step.
CLIPPING = 0.002
INITIAL_SCALE = 2.0**7


def data(steps=STEPS):
    rng = np.random.RandomState(1)
    x = rng.randn(GLOBAL_BATCH * steps, 32, 32, 3).astype("float32")
    y = (np.arange(GLOBAL_BATCH * steps) * 7) % 10
    return x, y


def small_nf_model(agc_clipping):
    """A hand-built NF model: WS convs, a skip gain, SE-free, fast to trace."""
    inputs = keras.Input((32, 32, 3))
    h = nfnet_keras.ScaledStdConv2D(8, 3, strides=4, padding="same", name="stem")(inputs)
    h = nfnet_keras.GammaAct("gelu", name="act")(h)
    r = nfnet_keras.ScaledStdConv2D(8, 3, padding="same", name="conv")(h)
    r = nfnet_keras.SkipGain(0.2, gain_initializer="ones", name="skip_gain")(r)
    h = keras.layers.Add()([h, r])
    h = keras.layers.GlobalAveragePooling2D()(h)
    outputs = keras.layers.Dense(10, activation="softmax", name="predictions")(h)
    return agc.NFModel(inputs, outputs, agc_clipping=agc_clipping)


def build(model_cls=None):
    keras.utils.set_random_seed(0)
    model = small_nf_model(CLIPPING)
    if model_cls is not None:  # same graph and weights, other train_step
        return model_cls(model.inputs, model.outputs, agc_clipping=None)
    return model


OPTIMIZER = "sgd"


def compile_model(model):
    if OPTIMIZER == "nfsgd":  # the paper's optimizer, decay and warm-up EMA
        optimizer = nfnet_keras.NFSGD(0.5, weight_decay=1e-3, use_ema=True, ema_momentum=0.9)
    else:
        optimizer = keras.optimizers.SGD(0.5, momentum=0.9)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")


class PerReplicaAGC(agc.NFModel):
    """The common mistake: clip in train_step, before optimizer.apply."""

    def train_step(self, data):
        x, y = data
        with tf.GradientTape() as tape:
            loss = self.compute_loss(x=x, y=y, y_pred=self(x, training=True))
        variables = self.trainable_variables
        grads = tape.gradient(loss, variables)
        exclude = {id(v) for v in self._agc_excluded_variables()}
        grads = [
            g if id(v) in exclude else agc.adaptive_clip(g, v, CLIPPING)
            for g, v in zip(grads, variables)
        ]
        self.optimizer.apply(grads, variables)
        return {"loss": loss}


def fit(model_cls=None, strategy=None):
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = build(model_cls)
        compile_model(model)
    x, y = data()
    history = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
    return model, history.history


def max_diff(a, b):
    return float(max(np.max(np.abs(u - v)) for u, v in zip(a.get_weights(), b.get_weights())))


def mirrored():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    ref, ref_logs = fit()
    two, two_logs = fit(strategy=strategy)
    naive, _ = fit(PerReplicaAGC, strategy=strategy)
    global OPTIMIZER
    OPTIMIZER = "nfsgd"
    ema_ref, _ = fit()
    ema_two, _ = fit(strategy=strategy)
    ema_diff = max(
        float(np.max(np.abs(a.numpy() - b.numpy())))
        for a, b in zip(
            ema_ref.optimizer._model_variables_moving_average + ema_ref.optimizer.momentums,
            ema_two.optimizer._model_variables_moving_average + ema_two.optimizer.momentums,
        )
    )
    return {
        "replicas": strategy.num_replicas_in_sync,
        "max_diff_2_replicas": max_diff(ref, two),
        "max_diff_per_replica_clipping": max_diff(ref, naive),
        "nfsgd_ema_max_diff_2_replicas": max(ema_diff, max_diff(ema_ref, ema_two)),
        "nfsgd_ema_moved": max_diff(ema_ref, build()),
        "max_weight_change": max_diff(ref, build()),
        "clip_fraction_1": ref_logs["agc_clip_fraction"][-1],
        "clip_fraction_2": two_logs["agc_clip_fraction"][-1],
        "grad_norm_1": ref_logs["grad_norm"][-1],
        "grad_norm_2": two_logs["grad_norm"][-1],
        "loss_1": ref_logs["loss"][-1],
        "loss_2": two_logs["loss"][-1],
    }


def mirrored_fp16():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    x, y = data(steps=1)
    # Replica 1 gets the second half of the global batch; large inputs make
    # its float16 forward pass overflow, replica 0's stays finite.
    x[GLOBAL_BATCH // 2 :] *= 1e5
    def optimizer():
        # A moderate initial scale, so that replica 0's float16 backward pass
        # stays finite (at Keras's 2**15 this model overflows everywhere).
        return keras.optimizers.LossScaleOptimizer(
            keras.optimizers.SGD(0.5, momentum=0.9), initial_scale=INITIAL_SCALE
        )

    with strategy.scope():
        model = build()
        model.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy")
        stock = keras.Model(model.inputs, model.outputs)  # Keras's own train_step
        stock.compile(optimizer=optimizer(), loss="sparse_categorical_crossentropy")
    before = [w.copy() for w in model.get_weights()]
    logs = model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0).history
    after = model.get_weights()
    result = {
        "replicas": strategy.num_replicas_in_sync,
        "is_loss_scale_optimizer": isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer),
        "weights_unchanged": all(np.array_equal(a, b) for a, b in zip(before, after)),
        "skipped_steps": logs["skipped_steps"][-1],
        "loss_scale": float(model.optimizer.dynamic_scale.numpy()),
        "iterations": int(model.optimizer.iterations.numpy()),
    }
    stock.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, shuffle=False, verbose=0)
    result["stock_keras_weights_finite"] = bool(
        all(np.all(np.isfinite(w)) for w in stock.get_weights())
    )
    return result


def custom_loop(strategy, worker_index, num_workers):
    """NFModel.train_step driven by hand; worker i feeds its slice of the batch."""
    with strategy.scope():
        model = build()
        compile_model(model)
        model.optimizer.build(model.trainable_variables)
    model.make_train_function()  # installs AGC on the optimizer
    x, y = data()
    local = GLOBAL_BATCH // num_workers

    @tf.function
    def step(xb, yb):
        return strategy.run(model.train_step, args=((xb, yb),))

    losses = []
    for s in range(STEPS):
        lo = s * GLOBAL_BATCH + worker_index * local
        logs = step(tf.constant(x[lo : lo + local]), tf.constant(y[lo : lo + local]))
        losses.append(float(strategy.experimental_local_results(logs["loss"])[0]))
    clip = strategy.experimental_local_results(logs["agc_clip_fraction"])[0]
    return model, {"losses": losses, "clip_fraction": float(clip)}


def main():
    if MODE == "mirrored":
        result = mirrored()
    elif MODE == "mirrored_fp16":
        result = mirrored_fp16()
    elif MODE in ("mwms", "single"):
        if MODE == "mwms":
            index = int(sys.argv[2])
            strategy = tf.distribute.MultiWorkerMirroredStrategy()
            model, result = custom_loop(strategy, index, 2)
        else:
            model, result = custom_loop(tf.distribute.get_strategy(), 0, 1)
        np.savez(sys.argv[-1], *model.get_weights())
    else:
        raise SystemExit(f"unknown mode {MODE!r}")
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
