"""Adaptive Gradient Clipping: the formula, and NFModel's training step."""

import os
import sys

import numpy as np
import pytest

import keras
import tensorflow as tf

import nfnet_keras
from nfnet_keras import agc

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# Shapes of every rank the rule handles, with no size-1 axis (so that the
# squeeze rule does not apply): scalar, vector, Dense (in, out), Conv1D
# (w, in, out), Conv2D HWIO, Conv3D DHWIO.
SHAPES = [(), (7,), (6, 5), (3, 4, 5), (3, 3, 4, 6), (2, 3, 3, 2, 4)]


def np_unitwise_norm(x):
    """Reference doc §7.2, written from the table."""
    if sum(d != 1 for d in x.shape) <= 1:
        return np.sqrt(np.sum(x.astype(np.float64) ** 2))
    axes = tuple(range(x.ndim - 1))
    return np.sqrt(np.sum(x.astype(np.float64) ** 2, axis=axes, keepdims=True))


def np_adaptive_clip(g, w, clipping, eps):
    """Reference doc §7.1, written from the formula."""
    max_norm = np.maximum(np_unitwise_norm(w), eps) * clipping
    g_norm = np_unitwise_norm(g)
    return np.where(g_norm > max_norm, g * max_norm / np.maximum(g_norm, 1e-6), g)


def random_pair(shape, seed, grad_scale=0.01):
    rng = np.random.RandomState(seed)
    w = np.asarray(rng.randn(*shape), "float32")
    # Per-unit gradient/weight norm ratios spread from 0.01 e^-2 to
    # 0.01 e^2 around the clipping factor 0.01: some units clipped, some not.
    scale = grad_scale * rng.permutation(np.exp(np.linspace(-2, 2, shape[-1]))) if shape else grad_scale
    g = np.asarray(rng.randn(*shape) * scale, "float32")
    return g, w


@pytest.mark.parametrize("shape", SHAPES)
def test_unitwise_norm_matches_numpy(shape):
    x = np.asarray(np.random.RandomState(0).randn(*shape), "float32")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(agc.unitwise_norm(x)), np_unitwise_norm(x), rtol=1e-6)


def test_unitwise_norm_squeezed_vectors_are_one_unit():
    x = np.arange(1.0, 6.0, dtype="float32").reshape(1, 5)  # e.g. a Dense(in=1)
    assert keras.ops.convert_to_numpy(agc.unitwise_norm(x)).shape == ()
    np.testing.assert_allclose(agc.unitwise_norm(x), np.sqrt(55.0), rtol=1e-6)
    assert agc.num_units((1, 5)) == 1 and agc.num_units((3, 3, 4, 6)) == 6


def test_unitwise_norm_rejects_unhandled_rank():
    with pytest.raises(ValueError, match=r"\(2, 2, 2, 2, 2, 2\)"):
        agc.unitwise_norm(np.ones((2,) * 6, "float32"))


@pytest.mark.parametrize("shape", SHAPES)
def test_adaptive_clip_matches_numpy_and_invariants(shape):
    g, w = random_pair(shape, seed=len(shape))
    clipping, eps = 0.01, 1e-3
    out = keras.ops.convert_to_numpy(agc.adaptive_clip(g, w, clipping, eps))
    np.testing.assert_allclose(out, np_adaptive_clip(g, w, clipping, eps), rtol=1e-6, atol=1e-9)
    # Every unit ends within clipping * max(|W|, eps).
    bound = np.maximum(np_unitwise_norm(w), eps) * clipping
    assert np.all(np_unitwise_norm(out) <= bound * (1 + 1e-5))
    # Clipping twice changes nothing.
    twice = keras.ops.convert_to_numpy(agc.adaptive_clip(out, w, clipping, eps))
    np.testing.assert_allclose(twice, out, rtol=1e-6, atol=1e-9)
    if len(shape) >= 2:  # both branches exercised
        clipped = np.squeeze(np_unitwise_norm(g) > bound)
        assert clipped.any() and not clipped.all()


def test_adaptive_clip_matches_timm():
    from _timm import torch
    from timm.utils.agc import adaptive_clip_grad

    for shape in SHAPES:
        g, w = random_pair(shape, seed=10 + len(shape))
        # Keras keeps the output unit last, PyTorch first (OIHW, (out, in)).
        perm = (len(shape) - 1,) + tuple(range(len(shape) - 1)) if len(shape) >= 2 else None
        to_torch = (lambda a: a) if perm is None else (lambda a: np.transpose(a, perm))
        p = torch.nn.Parameter(torch.from_numpy(np.array(to_torch(w))))
        p.grad = torch.from_numpy(np.array(to_torch(g)))
        adaptive_clip_grad([p], clip_factor=0.01, eps=1e-3)
        expected = p.grad.numpy() if perm is None else np.transpose(p.grad.numpy(), np.argsort(perm))
        out = keras.ops.convert_to_numpy(agc.adaptive_clip(g, w, 0.01, 1e-3))
        np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-9, err_msg=str(shape))


def test_adaptive_clip_list_form_and_errors():
    g, w = random_pair((4, 3), seed=3)
    out = agc.adaptive_clip([g, None], [w, w])
    assert out[1] is None
    np.testing.assert_allclose(out[0], np_adaptive_clip(g, w, 0.01, 1e-3), rtol=1e-6)
    with pytest.raises(ValueError, match="clipping"):
        agc.adaptive_clip(g, w, clipping=0.0)
    with pytest.raises(ValueError, match="eps"):
        agc.adaptive_clip(g, w, eps=-1.0)
    with pytest.raises(ValueError, match="same length"):
        agc.adaptive_clip([g], [w, w])
    with pytest.raises(ValueError, match="same shape"):
        agc.adaptive_clip(g, w.T)
    # float16 gradients are clipped in float32 and returned as float16.
    out16 = agc.adaptive_clip(tf.constant(g, tf.float16), w)
    assert out16.dtype == tf.float16
    np.testing.assert_allclose(
        np.asarray(out16, np.float32),
        np_adaptive_clip(g.astype(np.float16).astype(np.float32), w, 0.01, 1e-3),
        rtol=2e-3,
    )


# --------------------------------------------------------------------------
# NFModel
# --------------------------------------------------------------------------


def hand_model(agc_clipping=0.01, l2=0.0, **kwargs):
    """Dense model with a hidden layer and a `predictions` head."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((6,))
    reg = keras.regularizers.L2(l2) if l2 else None
    h = keras.layers.Dense(5, activation="tanh", kernel_regularizer=reg, name="hidden")(inputs)
    outputs = keras.layers.Dense(3, name="predictions")(h)
    return agc.NFModel(inputs, outputs, agc_clipping=agc_clipping, **kwargs)


def hand_data(n=8, seed=0):
    rng = np.random.RandomState(seed)
    return rng.randn(n, 6).astype("float32") * 3, rng.randint(0, 3, n), rng.uniform(0.5, 2, n).astype("float32")


def test_fit_step_is_sgd_on_agc_of_the_gradient():
    """One fit step == w - lr * AGC(grad), head kernel unclipped, metrics exact."""
    lr, l2 = 0.5, 0.01
    model = hand_model(l2=l2)
    model.compile(optimizer=keras.optimizers.SGD(lr), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y, sw = hand_data()
    w0 = [v.numpy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:  # the loss written out by hand
        logits = model(x, training=True)
        ce = tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits)
        loss = tf.reduce_sum(sw * ce) / len(x) + l2 * tf.reduce_sum(tf.square(model.get_layer("hidden").kernel))
    grads = [g.numpy() for g in tape.gradient(loss, model.trainable_variables)]
    logs = model.fit(x, y, sample_weight=sw, batch_size=len(x), epochs=1, verbose=0).history
    paths = [v.path for v in model.trainable_variables]
    total, clipped = 0, 0
    for path, w, g, v in zip(paths, w0, grads, model.trainable_variables):
        if path == "predictions/kernel":
            expected_g = g
        else:
            expected_g = np_adaptive_clip(g, w, 0.01, 1e-3)
            units = np.squeeze(np_unitwise_norm(g) > np.maximum(np_unitwise_norm(w), 1e-3) * 0.01)
            total += units.size
            clipped += int(np.sum(units))
        np.testing.assert_allclose(v.numpy(), w - lr * expected_g, rtol=1e-5, atol=1e-6, err_msg=path)
    assert clipped > 0
    assert logs["agc_clip_fraction"][0] == pytest.approx(clipped / total, abs=1e-6)
    global_norm = np.sqrt(sum(np.sum(g.astype(np.float64) ** 2) for g in grads))
    assert logs["grad_norm"][0] == pytest.approx(global_norm, rel=1e-5)
    assert logs["skipped_steps"][0] == 0.0
    assert logs["loss"][0] == pytest.approx(float(loss), rel=1e-5)


def test_class_weight_equals_sample_weight_and_agc_off():
    x, y, _ = hand_data()
    class_weight = {0: 2.0, 1: 0.5, 2: 1.0}
    results = []
    for kwargs in ({"class_weight": class_weight}, {"sample_weight": np.array([class_weight[c] for c in y], "float32")}):
        model = hand_model()
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        model.fit(x, y, batch_size=len(x), epochs=1, verbose=0, **kwargs)
        results.append(model.get_weights())
    for a, b in zip(*results):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    # agc_clipping=None: plain SGD, but the metrics and guard are still there.
    model = hand_model(agc_clipping=None)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    w0 = [v.numpy() for v in model.trainable_variables]
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, model(x)))
    grads = tape.gradient(loss, model.trainable_variables)
    logs = model.fit(x, y, batch_size=len(x), epochs=1, verbose=0).history
    for v, w, g in zip(model.trainable_variables, w0, grads):
        np.testing.assert_allclose(v.numpy(), w - 0.5 * g.numpy(), rtol=1e-5, atol=1e-6)
    assert "agc_clip_fraction" in logs and logs["grad_norm"][0] > 0


def test_gradient_accumulation_clips_the_accumulated_gradient():
    """2 micro-batches of 4 accumulated == 1 batch of 8 (AGC active)."""
    x, y, _ = hand_data()
    weights = []
    for accumulate in (None, 2):
        model = hand_model(agc_clipping=0.002)
        model.compile(
            optimizer=keras.optimizers.SGD(0.5, gradient_accumulation_steps=accumulate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
        logs = model.fit(x, y, batch_size=8 if accumulate is None else 4, epochs=1, shuffle=False, verbose=0).history
        assert logs["agc_clip_fraction"][0] > 0
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_exclusions_by_name_object_and_errors():
    model = hand_model(agc_exclude=["predictions"])
    assert {v.path for v in model._agc_excluded_variables()} == {"predictions/kernel", "predictions/bias"}
    hidden_kernel = model.get_layer("hidden").kernel
    model.compile(agc_exclude=[hidden_kernel], optimizer="sgd", loss="mse")
    assert model.agc_exclude == ("hidden/kernel",)
    assert model.get_config()["agc_exclude"] == ["hidden/kernel"]
    default = hand_model()
    assert [v.path for v in default._agc_excluded_variables()] == ["predictions/kernel"]
    with pytest.raises(ValueError, match="matches no trainable variable"):
        hand_model(agc_exclude=["nope"])._agc_excluded_variables()
    with pytest.raises(TypeError, match="agc_exclude"):
        hand_model(agc_exclude=[3])
    with pytest.raises(ValueError, match="clipping"):
        hand_model(agc_clipping=-1.0)


def test_non_finite_gradient_skips_the_step():
    model = hand_model()
    model.compile(optimizer=nfnet_keras.NFSGD(0.1, use_ema=True, ema_momentum=0.9), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    x, y, _ = hand_data()
    model.fit(x, y, batch_size=8, epochs=1, verbose=0)  # one good step
    before = model.get_weights()
    ema_before = [v.numpy() for v in model.optimizer._model_variables_moving_average]
    x_bad = x.copy()
    x_bad[3, 2] = np.nan
    logs = model.fit(x_bad, y, batch_size=8, epochs=1, verbose=0).history
    assert logs["skipped_steps"][0] == 1.0
    assert int(model.optimizer.iterations.numpy()) == 1
    for a, b in zip(before, model.get_weights()):
        np.testing.assert_array_equal(a, b)
    for a, v in zip(ema_before, model.optimizer._model_variables_moving_average):
        np.testing.assert_array_equal(a, v.numpy())


@pytest.fixture
def mixed_float16():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    yield
    keras.mixed_precision.set_dtype_policy("float32")


def test_mixed_float16_clips_unscaled_gradient(mixed_float16):
    """Same data: the fp16 + loss-scaling update equals the fp32 one to fp16 accuracy."""
    x, y, _ = hand_data()
    x = x / 3
    model16 = hand_model(agc_clipping=0.002)
    keras.mixed_precision.set_dtype_policy("float32")
    model32 = hand_model(agc_clipping=0.002)
    updates = []
    for model in (model32, model16):
        model.compile(optimizer=keras.optimizers.SGD(0.5), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        w0 = model.get_weights()
        logs = model.fit(x, y, batch_size=8, epochs=1, verbose=0).history
        assert logs["skipped_steps"][0] == 0.0 and logs["agc_clip_fraction"][0] > 0
        updates.append([w1 - w for w1, w in zip(model.get_weights(), w0)])
    assert isinstance(model16.optimizer, keras.optimizers.LossScaleOptimizer)
    for u32, u16 in zip(*updates):
        np.testing.assert_allclose(u16, u32, atol=2e-3 * np.max(np.abs(u32)) + 1e-7)
    # Overflow: skipped, scale halved, weights unchanged.
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    before = model16.get_weights()
    scale = float(model16.optimizer.dynamic_scale.numpy())
    logs = model16.fit(x * 1e6, y, batch_size=8, epochs=1, verbose=0).history
    assert logs["skipped_steps"][0] == 1.0
    assert float(model16.optimizer.dynamic_scale.numpy()) == scale / 2
    for a, b in zip(before, model16.get_weights()):
        np.testing.assert_array_equal(a, b)


def test_save_load_round_trip_keeps_agc_settings(tmp_path):
    model = nfnet_keras.NFNet("tiny", weights=None, include_preprocessing=False, input_shape=(32, 32, 3), classes=10, agc_clipping=0.02)
    assert model.agc_clipping == 0.02 and model.agc_eps == 1e-3 and model.agc_exclude is None
    model.compile(agc_eps=2e-3, agc_exclude=["predictions", "stem_conv0/gain"], optimizer=nfnet_keras.NFSGD(0.01), loss="sparse_categorical_crossentropy")
    model.optimizer.build(model.trainable_variables)  # saved with its state
    x = np.random.RandomState(0).randn(4, 32, 32, 3).astype("float32")
    path = tmp_path / "tiny.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert type(loaded) is agc.NFModel
    assert (loaded.agc_clipping, loaded.agc_eps, loaded.agc_exclude) == (0.02, 2e-3, ("predictions", "stem_conv0/gain"))
    # NFModel.compile wraps the optimizer (as loss scaling does); the wrapped
    # optimizer, its class and its state come back.
    assert isinstance(loaded.optimizer, nfnet_keras.AGCOptimizer)
    assert isinstance(loaded.optimizer.inner_optimizer, nfnet_keras.NFSGD)
    assert float(loaded.optimizer.inner_optimizer.learning_rate.numpy()) == pytest.approx(0.01)
    for a, b in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(model.predict(x, verbose=0), loaded.predict(x, verbose=0))
    off = agc.NFModel.from_config(hand_model(agc_clipping=None).get_config())
    assert off.agc_clipping is None


def test_tiny_nfnet_fits_small_dataset_and_head_kernel_never_clipped(monkeypatch):
    clipped_shapes = []
    original = agc._clip_one

    def spy(gradient, variable, clipping, eps):
        clipped_shapes.append(tuple(variable.shape))
        return original(gradient, variable, clipping, eps)

    monkeypatch.setattr(agc, "_clip_one", spy)
    keras.utils.set_random_seed(0)
    model = nfnet_keras.NFNet("tiny", weights=None, include_preprocessing=False, input_shape=(32, 32, 3), classes=10, stochastic_depth_rate=0.0, classifier_activation=None)
    model.compile(optimizer=nfnet_keras.NFSGD(0.1, weight_decay=None), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.RandomState(0)
    x = rng.randn(16, 32, 32, 3).astype("float32")
    y = np.arange(16) % 10
    logs = model.fit(x, y, batch_size=16, epochs=60, verbose=0).history
    assert logs["loss"][-1] < 0.05 * logs["loss"][0]
    assert max(logs["agc_clip_fraction"]) > 0
    # Traced once per distinct shape: the head kernel (128, 10) is never
    # clipped, its bias (10,) is (reference doc §7.3).
    assert (128, 10) not in clipped_shapes
    assert (10,) in clipped_shapes and (1, 1, 64, 128) in clipped_shapes


def test_compile_wraps_without_touching_the_users_optimizer():
    x, y, _ = hand_data()
    model = hand_model(agc_clipping=0.002)
    sgd = keras.optimizers.SGD(0.5, momentum=0.9)
    class_update_step = type(sgd).update_step
    model.compile(optimizer=sgd, loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert isinstance(model.optimizer, agc.AGCOptimizer) and model.optimizer.inner_optimizer is sgd
    model.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    assert "update_step" not in vars(sgd)  # no method replaced on the instance
    assert type(sgd).update_step is class_update_step
    # The user's optimizer holds the training state.
    assert int(sgd.iterations.numpy()) == int(model.optimizer.iterations.numpy()) == 2
    assert any(np.abs(m.numpy()).max() > 0 for m in sgd.momentums)
