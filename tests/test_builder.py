"""The one NF builder (`nfnet_keras/models/builder.py`): the keras.applications
contract (constructor errors, include_top / pooling, input_tensor and
preprocessing), execution modes and precision, saving, gradients and fit,
tested on the tiny rows of the three families; and the timm convention of
the NF-ResNet and NF-RegNet rows against timm (counts, forward parity, the
-inf-padded max pool) and through a `.keras` file."""

import functools

import keras
import numpy as np
import pytest

import nfnet_keras
from conftest import randomize, tiny_nfnet
from nfnet_keras.convert.timm import load_timm_state_dict
from nfnet_keras.models import builder

tiny = functools.partial(tiny_nfnet, classes=10)


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


# --- The timm convention ----------------------------------------------------

# The timm convention of the DeepMind families: (Keras constructor, converter
# rule set) by timm model name.
ARCHS = {
    "nf_resnet26": (nfnet_keras.TimmNFResNet26, "timm_nf_resnet"),
    "nf_resnet50": (nfnet_keras.TimmNFResNet50, "timm_nf_resnet"),
    "nf_resnet101": (nfnet_keras.TimmNFResNet101, "timm_nf_resnet"),
    "nf_regnet_b0": (nfnet_keras.TimmNFRegNetB0, "timm_nf_regnet"),
    "nf_regnet_b1": (nfnet_keras.TimmNFRegNetB1, "timm_nf_regnet"),
    "nf_regnet_b2": (nfnet_keras.TimmNFRegNetB2, "timm_nf_regnet"),
    "nf_regnet_b3": (nfnet_keras.TimmNFRegNetB3, "timm_nf_regnet"),
    "nf_regnet_b4": (nfnet_keras.TimmNFRegNetB4, "timm_nf_regnet"),
    "nf_regnet_b5": (nfnet_keras.TimmNFRegNetB5, "timm_nf_regnet"),
}


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_parameter_count_matches_timm(name, count_params):
    from _timm import timm

    constructor, _ = ARCHS[name]
    reference = timm.create_model(name, device="meta")  # shapes only
    expected = sum(p.numel() for p in reference.parameters())
    row = constructor.architecture
    assert row.timm_name == name
    assert count_params(row.name) == expected
    assert row.params == expected
    # The default input size is timm's test size for the variant.
    cfg = reference.pretrained_cfg
    size = (cfg.get("test_input_size") or cfg["input_size"])[1]
    assert row.test_size == size


@pytest.mark.parametrize("name", ["nf_resnet50", "nf_regnet_b1"])
# The odd, non-square size runs by default; the default size (288, the
# test size, also checked against timm's cfg above) and 160x192 with `-m slow`.
@pytest.mark.parametrize(
    "size",
    [pytest.param(None, marks=pytest.mark.slow), (223, 255), pytest.param((160, 192), marks=pytest.mark.slow)],
)
def test_matches_timm(timm_models, name, size):
    from _timm import timm_outputs

    constructor, arch = ARCHS[name]
    reference = timm_models(name)
    if size is None:  # the default size: timm's test size (288 for both)
        model = constructor(weights=None, include_preprocessing=False, classifier_activation=None)
        size = tuple(model.input_shape[1:3])
        assert size == (288, 288)
    else:
        model = constructor(weights=None, include_preprocessing=False, input_shape=(*size, 3), classifier_activation=None)
    state = reference.state_dict()
    load_timm_state_dict(model, state, arch=arch)
    features = constructor(
        weights=None, include_preprocessing=False, include_top=False, pooling="avg", input_shape=(*size, 3)
    )
    load_timm_state_dict(features, state, arch=arch, skip=r"head\.fc\.")

    rng = np.random.default_rng(1)
    images = rng.standard_normal((2, *size, 3)).astype("float32")
    ref_pooled, ref_logits = timm_outputs(reference, images)
    logits = model.predict(images, verbose=0)
    pooled = features.predict(images, verbose=0)

    assert np.abs(ref_logits).max() > 0.1  # the head is not trivially zero
    np.testing.assert_allclose(
        logits, ref_logits, rtol=0, atol=1e-4 * max(1.0, float(np.abs(ref_logits).max()))
    )
    np.testing.assert_allclose(
        pooled, ref_pooled, rtol=0, atol=1e-4 * max(1.0, float(np.abs(ref_pooled).max()))
    )


@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_symmetric_max_pool_matches_torch(size):
    # Negative inputs: zero padding (instead of -inf) would win at the border.
    from _timm import torch

    rng = np.random.default_rng(0)
    x = -np.abs(rng.standard_normal((2, *size, 3))).astype("float32") - 1.0
    ours = np.asarray(builder.SymmetricMaxPooling2D(3, 2, 1)(x))
    ref = torch.nn.MaxPool2d(3, stride=2, padding=1)(
        torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())
    )
    np.testing.assert_array_equal(ours, np.transpose(ref.numpy(), (0, 2, 3, 1)))


def test_saved_model_round_trip(tmp_path):
    model = nfnet_keras.TimmNFResNet26(weights=None, include_preprocessing=False, input_shape=(64, 64, 3), classifier_activation=None)
    randomize(model)  # non-trivial values (last-conv gains are 0)
    images = np.random.default_rng(0).standard_normal((1, 64, 64, 3)).astype("float32")
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    np.testing.assert_allclose(
        restored.predict(images, verbose=0), model.predict(images, verbose=0), rtol=1e-6
    )
