"""FreezeOut: the reference schedule, per-group learning rates, frozen
variables that stay bit-identical, and the pruned backward pass."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

import nfnet_keras
from nfnet_keras.callbacks import FreezeOut, freeze_points, layer_groups, lr_multiplier


def test_schedule_table_is_the_reference():
    # ajbrock/FreezeOut: t_i = (t0 + (1 - t0) i / L) ** 3 with t0 "pre-cubed".
    points = freeze_points(6, t0=0.8, scaling="cubic")
    assert points[0] == pytest.approx(0.512)
    assert points == pytest.approx([(0.8 + 0.2 * i / 5) ** 3 for i in range(6)])
    assert points[-1] == 1.0
    assert freeze_points(3, t0=0.5, scaling="linear") == pytest.approx([0.5, 0.75, 1.0])
    assert freeze_points(3, t0=0.5, scaling="squared") == pytest.approx([0.25, 0.5625, 1.0])
    # Scaled: lr_i(0) = lr / t_i, cosine to 0 at t_i; unscaled starts at lr.
    assert lr_multiplier(0.0, 0.512) == pytest.approx(1 / 0.512)
    assert lr_multiplier(0.256, 0.512) == pytest.approx(0.5 / 0.512)
    assert lr_multiplier(0.512, 0.512) == 0.0
    assert lr_multiplier(0.0, 0.512, scale_lr=False) == 1.0
    with pytest.raises(ValueError, match="`scaling` must be one of"):
        FreezeOut(scaling="quartic")
    with pytest.raises(ValueError, match=r"`t0` must be a float in \(0, 1\]"):
        FreezeOut(t0=0.0)


def small_model(model_class=keras.Model):
    """Stem, two blocks and a head, named like the package's models."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", name="stem_conv")(inputs)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stage0_block0_conv")(x)
    x = keras.layers.Conv2D(4, 3, padding="same", activation="relu", name="stage0_block1_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, name="predictions")(x)
    return model_class(inputs, outputs)


def data(n=16, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 8, 8, 3)).astype("float32"), rng.integers(0, 3, n)


LOSS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def test_each_group_gets_its_own_learning_rate():
    model = small_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    x, y = data()
    with tf.GradientTape() as tape:
        loss = LOSS(y, model(x))
    grads = {v.path: g.numpy() for v, g in zip(model.trainable_variables,
                                                tape.gradient(loss, model.trainable_variables))}
    before = {v.path: v.numpy() for v in model.trainable_variables}
    groups = layer_groups(model)
    assert [[l.name for l in g] for g in groups] == [
        ["stem_conv"], ["stage0_block0_conv"], ["stage0_block1_conv"], ["predictions"]]

    model.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0, callbacks=[FreezeOut()])

    t = freeze_points(4)  # t = 0 at the only step: lr_i = 0.1 / t_i
    for i, group in enumerate(groups):
        for variable in group[0].trainable_weights:
            step = variable.numpy() - before[variable.path]
            np.testing.assert_allclose(step, -0.1 / t[i] * grads[variable.path], rtol=1e-4, atol=1e-7)


def test_frozen_variables_stay_bit_identical_and_flags_are_restored():
    model = small_model()
    model.compile(optimizer=nfnet_keras.NFSGD(0.05), loss=LOSS)
    snapshots = []
    record = keras.callbacks.LambdaCallback(
        on_train_batch_end=lambda batch, logs: snapshots.append(
            [[v.numpy() for layer in group for v in layer.weights] for group in layer_groups(model)]))
    freezeout = FreezeOut(t0=0.5, scaling="linear")
    x, y = data(32)
    model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0, callbacks=[freezeout, record])

    # 24 steps; t_i = 0.5, 0.667, 0.833, 1: freezes before steps 12, 16, 20 (24 never comes).
    assert freezeout.freeze_steps == [12, 16, 20, 24]
    assert freezeout.frozen_at == [12, 16, 20]
    for i, frozen in enumerate(freezeout.frozen_at):
        last = snapshots[frozen - 1][i]  # after the last update, at step frozen - 1
        for later in snapshots[frozen:]:
            for a, b in zip(last, later[i]):
                np.testing.assert_array_equal(a, b)
        assert any(not np.array_equal(a, b) for a, b in zip(snapshots[frozen - 2][i], last))
    head = [np.array_equal(a, b) for a, b in zip(snapshots[-2][3], snapshots[-1][3])]
    assert not all(head)  # the head trains to the end
    assert all(layer.trainable for layer in model.layers)
    assert len(model.trainable_variables) == 8


def _backprop_ops(model, images):
    @tf.function
    def grads():
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(model(images, training=True))
        return tape.gradient(loss, model.trainable_variables)

    # The tape records the frozen layers too (their tf.Variables stay
    # watchable); what runs is the part of the graph the fetched gradients
    # need, which is what TensorFlow executes of a function.
    graph = grads.get_concrete_function().graph
    needed = tf.compat.v1.graph_util.extract_sub_graph(
        graph.as_graph_def(), [t.op.name for t in graph.outputs])
    kinds = [node.op for node in needed.node]
    return kinds.count("Conv2DBackpropFilter"), kinds.count("Conv2DBackpropInput")


def test_frozen_layers_leave_the_backward_pass():
    model = nfnet_keras.get_model("nf_resnet_tiny", weights=None, input_shape=(32, 32, 3),
                                  classes=10)
    images = tf.zeros((2, 32, 32, 3))
    filters, inputs = _backprop_ops(model, images)
    groups = layer_groups(model)
    for group in groups[:3]:  # stem and the first two blocks
        for layer in group:
            layer.trainable = False
    frozen_convs = sum(isinstance(l, keras.layers.Conv2D) for g in groups[:3] for l in g)
    filters_after, inputs_after = _backprop_ops(model, images)
    assert filters_after == filters - frozen_convs
    # No input gradient is propagated into the frozen prefix either.
    assert inputs_after <= inputs - frozen_convs


def test_predicted_saving_of_an_nf_model():
    model = nfnet_keras.get_model("nf_resnet_tiny", weights=None, input_shape=(32, 32, 3),
                                  classes=3)
    freezeout = FreezeOut(t0=0.5, scaling="linear")
    freezeout.set_model(model)
    saving, saving_2x = freezeout.predicted_saving()
    # Independently: conv FLOPs per group from the layer shapes, t_i = 0.5 ... 1.
    groups = layer_groups(model)
    flops = []
    for group in groups:
        total = 0
        for layer in group:
            if isinstance(layer, keras.layers.Conv2D):
                kh, kw, cin, cout = layer.kernel.shape
                total += 2 * kh * kw * cin * cout * layer.output.shape[1] * layer.output.shape[2]
            elif isinstance(layer, keras.layers.Dense):
                total += 2 * layer.kernel.shape[0] * layer.kernel.shape[1]
        flops.append(total)
    flops = np.array(flops, float)
    t = 0.5 + 0.5 * np.arange(len(groups)) / (len(groups) - 1)
    assert saving == pytest.approx(1 - (flops.sum() + (flops * t).sum()) / (2 * flops.sum()))
    assert 0 < saving < saving_2x < 0.5


def test_composes_with_agc():
    model = small_model(nfnet_keras.NFModel)
    model.compile(optimizer=nfnet_keras.NFSGD(0.1), loss=LOSS)
    freezeout = FreezeOut(t0=0.5, scaling="linear", groups=[["stem_conv", "stage0_block0_conv"],
                                                            ["stage0_block1_conv", "predictions"]])
    stem = model.get_layer("stem_conv").kernel
    kernels = []
    record = keras.callbacks.LambdaCallback(on_train_batch_end=lambda b, logs: kernels.append(stem.numpy()))
    x, y = data()
    history = model.fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0,
                        callbacks=[freezeout, record])
    assert freezeout.frozen_at == [4]
    assert all(np.array_equal(kernels[3], k) for k in kernels[4:])
    assert not np.array_equal(kernels[2], kernels[3])
    assert history.history["agc_clip_fraction"][-1] > 0


def test_unknown_run_length_and_ema_are_refused():
    model = small_model()
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss=LOSS)
    x, y = data()
    endless = tf.data.Dataset.from_tensor_slices((x, y)).batch(4).repeat()
    with pytest.raises(ValueError, match="FreezeOut needs the number of steps"):
        model.fit(endless, epochs=1, shuffle=False, verbose=0, callbacks=[FreezeOut()])
    model.compile(optimizer=keras.optimizers.SGD(0.1, use_ema=True), loss=LOSS)
    with pytest.raises(ValueError, match="does not support optimizers with `use_ema=True`"):
        model.fit(x, y, epochs=1, verbose=0, callbacks=[FreezeOut()])
    assert math.isclose(freeze_points(2)[0], 0.512)
