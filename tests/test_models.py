"""Model families: parameter counts, keras.applications contract, modes, saving."""

import functools
import os
import sys

import keras
import numpy as np
import pytest

import nfnet_keras
from conftest import randomize, tiny_nfnet
from nfnet_keras.models import get_architecture

# deepmind-research README / reference doc §2 (derived from the code's shapes).
PUBLISHED_NFNET_PARAMS = {
    "nfnet_f0": 71_489_284, "nfnet_f1": 132_634_256, "nfnet_f2": 193_779_228,
    "nfnet_f3": 254_924_200, "nfnet_f4": 316_069_172, "nfnet_f5": 377_214_144,
    "nfnet_f6": 438_359_116, "nfnet_f7": 499_504_088,
}

sys.path.insert(0, os.path.dirname(__file__))


tiny = functools.partial(tiny_nfnet, classes=10)


# --- Parameter counts -------------------------------------------------------


@pytest.mark.parametrize("name", [f"nfnet_f{i}" for i in range(8)])
def test_nfnet_parameter_count_is_exact(name, count_params):
    # Reference doc §2: derived counts that reproduce the DeepMind README.
    assert count_params(name) == get_architecture(name).params == PUBLISHED_NFNET_PARAMS[name]


@pytest.mark.parametrize("variant", ["50", "101", "152", "200"])
@pytest.mark.parametrize("use_se", [False, True])
def test_nf_resnet_parameter_count(variant, use_se, count_params):
    row = get_architecture(f"nf_resnet{variant}")
    expected = row.params_se if use_se else row.params
    # The reference gives these counts to 0.01M (derived from the code).
    assert round(count_params(row.name, use_se=use_se) / 1e6, 2) == expected / 1e6


@pytest.mark.parametrize("variant", ["b0", "b1", "b2", "b3", "b4", "b5"])
def test_nf_regnet_parameter_count(variant, count_params):
    row = get_architecture(f"nf_regnet_{variant}")
    assert round(count_params(row.name) / 1e6, 2) == row.params / 1e6


def test_nf_resnet50_count_equals_timm_plus_skip_gains(count_params):
    # timm's nf_resnet50 has the same convolutions (pooling has no weights)
    # but no scalar skip gain per block: ours = timm + number of blocks.
    from _timm import timm

    reference = sum(p.numel() for p in timm.create_model("nf_resnet50").parameters())
    blocks = sum(get_architecture("nf_resnet50").depths)
    assert count_params("nf_resnet50") == reference + blocks


def test_nfnet_f0_betas_follow_the_reference_table():
    # Reference doc §3.4, F0 table (alpha = 0.2).
    expected = [1.0, 0.9805806757, 0.9805806757, 0.9622504486, 0.9805806757,
                0.9622504486, 0.9449111825, 0.9284766909, 0.9128709292,
                0.8980265101, 0.9805806757, 0.9622504486]
    model = nfnet_keras.NFNetF0(weights=None, include_preprocessing=False, include_top=False)
    betas = [layer.beta for layer in model.layers if layer.name.endswith("_preact")]
    np.testing.assert_allclose(betas, expected, atol=1e-10)
    drops = {l.name: l.rate for l in model.layers if l.name.endswith("drop_path")}
    # DeepMind schedule 0.25 * i / 12; block 0 has none (reference doc §3.4).
    assert "stage0_block0_drop_path" not in drops
    assert drops["stage3_block2_drop_path"] == pytest.approx(0.25 * 11 / 12)


def test_nfnet_f0_feature_map_shapes():
    model = nfnet_keras.NFNetF0(weights=None, include_preprocessing=False, include_top=False, input_shape=(256, 256, 3))
    shapes = {l.name: l.output.shape for l in model.layers}
    assert shapes["stem_conv3"] == (None, 64, 64, 128)
    assert shapes["stage0_block0_add"] == (None, 64, 64, 256)
    assert shapes["stage1_block1_add"] == (None, 32, 32, 512)
    assert shapes["stage2_block5_add"] == (None, 16, 16, 1536)
    assert shapes["final_conv"] == (None, 8, 8, 3072)
    assert model.get_layer("stage2_block0_conv1").groups == 6  # 768 / 128


# --- keras.applications contract ------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(weights="no_such_file.h5"), "weights"),
        (dict(weights="imagenet", classes=10), "classes"),
        (dict(input_shape=(16, 16, 3), include_top=False), "32"),
        (dict(input_shape=(64, 64, 1), include_top=False, weights="imagenet"), "3 channels"),
        (dict(input_shape=(64, 64, 1), include_top=False, include_preprocessing=True), "3 channels"),
        (dict(input_shape=(None, None, 3), include_top=True), "input_shape"),
        (dict(pooling="sum", include_top=False), "pooling"),
        (dict(classifier_activation="relu", weights="imagenet"), "classifier_activation"),
        (dict(convention="torch"), "convention"),
        (dict(dropout_rate=1.5), "dropout_rate"),
        (dict(classes=0), "classes"),
    ],
)
def test_constructor_rejects_like_keras_applications(kwargs, match):
    with pytest.raises(ValueError, match=match):
        nfnet_keras.NFNetF0(**{"weights": None, **kwargs})


def test_keras_applications_error_text():
    with pytest.raises(ValueError, match=r"Received: weights=bogus"):
        nfnet_keras.NFNetF0(include_preprocessing=False, weights="bogus")


@pytest.mark.parametrize(
    "pooling,shape", [(None, (None, 1, 2, 128)), ("avg", (None, 128)), ("max", (None, 128))]
)
def test_include_top_false_output_shapes(pooling, shape):
    model = tiny(include_top=False, pooling=pooling, input_shape=(32, 64, 3))
    assert model.output.shape == shape
    assert "predictions" not in [l.name for l in model.layers]


def test_default_input_size_is_the_test_resolution():
    assert nfnet_keras.NFRegNetB0(weights=None, include_preprocessing=False).input.shape == (None, 224, 224, 3)
    assert nfnet_keras.NFNetF0(weights=None, include_preprocessing=False, include_top=False).input.shape == (None, None, None, 3)


def test_top_layer_and_names():
    model = tiny()
    assert model.layers[-1].name == "predictions"
    assert model.name == "nfnet_tiny"
    assert nfnet_keras.NFResNet50(weights=None, include_preprocessing=False, name="backbone").name == "backbone"
    for name in ("stem_conv0", "stage1_block0_conv1b", "stage1_block0_shortcut_conv",
                 "stage1_block0_se", "stage1_block0_skip_gain", "final_conv"):
        model.get_layer(name)


def test_input_tensor_and_preprocessing():
    inp = keras.Input((32, 32, 3))
    model = tiny(input_tensor=inp, include_preprocessing=True)
    assert model.input is inp
    plain = tiny()
    randomize(plain)
    model.set_weights(plain.get_weights())
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(
        model.predict(images, verbose=0),
        plain.predict(nfnet_keras.preprocess_input(images), verbose=0),
        rtol=1e-5, atol=1e-6,
    )


# --- Execution modes, precision, saving ------------------------------------


def test_eager_graph_and_xla_agree():
    import tensorflow as tf

    model = randomize(tiny(classifier_activation=None))
    x = np.random.default_rng(0).standard_normal((4, 32, 32, 3)).astype("float32")
    eager = keras.ops.convert_to_numpy(model(x, training=False))
    graph = tf.function(lambda t: model(t, training=False))(x).numpy()
    xla = tf.function(lambda t: model(t, training=False), jit_compile=True)(x).numpy()
    np.testing.assert_allclose(graph, eager, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(xla, eager, rtol=1e-4, atol=1e-4)


def test_mixed_bfloat16_is_finite_and_agrees_on_top1():
    ref = randomize(tiny(classifier_activation=None))
    x = np.random.default_rng(1).standard_normal((16, 32, 32, 3)).astype("float32")
    logits32 = ref.predict(x, verbose=0)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny(classifier_activation=None)
        model.set_weights(ref.get_weights())
        out = model(x)
        logits16 = keras.ops.convert_to_numpy(out)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    assert model.get_layer("stem_conv0").compute_dtype == "bfloat16"
    assert keras.backend.standardize_dtype(out.dtype) == "float32"  # the classifier's output
    assert np.all(np.isfinite(logits16))
    sorted32 = np.sort(logits32, axis=1)
    clear = (sorted32[:, -1] - sorted32[:, -2]) > 0.05 * np.abs(logits32).max()
    assert clear.sum() >= 8
    np.testing.assert_array_equal(logits16.argmax(1)[clear], logits32.argmax(1)[clear])


@pytest.mark.parametrize("family", ["nfnet", "nf_resnet", "nf_regnet"])
def test_keras_file_round_trip_is_bit_exact(tmp_path, family):
    builders = {
        "nfnet": lambda: tiny(),
        "nf_resnet": lambda: nfnet_keras.NFResNet("tiny", weights=None, include_preprocessing=False, input_shape=(32, 32, 3), classes=10, use_se=True),
        "nf_regnet": lambda: nfnet_keras.NFRegNet("tiny", weights=None, include_preprocessing=False, input_shape=(32, 32, 3), classes=10),
    }
    model = randomize(builders[family]())
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32")
    before = model.predict(x, verbose=0)
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert type(restored) is type(model)
    np.testing.assert_array_equal(restored.predict(x, verbose=0), before)
    for a, b in zip(model.weights, restored.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_weights_file_round_trip(tmp_path):
    model = randomize(tiny())
    path = str(tmp_path / "tiny.weights.h5")
    model.save_weights(path)
    loaded = tiny(weights=path)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype("float32")
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))


@pytest.mark.parametrize("family", ["nfnet", "nf_resnet", "nf_regnet"])
def test_every_trainable_variable_gets_a_gradient_and_fit_runs(family):
    import tensorflow as tf

    builders = {
        "nfnet": lambda: tiny(),
        "nf_resnet": lambda: nfnet_keras.NFResNet("tiny", weights=None, include_preprocessing=False, input_shape=(32, 32, 3), classes=10, use_se=True),
        "nf_regnet": lambda: nfnet_keras.NFRegNet("tiny", weights=None, include_preprocessing=False, input_shape=(32, 32, 3), classes=10),
    }
    model = builders[family]()
    # Skip gains start at 0 and would block every residual-branch gradient;
    # the classifier of NF-RegNet starts at 0 too. Give them values first.
    randomize(model)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((8, 32, 32, 3)).astype("float32")
    y = rng.integers(0, 10, (8,))
    with tf.GradientTape() as tape:
        loss = keras.losses.sparse_categorical_crossentropy(y, model(x, training=True))
        loss = tf.reduce_mean(loss)
    grads = tape.gradient(loss, model.trainable_variables)
    zero = [v.path for v, g in zip(model.trainable_variables, grads)
            if g is None or not np.any(g.numpy())]
    assert not zero, f"no gradient for {zero}"

    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="sparse_categorical_crossentropy")
    before = [w.numpy() for w in model.trainable_variables]
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    unchanged = [v.path for v, b in zip(model.trainable_variables, before)
                 if np.array_equal(v.numpy(), b)]
    assert not unchanged, f"not updated by fit: {unchanged}"


def test_get_model_lookup():
    assert nfnet_keras.get_model("nfnet_tiny", weights=None, include_preprocessing=False, input_shape=(32, 32, 3), classes=3).output.shape == (None, 3)
    with pytest.raises(ValueError, match="nfnet_f0"):
        nfnet_keras.get_model("nfnet_f9", weights=None, include_preprocessing=False)
