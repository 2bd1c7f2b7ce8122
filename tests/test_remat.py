"""Gradient checkpointing (`remat=True`): the plain model's gradients with
drop path and dropout on, a `fit` step, the recomputation itself, XLA,
`.keras` reload, `from_preset` and the constructors' signature."""

import dataclasses
import inspect

import keras
import numpy as np
import pytest
import tensorflow as tf

import nfnet_keras
from conftest import randomize  # noqa: E402 - tests/ is on sys.path
from nfnet_keras.models import builder, get_architecture

# A tiny NFNet with two blocks in stage 1 (an identity shortcut) and timm's
# drop path (rescaled kept samples), and a row with DeepMind's.
TIMM_ROW = dataclasses.replace(
    get_architecture("nfnet_tiny"), depths=(1, 2, 1, 1), drop_path_schedule="timm"
)
SHAPE = (40, 48, 3)
BATCH = 8
# Per-tensor tolerance: ||g_remat - g_plain|| <= RTOL * ||g_plain||, float32.
RTOL = 1e-6


def pair(row=TIMM_ROW, **kwargs):
    """A plain model and a `remat=True` model with the same weights and the
    same seed-generator states (drop path rate 0.5, dropout 0.3)."""
    kwargs = dict(
        weights=None, input_shape=SHAPE, classes=5, classifier_activation=None,
        stochastic_depth_rate=0.5, dropout_rate=0.3, **kwargs,
    )
    plain = randomize(builder.build(row, **kwargs), seed=3)
    remat = builder.build(row, remat=True, **kwargs)
    remat.set_weights(plain.get_weights())
    for a, b in zip(generators(plain), generators(remat)):
        b.state.assign(a.state.value)
    return plain, remat


def generators(model):
    """The seed generators of drop path and dropout, in layer order."""
    return [layer.seed_generator for layer in model.layers if hasattr(layer, "seed_generator")]


def images(seed=0):
    return np.random.default_rng(seed).uniform(0, 255, (BATCH,) + SHAPE).astype("float32")


def gradients(model, x, target):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True) * target)
    return tape.gradient(loss, model.trainable_variables)


def relative_errors(got, expected, variables):
    return {
        v.path: float(np.linalg.norm(g - e) / np.linalg.norm(e))
        for g, e, v in zip(got, expected, variables)
        if np.linalg.norm(e) > 0
    }


def seed_states(model):
    return [keras.ops.convert_to_numpy(g.state.value).tolist() for g in generators(model)]


@pytest.mark.parametrize(
    "jit_compile", [None, pytest.param(True, marks=pytest.mark.slow)], ids=["eager", "xla"]
)
def test_remat_gradients_equal_the_plain_models(jit_compile):
    plain, remat = pair()
    x = images()
    target = np.random.default_rng(1).standard_normal((BATCH, 5)).astype("float32")

    def run(model):
        if jit_compile is None:
            return gradients(model, x, target)
        return tf.function(lambda: gradients(model, x, target), jit_compile=True)()

    expected = [g.numpy() for g in run(plain)]
    got = [g.numpy() for g in run(remat)]
    assert len(got) == len(plain.trainable_variables) and all(g is not None for g in got)
    errors = relative_errors(got, expected, plain.trainable_variables)
    assert len(errors) == len(got), "every weight gets a gradient"
    assert max(errors.values()) <= RTOL, sorted(errors.items(), key=lambda e: -e[1])[:3]
    # Same draws, and the generators moved on alike.
    assert seed_states(remat) == seed_states(plain)
    # The masks matter: the next draws give other gradients.
    again = [g.numpy() for g in run(plain)]
    assert max(relative_errors(again, expected, plain.trainable_variables).values()) > 1e-2


def test_remat_recomputes_each_block_once_in_the_backward_pass():
    _, model = pair()
    calls = {}

    def count(layer):
        call = layer.call

        def counted(*args, **kwargs):
            calls[layer.name] = calls.get(layer.name, 0) + 1
            return call(*args, **kwargs)

        layer.call = counted

    for layer in model.layers:
        if layer.name.endswith("conv0"):  # stem_conv0 and each block's conv0
            count(layer)
    x = images()
    target = np.ones((BATCH, 5), "float32")
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x, training=True) * target)
    forward = dict(calls)
    tape.gradient(loss, model.trainable_variables)
    blocks = [f"stage{s}_block{b}_conv0" for s, d in enumerate(TIMM_ROW.depths) for b in range(d)]
    assert forward == {"stem_conv0": 1, **{name: 1 for name in blocks}}
    # The backward pass ran every block's forward again, not the stem.
    assert calls == {"stem_conv0": 1, **{name: 2 for name in blocks}}
    # Inference runs the plain graph.
    calls.clear()
    model(x, training=False)
    assert calls == {"stem_conv0": 1, **{name: 1 for name in blocks}}


def test_remat_fit_step_equals_the_plain_models():
    # DeepMind's drop path (unscaled), AGC on, one step of Nesterov SGD.
    plain, remat = pair(get_architecture("nfnet_tiny"))
    x = images()
    y = np.arange(BATCH) % 5
    before = [w.numpy() for w in plain.trainable_weights]
    losses = []
    # The reference step runs eagerly (faster to set up), the remat step as
    # `fit` runs by default, in a graph function.
    for model, run_eagerly in ((plain, True), (remat, False)):
        model.compile(
            optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            run_eagerly=run_eagerly,
        )
        history = model.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)
        losses.append(history.history["loss"][0])
    assert losses[1] == pytest.approx(losses[0], rel=1e-6)
    for w_plain, w_remat, w0 in zip(plain.trainable_weights, remat.trainable_weights, before):
        moved = np.abs(w_plain.numpy() - w0).max()
        assert moved > 0, w_plain.path
        # The graph function's fused kernels round differently from eager
        # ops: equal to float32 rounding of the weights.
        np.testing.assert_allclose(
            w_remat.numpy(), w_plain.numpy(), rtol=0,
            atol=1e-6 * np.abs(w0).max() + 1e-3 * moved, err_msg=w_plain.path,
        )
    assert seed_states(remat) == seed_states(plain)


def test_remat_survives_keras_reload(tmp_path):
    _, model = pair()
    path = tmp_path / "remat.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert isinstance(loaded, nfnet_keras.NFModel) and loaded.remat is True
    assert loaded.get_config()["remat"] is True
    for a, b in zip(generators(model), generators(loaded)):  # unseeded: not saved
        b.state.assign(a.state.value)
    x = images()
    target = np.ones((BATCH, 5), "float32")
    expected = [g.numpy() for g in gradients(model, x, target)]
    got = [g.numpy() for g in gradients(loaded, x, target)]
    assert max(relative_errors(got, expected, model.trainable_variables).values()) <= RTOL


def test_from_preset_keeps_remat_and_the_pyramid():
    model = nfnet_keras.from_preset("nfnet_tiny", num_classes=3, weights=None, remat=True)
    assert model.remat is True
    assert list(model.pyramid_outputs) == ["P1", "P2", "P3", "P4", "P5"]


def test_remat_argument_is_checked():
    with pytest.raises(ValueError, match=r"`remat` must be True or False. Received: remat='yes'"):
        nfnet_keras.get_model("nfnet_tiny", weights=None, remat="yes")
    inputs = keras.Input((8,))
    with pytest.raises(ValueError, match=r"`remat=True` recomputes NF residual blocks"):
        nfnet_keras.NFModel(inputs, keras.layers.Dense(2)(inputs), remat=True)


def test_constructors_show_one_explicit_signature():
    expected = [
        ("include_top", True), ("weights", "imagenet"), ("input_tensor", None),
        ("input_shape", None), ("pooling", None), ("classes", 1000),
        ("classifier_activation", "softmax"), ("name", None), ("include_preprocessing", True),
        ("dropout_rate", None), ("stochastic_depth_rate", None), ("convention", None),
        ("agc_clipping", 0.01), ("use_se", None), ("activation", None), ("remat", False),
    ]
    for constructor in (nfnet_keras.NFNetF0, nfnet_keras.NFResNet50, nfnet_keras.ECANFNetL0):
        parameters = inspect.signature(constructor).parameters
        assert [(p.name, p.default) for p in parameters.values()] == expected
        assert "remat: `True` turns on gradient checkpointing" in constructor.__doc__
    with pytest.raises(TypeError, match=r"^NFNetF0\(\): got an unexpected keyword argument 'remats'"):
        nfnet_keras.NFNetF0(remats=True)
