"""NFModel's training step on Keras's JAX backend, against its TensorFlow step.

Keras picks its backend once per process, at import: the JAX side runs in a
subprocess (`jax_side`, this module's own code), the TensorFlow side here,
both from the same weight files and data, so that the two steps can be
compared number for number.
"""

import json
import os
import subprocess
import sys
import warnings

import keras
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 3
# Equal up to float32 rounding of the two backends' kernels: the largest
# difference per variable, relative to the size of its update over the steps
# (measured: 1.6e-5 for the tiny NFNet, 2e-6 for the dense model; without
# AGC on one side the difference is 750 times the update).
RTOL_UPDATE = 1e-3
# mixed_bfloat16: bfloat16 keeps 8 significant bits (2^-8 = 0.4 % per
# rounding), and the two backends round different intermediate values; over
# the six steps the weights differed by up to 4 % of the update, the
# gradient norm by 0.4 %.
RTOL_UPDATE_BF16 = 0.1
RTOL_GRAD_NORM_BF16 = 1e-2


def tiny_nfnet(start=None, agc_clipping=0.01):
    """The tiny NFNet row (weights from `start`, compiled, if given), with no
    random masks (no dropout, no stochastic depth) that would differ between
    the backends."""
    import nfnet_keras

    model = nfnet_keras.NFNet(
        "tiny", weights=None, include_preprocessing=False, input_shape=(32, 32, 3),
        classifier_activation=None, dropout_rate=0.0, stochastic_depth_rate=0.0,
        agc_clipping=agc_clipping,
    )
    if start is None:
        return model
    model.load_weights(start)
    model.compile(optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=True),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def dense_nfmodel(start=None, agc_clipping=0.002, **optimizer_kwargs):
    """A two-layer NFModel (hidden layer, `predictions` head), compiled."""
    from nfnet_keras import NFModel

    inputs = keras.Input((6,))
    hidden = keras.layers.Dense(5, activation="tanh", name="hidden")(inputs)
    outputs = keras.layers.Dense(3, name="predictions")(hidden)
    model = NFModel(inputs, outputs, agc_clipping=agc_clipping)
    if start is not None:
        model.load_weights(start)
    model.compile(optimizer=keras.optimizers.SGD(0.5, **optimizer_kwargs),
                  loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def weights_of(model):
    return [v.numpy() for v in model.trainable_variables]


def agc_steps(directory, agc_clipping):
    """`STEPS` steps of the tiny NFNet, then one with a NaN pixel."""
    data = np.load(os.path.join(directory, "data.npz"))
    model = tiny_nfnet(os.path.join(directory, "tiny.weights.h5"), agc_clipping)
    out = {}
    for step in range(STEPS):
        for name, value in model.train_on_batch(data["x"], data["y"], return_dict=True).items():
            out.setdefault(name, []).append(float(value))
    out["weights"] = weights_of(model)
    x = data["x"].copy()
    x[1, 5, 5, 0] = np.nan
    out["nan_logs"] = {name: float(value) for name, value in
                       model.train_on_batch(x, data["y"], return_dict=True).items()}
    out["nan_weights"] = weights_of(model)
    out["nan_iterations"] = int(keras.ops.convert_to_numpy(model.optimizer.iterations))
    return out


def accumulation_steps(directory, policy="float32"):
    """Six steps of the dense model: two micro-batches accumulated per
    update, momentum, EMA overwriting the weights at the fourth step."""
    data = np.load(os.path.join(directory, "data.npz"))
    keras.mixed_precision.set_dtype_policy(policy)
    try:
        model = dense_nfmodel(
            os.path.join(directory, "dense.weights.h5"), momentum=0.9,
            gradient_accumulation_steps=2, use_ema=True, ema_momentum=0.9,
            ema_overwrite_frequency=4,
        )
        out = {}
        for x, y in zip(data["dense_x"], data["dense_y"]):
            for name, value in model.train_on_batch(x, y, return_dict=True).items():
                out.setdefault(name, []).append(float(value))
        out["weights"] = weights_of(model)
        out["ema"] = [keras.ops.convert_to_numpy(v)
                      for v in model.optimizer._model_variables_moving_average]
    finally:
        keras.mixed_precision.set_dtype_policy("float32")
    return out


def refusal(build):
    """The message of the error that training a model from `build` raises."""
    try:
        build().train_on_batch(np.zeros((2, 6), "float32"), np.zeros((2,), "int32"))
    except ValueError as error:
        return str(error)
    return None


def jax_side(directory):
    """Runs the JAX side (in a process whose Keras backend is JAX) and
    writes its results to `directory`/jax.json."""
    assert keras.backend.backend() == "jax"
    results = {
        "accumulation": accumulation_steps(directory),
        "bfloat16": accumulation_steps(directory, "mixed_bfloat16"),
    }
    # Each batch split over the 2 devices of this process (`sides`).
    assert len(keras.distribution.list_devices()) == 2
    keras.distribution.set_distribution(keras.distribution.DataParallel())
    try:
        results["data_parallel"] = accumulation_steps(directory)
    finally:
        keras.distribution.set_distribution(None)
    results["agc"] = agc_steps(directory, 0.01)
    # `fit`, one epoch, on a tiny learnable problem: the class is the index of
    # the largest of the first three inputs.
    x = np.random.default_rng(2).normal(size=(256, 6)).astype("float32")
    y = np.argmax(x[:, :3], axis=1)
    model = dense_nfmodel(os.path.join(directory, "dense.weights.h5"), agc_clipping=0.01,
                          momentum=0.9)
    before = model.evaluate(x, y, verbose=0, return_dict=True)
    history = model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0).history
    after = model.evaluate(x, y, verbose=0, return_dict=True)
    # The trained model's optimizer state round trip through `.keras`.
    path = os.path.join(directory, "fitted.keras")
    model.save(path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = keras.models.load_model(path)
    results["fit"] = {
        "history": history, "before": before, "after": after,
        "load_warnings": [str(w.message) for w in caught],
        "optimizer_equal": all(
            np.array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
            for a, b in zip(model.optimizer._saved_variables(), loaded.optimizer.variables)
        ) and len(loaded.optimizer.variables) == len(model.optimizer._saved_variables()),
    }

    def float16():
        keras.mixed_precision.set_dtype_policy("mixed_float16")
        try:
            return dense_nfmodel()
        finally:
            keras.mixed_precision.set_dtype_policy("float32")

    def model_parallel():
        mesh = keras.distribution.DeviceMesh((2,), ["model"])
        layout_map = keras.distribution.LayoutMap(mesh)
        layout_map["hidden/kernel"] = ("model", None)  # 6 inputs over 2 devices
        keras.distribution.set_distribution(keras.distribution.ModelParallel(layout_map=layout_map))
        return dense_nfmodel()

    try:
        results["refusals"] = {"mixed_float16": refusal(float16),
                               "distribution": refusal(model_parallel)}
    finally:
        keras.distribution.set_distribution(None)
    with open(os.path.join(directory, "jax.json"), "w") as f:
        json.dump(results, f, default=lambda a: np.asarray(a).tolist())


@pytest.fixture(scope="module")
def sides(tmp_path_factory, jax_env):
    """The results of the same steps on JAX (subprocess) and on TensorFlow."""
    from conftest import randomize

    directory = str(tmp_path_factory.mktemp("jax_backend"))
    # Random weights: skip gains start at 0 and would hide most gradients.
    start = randomize(tiny_nfnet())
    start.save_weights(os.path.join(directory, "tiny.weights.h5"))
    keras.utils.set_random_seed(0)
    dense = dense_nfmodel()
    dense.save_weights(os.path.join(directory, "dense.weights.h5"))
    rng = np.random.default_rng(1)
    np.savez(
        os.path.join(directory, "data.npz"),
        x=rng.normal(size=(4, 32, 32, 3)).astype("float32"), y=rng.integers(0, 1000, (4,)),
        dense_x=(rng.normal(size=(6, 4, 6)) * 3).astype("float32"),
        dense_y=rng.integers(0, 3, (6, 4)),
    )
    code = ("import sys; sys.path.insert(1, 'tests'); import test_jax_backend as t; "
            "t.jax_side(sys.argv[1])")
    env = {**jax_env,
           # LLVM's optimisation of XLA's CPU code takes half of the tiny
           # NFNet step's compile time (33 s -> 16 s on 2 cores); it does not
           # change what is computed (no fast-math on XLA:CPU by default).
           # Two CPU devices, for `DataParallel`.
           "XLA_FLAGS": "--xla_backend_optimization_level=0 "
                        "--xla_force_host_platform_device_count=2"}
    jax_process = subprocess.Popen([sys.executable, "-c", code, directory], cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # The TensorFlow side runs meanwhile.
    tensorflow = {
        "agc": agc_steps(directory, 0.01),
        "off": agc_steps(directory, None),
        "accumulation": accumulation_steps(directory),
        "bfloat16": accumulation_steps(directory, "mixed_bfloat16"),
    }
    output, _ = jax_process.communicate(timeout=600)
    assert jax_process.returncode == 0, output[-3000:]
    with open(os.path.join(directory, "jax.json")) as f:
        jax = json.load(f)
    tensorflow["start"] = weights_of(start)
    tensorflow["dense_start"] = weights_of(dense)
    return jax, tensorflow


def worst_update_ratio(start, a, b):
    """max over variables of max|a - b| / max|b - start| (the update's size)."""
    ratios = []
    for s, x, y in zip(start, a, b):
        x, y = np.asarray(x), np.asarray(y)
        update = np.abs(y - s).max()
        assert update > 0
        ratios.append(np.abs(x - y).max() / update)
    return max(ratios)


def test_jax_steps_leave_the_tensorflow_weights(sides):
    jax, tensorflow = sides
    j, t = jax["agc"], tensorflow["agc"]
    assert min(t["agc_clip_fraction"]) > 0 and min(j["agc_clip_fraction"]) > 0  # every step
    ratio = worst_update_ratio(tensorflow["start"], j["weights"], t["weights"])
    assert ratio <= RTOL_UPDATE, ratio
    # The tolerance tells AGC from none: TensorFlow without it misses JAX's weights.
    ratio_off = worst_update_ratio(tensorflow["start"], tensorflow["off"]["weights"], j["weights"])
    assert ratio_off > 30 * RTOL_UPDATE, ratio_off


def test_jax_metrics_equal_tensorflow_metrics(sides):
    j, t = (side["agc"] for side in sides)
    np.testing.assert_allclose(j["agc_clip_fraction"], t["agc_clip_fraction"], atol=1e-6)
    np.testing.assert_allclose(j["grad_norm"], t["grad_norm"], rtol=1e-5)
    np.testing.assert_allclose(j["loss"], t["loss"], rtol=1e-5)
    assert j["skipped_steps"] == t["skipped_steps"] == [0.0] * STEPS


def test_jax_skips_a_non_finite_step(sides):
    jax, tensorflow = sides
    for side in (jax, tensorflow):
        assert side["agc"]["nan_logs"]["skipped_steps"] == 1.0
        assert side["agc"]["nan_iterations"] == STEPS
        for before, after in zip(side["agc"]["weights"], side["agc"]["nan_weights"]):
            np.testing.assert_array_equal(before, after)


def test_jax_accumulation_ema_and_data_parallel_take_the_tensorflow_steps(sides):
    jax, tensorflow = sides
    for case, reference, rtol, rtol_norm in (
        ("accumulation", "accumulation", RTOL_UPDATE, 1e-5),
        ("bfloat16", "bfloat16", RTOL_UPDATE_BF16, RTOL_GRAD_NORM_BF16),
        ("data_parallel", "accumulation", RTOL_UPDATE, 1e-5),  # against one TF device
    ):
        j, t = jax[case], tensorflow[reference]
        assert max(t["agc_clip_fraction"]) > 0, case
        ratio = worst_update_ratio(tensorflow["dense_start"], j["weights"], t["weights"])
        assert ratio <= rtol, (case, ratio)
        ratio = worst_update_ratio(tensorflow["dense_start"], j["ema"], t["ema"])
        assert ratio <= rtol, (case, ratio)
        np.testing.assert_allclose(j["agc_clip_fraction"], t["agc_clip_fraction"], atol=1e-6)
        np.testing.assert_allclose(j["grad_norm"], t["grad_norm"], rtol=rtol_norm)


def test_jax_fit_lowers_the_loss_and_saves_the_optimizer_state(sides):
    fit = sides[0]["fit"]
    assert fit["after"]["loss"] < 0.5 * fit["before"]["loss"], fit
    assert fit["history"]["agc_clip_fraction"][0] > 0 and fit["history"]["skipped_steps"] == [0.0]
    assert "agc_clip_fraction" not in fit["after"]  # `evaluate` reports no training metrics
    assert fit["optimizer_equal"]
    assert not any("Skipping variable loading" in w for w in fit["load_warnings"])


def test_jax_refuses_loss_scaling_and_model_parallel(sides):
    refusals = sides[0]["refusals"]
    assert "dtype policy 'mixed_float16'" in refusals["mixed_float16"]
    assert "mixed_bfloat16" in refusals["mixed_float16"]
    assert "DataParallel" in refusals["distribution"]
    assert "ModelParallel" in refusals["distribution"]
    assert all("\n" not in message for message in refusals.values())
