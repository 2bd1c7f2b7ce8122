"""NFSGD against a NumPy transcription of the reference update (doc §8.1)."""

import numpy as np
import pytest

import keras

import nfnet_keras
from nfnet_keras import agc
from nfnet_keras.optimizers import NFSGD, ema_decay


@keras.saving.register_keras_serializable(package="nfnet_keras_tests")
class RampSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A learning rate that changes every step: 0.05 * (1 + t) / (3 + t)."""

    def __call__(self, step):
        t = keras.ops.cast(step, "float32")
        return 0.05 * (1.0 + t) / (3.0 + t)

    def get_config(self):
        return {}


def ramp(t):
    return 0.05 * (1.0 + t) / (3.0 + t)


def make_variables():
    rng = np.random.RandomState(0)
    return [
        keras.Variable(rng.randn(3, 4).astype("float32"), name="kernel"),
        keras.Variable(rng.randn(4).astype("float32"), name="bias"),
        keras.Variable(rng.randn(4).astype("float32"), name="gain"),
    ]


def gradients(steps=10):
    rng = np.random.RandomState(1)
    return [[rng.randn(3, 4).astype("float32"), rng.randn(4).astype("float32"), rng.randn(4).astype("float32")] for _ in range(steps)]


def np_sgd(params, grads_per_step, lr_fn, momentum, nesterov, wd, decay_mask):
    """deepmind-research `nfnets/optim.py` SGD.update_param, in NumPy."""
    params = [p.astype(np.float64) for p in params]
    moms = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(grads_per_step):
        lr = lr_fn(t)
        for i, g in enumerate(grads):
            g = g.astype(np.float64)
            if wd is not None and decay_mask[i]:
                g = g + params[i] * wd
            moms[i] = momentum * moms[i] + g
            step = g + momentum * moms[i] if nesterov else moms[i]
            params[i] = params[i] - lr * step
    return params


@pytest.mark.parametrize("nesterov", [True, False])
def test_matches_reference_update_with_changing_learning_rate(nesterov):
    variables = make_variables()
    p0 = [v.numpy() for v in variables]
    opt = NFSGD(RampSchedule(), momentum=0.9, nesterov=nesterov, weight_decay=0.05)
    grads = gradients()
    for step in grads:
        opt.apply(step, variables)
    # Weight decay only on the kernel: "bias" and "gain" are excluded.
    expected = np_sgd(p0, grads, ramp, 0.9, nesterov, 0.05, [True, False, False])
    for v, e in zip(variables, expected):
        np.testing.assert_allclose(v.numpy(), e, rtol=1e-6, atol=1e-6)
    # Keras's SGD(nesterov=True) is another algorithm under a changing lr
    # (reference doc §8.4): the comparison above can tell them apart.
    keras_vars = make_variables()
    keras_opt = keras.optimizers.SGD(RampSchedule(), momentum=0.9, nesterov=nesterov)
    for step in grads:
        keras_opt.apply(step, keras_vars)
    no_decay = np_sgd(p0, grads, ramp, 0.9, nesterov, None, [False] * 3)
    assert np.max(np.abs(keras_vars[0].numpy() - no_decay[0])) > 1e-3


def test_ema_warmup_matches_formula():
    variables = make_variables()
    p0 = [v.numpy().astype(np.float64) for v in variables]
    opt = NFSGD(0.1, momentum=0.9, weight_decay=None, use_ema=True, ema_momentum=0.999)
    ema = [p.copy() for p in p0]  # the reference starts its EMA at the initial params
    for t, step in enumerate(gradients()):
        opt.apply(step, variables)
        d = min(0.999, (1.0 + t) / (10.0 + t))
        ema = [d * e + (1 - d) * v.numpy() for e, v in zip(ema, variables)]
    for average, e in zip(opt._model_variables_moving_average, ema):
        np.testing.assert_allclose(average.numpy(), e, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        [float(ema_decay(t, 0.99999)) for t in (0, 1, 10, 10**6)],
        [0.1, 2 / 11, 11 / 20, 0.99999], rtol=1e-6,
    )
    assert float(ema_decay(0, 0.9, warmup=False)) == pytest.approx(0.9)


def test_config_round_trip_and_errors():
    opt = NFSGD(0.2, momentum=0.8, nesterov=False, weight_decay=1e-4, use_ema=True, ema_warmup=False)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(clone, NFSGD)
    for key in ("learning_rate", "momentum", "nesterov", "weight_decay", "use_ema", "ema_momentum", "ema_warmup"):
        assert clone.get_config()[key] == opt.get_config()[key]
    with pytest.raises(ValueError, match="momentum"):
        NFSGD(momentum=1.5)
    with pytest.raises(ValueError, match="weight_decay"):
        NFSGD(weight_decay=-1.0)


def test_agc_runs_before_decay_and_momentum_in_fit():
    """First step of NFModel.fit with NFSGD: w - lr * (1 + mu) * (AGC(g) + wd * w)."""
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    h = keras.layers.Dense(5, activation="tanh", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, name="predictions")(h)
    model = agc.NFModel(inputs, outputs)
    lr, mu, wd = 0.3, 0.9, 0.01
    model.compile(optimizer=NFSGD(lr, momentum=mu, weight_decay=wd), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.RandomState(0)
    x, y = rng.randn(8, 6).astype("float32") * 3, rng.randint(0, 3, 8)
    w0 = [v.numpy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x)))
    grads = [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    for v, w, g in zip(model.trainable_variables, w0, grads):
        if v.path != "predictions/kernel":
            g = keras.ops.convert_to_numpy(agc.adaptive_clip(g, w, 0.01, 1e-3))
        if "bias" not in v.path:
            g = g + wd * w
        np.testing.assert_allclose(v.numpy(), w - lr * (1 + mu) * g, rtol=1e-5, atol=1e-6, err_msg=v.path)


def test_swap_ema_weights_evaluates_the_average():
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    outputs = keras.layers.Dense(3, name="predictions")(inputs)
    model = agc.NFModel(inputs, outputs)
    model.compile(optimizer=nfnet_keras.NFSGD(0.1, use_ema=True, ema_momentum=0.5), loss="mse")
    rng = np.random.RandomState(0)
    x, y = rng.randn(16, 6).astype("float32"), rng.randn(16, 3).astype("float32")
    model.fit(x, y, batch_size=8, epochs=2, verbose=0)  # fit ends with the EMA written in
    ema = [v.numpy() for v in model.optimizer._model_variables_moving_average]
    for w, e in zip(model.get_weights(), ema):
        np.testing.assert_array_equal(w, e)
    swap = keras.callbacks.SwapEMAWeights()
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0, validation_data=(x, y), callbacks=[swap])
    expected_val = np.mean((x @ model.optimizer._model_variables_moving_average[0].numpy() + model.optimizer._model_variables_moving_average[1].numpy() - y) ** 2)
    assert history.history["val_loss"][0] == pytest.approx(expected_val, rel=1e-5)
