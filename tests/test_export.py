"""SavedModel export: every loader, the bytes signature, folded exports, bad input, bundle."""

import json
import os
import re
import shutil
import subprocess
import sys
import tarfile

import keras
import numpy as np
import pytest
import tensorflow as tf

from _tiny_io import TINY_CLASSES, TINY_SIZE, TOL, _close, _encoded, _images  # tests/ is on sys.path
from conftest import randomize
from export import export as export_lib
from export import preprocessing
import nfnet_keras
from nfnet_keras.weights import deepmind_eval

HERE = os.path.dirname(os.path.abspath(__file__))
SAVED_MODEL_CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")
F0_SIZE = 64  # small, to keep the F0 structure test cheap; sizes are dynamic


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("export")


@pytest.fixture(scope="module")
def tiny_weights(workdir):
    model = export_lib.build_keras_model("nfnet_tiny", classes=TINY_CLASSES)
    randomize(model, seed=1)
    path = str(workdir / "tiny.weights.h5")
    model.save_weights(path)
    return path


@pytest.fixture(scope="module")
def tiny(workdir, tiny_weights):
    """The fine-tunable classification export of the tiny model, via the CLI's library call."""
    return export_lib.export(
        "nfnet_tiny",
        str(workdir / "tiny"),
        weights=tiny_weights,
        classes=TINY_CLASSES,
        image_size=TINY_SIZE,
        log=None,
    )


@pytest.fixture(scope="module")
def tiny_features_folded(workdir, tiny_weights):
    return export_lib.export(
        "nfnet_tiny",
        str(workdir / "tiny_fv"),
        weights=tiny_weights,
        output="feature_vector",
        image_size=TINY_SIZE,
        fold=True,
        log=None,
    )


@pytest.fixture(scope="module")
def f0(workdir):
    """F0 structure (random weights) exported at 64 px."""
    model = export_lib.build_keras_model("nfnet_f0")
    randomize(model, seed=2)
    path = str(workdir / "f0")
    export_lib.save(model, path, output="classification", transform=deepmind_eval(F0_SIZE))
    return model, path


# --------------------------------------------------------------------------
# Round trips of the tiny export through every loader.


def test_tf_saved_model_load_call_and_signatures(tiny):
    model = tiny.keras_model
    x = _images(3, TINY_SIZE)
    expected = model(x, training=False).numpy()
    assert expected.shape == (3, TINY_CLASSES)
    loaded = tf.saved_model.load(tiny.saved_model_dir)
    _close(loaded(tf.constant(x)), expected)
    _close(loaded(tf.constant(x), training=False), expected)
    _close(loaded.serve(tf.constant(x)), expected)
    assert set(loaded.signatures) == {"serving_default", "serving_bytes"}
    out = loaded.signatures["serving_default"](images=tf.constant(x))
    assert list(out) == ["logits"]
    _close(out["logits"], expected)
    # Dynamic sizes: a larger, non-square image works and matches Keras.
    big = np.random.default_rng(5).random((1, 48, 40, 3), dtype="float32")
    _close(loaded(tf.constant(big)), model(big).numpy())
    # The Reusable SavedModel API.
    assert len(loaded.variables) == len(model.variables)  # weights + seed states
    assert len(loaded.trainable_variables) == len(model.trainable_weights) > 0
    assert list(loaded.regularization_losses) == []
    # Each variable is stored once (not also under the Keras model's
    # wrappers), plus the flag of the once-only range warning (a bool outside
    # `variables`: not a weight of the model).
    stored = tf.train.list_variables(os.path.join(tiny.saved_model_dir, "variables", "variables"))
    stored = [name for name, _ in stored if name.endswith("VARIABLE_VALUE")]
    assert len(stored) == len(model.variables) + 1
    assert [name for name in stored if name.startswith("images_range_warned/")] == [
        "images_range_warned/.ATTRIBUTES/VARIABLE_VALUE"
    ]
    assert loaded.images_range_warned.dtype == tf.bool
    assert not any(v is loaded.images_range_warned for v in loaded.variables)
    # Built-in verification ran on every entry (the 1e-5 relative checks of
    # each entry are the `_close` calls above).
    assert set(tiny.verification) == {"__call__", "serve", "serving_default", "serving_bytes"}
    scale = max(1.0, float(np.abs(expected).max()))
    assert max(tiny.verification.values()) <= 2 * TOL * scale


@pytest.mark.parametrize("kind", ["png", "jpeg"])
def test_bytes_signature_equals_eval_transform_then_model(tiny, kind):
    data = [_encoded(kind, seed=4), _encoded(kind, height=80, width=33, seed=6)]
    loaded = tf.saved_model.load(tiny.saved_model_dir)
    out = loaded.signatures["serving_bytes"](image_bytes=tf.constant(data))["logits"]
    images = tf.stack([preprocessing.eval_transform(tf.constant(d), deepmind_eval(TINY_SIZE)) for d in data])
    _close(out, tiny.keras_model(images, training=False).numpy())


def test_timm_bytes_signature_equals_timms_eval_transform_then_model(tmp_path):
    """A timm_* export's `serving_bytes` is timm's evaluation (torchvision
    Resize(int(S / crop_pct)) bicubic antialiased on the shorter side,
    CenterCrop(S)) followed by the model."""
    from _timm import torch
    from torchvision import transforms

    size = 64
    transform = export_lib.model_eval_transform("timm_nf_resnet50", size)
    row = nfnet_keras.weights.checkpoint("timm_nf_resnet50.ra2_in1k").eval_transform
    assert transform == row.at_size(size) and transform.crop_pct == 0.94  # timm default_cfgs
    model = randomize(export_lib.build_keras_model("nfnet_tiny", classes=TINY_CLASSES), seed=5)
    path = str(tmp_path / "saved_model")
    export_lib.save(model, path, output="classification", transform=transform)
    # Odd margins (45x70 -> 68x105, crop 64: 41 columns) tell torchvision's
    # centring from DeepMind's.
    data = [_encoded("png", height=45, width=70, seed=8), _encoded("jpeg", height=90, width=61, seed=9)]
    served = tf.saved_model.load(path).signatures["serving_bytes"](image_bytes=tf.constant(data))["logits"]
    timm_eval = transforms.Compose(
        [
            transforms.Resize(int(size / 0.94), interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
            transforms.CenterCrop(size),
        ]
    )
    images = []
    for encoded in data:
        decoded = tf.io.decode_image(encoded, channels=3).numpy().astype("float32")
        crop = timm_eval(torch.from_numpy(decoded.transpose(2, 0, 1).copy())).numpy()
        images.append(crop.transpose(1, 2, 0) / 255.0)
    _close(served, model(np.stack(images), training=False).numpy())


def test_hub_load(tiny):
    import tensorflow_hub as hub

    x = _images(2, TINY_SIZE, seed=7)
    loaded = hub.load(tiny.saved_model_dir)
    _close(loaded(tf.constant(x)), tiny.keras_model(x).numpy())


def test_tfsm_layer_in_keras3_model_fine_tunes(tiny):
    layer = keras.layers.TFSMLayer(
        tiny.saved_model_dir,
        call_endpoint="serve",
        call_training_endpoint="serve_train",
        trainable=True,
    )
    inputs = keras.Input((TINY_SIZE, TINY_SIZE, 3))
    model = keras.Model(inputs, layer(inputs))
    x = _images(6, TINY_SIZE, seed=8)  # six: see the tf_keras test below
    _close(model(x, training=False), tiny.keras_model(x).numpy())
    assert len(model.trainable_weights) == len(tiny.keras_model.trainable_weights)
    with tf.GradientTape() as tape:
        loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(
            np.arange(6), model(x, training=True)
        )
    grads = tape.gradient(loss, model.trainable_weights)
    assert all(g is not None for g in grads)
    assert sum(float(tf.reduce_max(tf.abs(g))) > 0 for g in grads) == len(grads)


def test_hub_keras_layer_fine_tunes_in_tf_keras_subprocess(tiny, tmp_path):
    # Six images: stochastic depth (rate <= 0.1875 in the tiny model) drops a
    # block for the whole batch with probability < 1e-4, which would zero
    # that block's gradients.
    x = _images(6, TINY_SIZE, seed=9)
    data = str(tmp_path / "data.npz")
    np.savez(data, images=x, expected=tiny.keras_model(x).numpy(), labels=np.arange(6))
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="3")
    proc = subprocess.run(
        [sys.executable, os.path.join(HERE, "hub_finetune_worker.py"), tiny.saved_model_dir, data],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["keras_module"].startswith("tf_keras")  # tf.keras is Keras 2
    assert result["layer_class"] == "tensorflow_hub.keras_layer.KerasLayer"
    assert result["max_abs_diff"] <= TOL * 10
    n = len(tiny.keras_model.trainable_weights)
    assert result["num_trainable"] == n
    assert result["num_none_grads"] == 0
    assert result["num_nonzero_grads"] == n
    assert result["num_changed"] == n
    assert result["output_change"] > 0  # the trained variables are the ones served


def test_saved_model_cli_show_and_run(tiny, tmp_path):
    show = subprocess.run(
        [SAVED_MODEL_CLI, "show", "--dir", tiny.saved_model_dir, "--all"],
        capture_output=True, text=True, timeout=120,
    )
    assert show.returncode == 0, show.stderr[-2000:]
    for needle in ("signature_def['serving_default']", "signature_def['serving_bytes']",
                   "inputs['images']", "inputs['image_bytes']", "outputs['logits']"):
        assert needle in show.stdout
    images = np.full((1, TINY_SIZE, TINY_SIZE, 3), 0.5, "float32")
    np.save(tmp_path / "images.npy", images)
    run = subprocess.run(
        [SAVED_MODEL_CLI, "run", "--dir", tiny.saved_model_dir, "--tag_set", "serve",
         "--signature_def", "serving_default", "--inputs", f"images={tmp_path / 'images.npy'}"],
        capture_output=True, text=True, timeout=120,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "logits" in run.stdout
    expected = tiny.keras_model(images).numpy()
    printed = run.stdout[run.stdout.index("[[") :]
    values = np.array([float(v) for v in printed.replace("[", " ").replace("]", " ").split()])
    np.testing.assert_allclose(values, expected.ravel(), rtol=1e-4, atol=1e-4)


# --------------------------------------------------------------------------
# Bad input at the SavedModel.


@pytest.mark.parametrize(
    "entry", ["__call__", "serving_default", "serve"]
)
@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((1, 32, 32, 4), "float32"), "3 channels"),
        (np.zeros((1, 32, 32, 1), "float32"), "3 channels"),
        (np.zeros((1, 16, 40, 3), "float32"), "at least 32 pixels"),
        (np.zeros((1, 32, 32, 3), "uint8"), "float"),
    ],
)
def test_bad_input_gives_clear_error(tiny, entry, images, message):
    loaded = tf.saved_model.load(tiny.saved_model_dir)
    call = {
        "__call__": lambda x: loaded(x),
        "serving_default": lambda x: loaded.signatures["serving_default"](images=x),
        "serve": lambda x: loaded.serve(x),
    }[entry]
    with pytest.raises((tf.errors.InvalidArgumentError, TypeError, ValueError)) as info:
        call(tf.constant(images))
    assert message in str(info.value)


@pytest.mark.parametrize(
    "shape, message",
    [((64, 64, 3), "no batch axis"), ((1, 1, 64, 64, 3), "[batch, height, width, 3]"),
     ((1, 64, 64), "[batch, height, width, 3]")],
)
def test_wrong_rank_is_named_before_other_checks(shape, message):
    # Python callers meet the signature's rank-4 spec first; TF Serving does
    # not check feed shapes, so the graph's own checks must name the rank
    # before they read the height, width and channel axes.
    checked = tf.function(export_lib._checked_images, input_signature=[tf.TensorSpec(None)])
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        checked(tf.zeros(shape))
    assert message in str(info.value) and "pixels" not in str(info.value)


def test_bad_bytes_name_their_index_in_the_batch(tiny):
    serve = tf.saved_model.load(tiny.saved_model_dir).signatures["serving_bytes"]
    good, jpeg = _encoded("png", seed=19), _encoded("jpeg")
    for batch, index in (([b"not an image"], 0), ([good, jpeg, good[1:]], 2)):
        with pytest.raises(tf.errors.InvalidArgumentError) as info:
            serve(image_bytes=tf.constant(batch))
        assert f"`image_bytes[{index}]` is not a JPEG, PNG, GIF or BMP file" in str(info.value)
    # Files that start with a valid signature but do not decode: the first
    # 40 bytes of a JPEG, a PNG cut in the middle of its image data, a PNG
    # whose image data is zeroed (its chunk checksum then fails).
    png_body = good.index(b"IDAT") + 8
    damaged = good[:png_body] + bytes(len(good) - png_body)
    for batch, index, kind in (
        ([good, jpeg[:40]], 1, "JPEG"),
        ([jpeg, jpeg, good[: len(good) // 2], good], 2, "PNG"),
        ([damaged], 0, "PNG"),
    ):
        with pytest.raises(tf.errors.InvalidArgumentError) as info:
            serve(image_bytes=tf.constant(batch))
        assert f"`image_bytes[{index}]` starts as a {kind} file but could not be decoded" in str(info.value)
    # A good batch after the failures: the signature keeps serving.
    assert serve(image_bytes=tf.constant([good, jpeg]))["logits"].shape == (2, TINY_CLASSES)


def _printed_ranges(stderr):
    """The (low, high) of each range warning the SavedModel printed."""
    pattern = r"serving_default received `images` with values in \[(\S+), (\S+)\]; expected \[0, 1\]"
    return [(float(low), float(high)) for low, high in re.findall(pattern, stderr)]


def test_out_of_range_images_warn_once_and_serve_unchanged(tiny, capfd):
    x = _images(2, TINY_SIZE, seed=30)
    # The bytes signature's bicubic resize of black/white noise overshoots
    # [0, 1] by nearly as much as such a resize can (`RESIZED_PIXEL_RANGE`): silent.
    noise = np.random.default_rng(2).integers(0, 2, (33, 33, 1)) * np.full(3, 255)
    png = tf.io.encode_png(tf.constant(noise.astype("uint8")))
    overshoot = preprocessing.eval_transform(png, deepmind_eval(TINY_SIZE))[None]
    assert overshoot.numpy().min() < -0.25 and overshoot.numpy().max() > 1.2
    loaded = tf.saved_model.load(tiny.saved_model_dir)
    serve = loaded.signatures["serving_default"]
    for images in (x, overshoot, np.zeros_like(x), np.ones_like(x)):
        serve(images=tf.constant(images))
    assert _printed_ranges(capfd.readouterr().err) == []
    # [0, 255] pixels: one warning naming the range seen, however often the
    # signature is called; the outputs are those of the model.
    pixels = tf.constant(x * 255)
    warned = serve(images=pixels)["logits"].numpy()
    silent = serve(images=pixels)["logits"].numpy()
    stderr = capfd.readouterr().err
    assert _printed_ranges(stderr) == [pytest.approx((x.min() * 255, x.max() * 255), rel=1e-5)]
    assert "Divide [0, 255] pixels by 255" in stderr
    np.testing.assert_array_equal(silent, warned)  # printing or not, bit-equal
    _close(warned, tiny.keras_model(pixels, training=False).numpy())
    # Mean/std-normalised input, the flag reset (as a new load does): below
    # the range.
    loaded.images_range_warned.assign(False)
    normalised = tf.constant(nfnet_keras.preprocess_input(x * 255))
    serve(images=normalised)
    [(low, high)] = _printed_ranges(capfd.readouterr().err)
    assert low == pytest.approx(float(tf.reduce_min(normalised)), rel=1e-5)
    # The functions that layers compose into their graphs (`serve`,
    # `serve_train`, `__call__`) do not check, so that XLA, which cannot
    # print, compiles them: `fit(jit_compile=True)` over a TFSMLayer.
    loaded.images_range_warned.assign(False)
    assert tf.function(loaded.serve_train, jit_compile=True)(pixels).shape == (2, TINY_CLASSES)
    loaded(pixels)
    assert _printed_ranges(capfd.readouterr().err) == []


# --------------------------------------------------------------------------
# Folded exports; serving with and without oneDNN.


def test_folded_feature_vector_export(tiny_features_folded, tiny):
    result = tiny_features_folded
    x = _images(2, TINY_SIZE, seed=15)
    expected = result.keras_model(x).numpy()
    # Tiny row: final conv to 2 x 64 channels (nfnet.py FINAL_CONV_MULT).
    assert expected.shape == (2, 128)
    loaded = tf.saved_model.load(result.saved_model_dir)
    _close(loaded(tf.constant(x)), expected)
    out = loaded.signatures["serving_default"](images=tf.constant(x))
    assert list(out) == ["feature_vector"]
    _close(out["feature_vector"], expected)
    assert len(loaded.trainable_variables) == 0
    # Features of the classification weights: the same trunk.
    trunk = keras.Model(tiny.keras_model.input, tiny.keras_model.get_layer("avg_pool").output)
    _close(expected, trunk(x).numpy())
    # Neither graph holds an XLA-compiled function (TF Serving runs XLA:CPU
    # only on request; ScaledStdConv2D runs grouped convs per group).
    def xla_functions(path):
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            return f.read().count(b"_XlaMustCompile")
    assert xla_functions(result.saved_model_dir) == 0
    assert xla_functions(tiny.saved_model_dir) == 0


SERVE_SCRIPT = """
import sys, numpy as np, tensorflow as tf
x = np.load(sys.argv[1])
batch = [open(name, "rb").read() for name in sys.argv[2:4]]
for path in sys.argv[4:]:
    serve = tf.saved_model.load(path).signatures["serving_default"]
    out = serve(images=tf.constant(x))
    np.save(path + ".served.npy", next(iter(out.values())).numpy())
    for _ in range(2):  # [0, 255] pixels: the range warning, once
        serve(images=tf.constant(x * 255))
# The bytes signature of the first export in a TF1 session, as TF Serving
# and saved_model_cli run it: a batch with a truncated JPEG.
with tf.Graph().as_default(), tf.compat.v1.Session() as session:
    entry = tf.compat.v1.saved_model.load(session, ["serve"], sys.argv[4]).signature_def["serving_bytes"]
    try:
        session.run(next(iter(entry.outputs.values())).name, {entry.inputs["image_bytes"].name: batch})
        print("served")
    except tf.errors.InvalidArgumentError as error:
        print([line for line in str(error).splitlines() if "image_bytes[" in line][0])
"""


@pytest.mark.parametrize("onednn", ["0", "1"])
def test_exports_serve_with_and_without_onednn(tiny, tiny_features_folded, tmp_path, onednn):
    # CPUs without AVX-512 VNNI/BF16 or AMX run TensorFlow without oneDNN by
    # default, and its graph optimizer then fuses convolution + bias into a
    # CPU kernel that has no grouped form. Both exports must serve either way.
    x = _images(2, TINY_SIZE, seed=18)
    np.save(tmp_path / "x.npy", x)
    (tmp_path / "good.png").write_bytes(_encoded("png", seed=20))
    (tmp_path / "cut.jpg").write_bytes(_encoded("jpeg", seed=21)[:40])
    exports = {}
    for result in (tiny, tiny_features_folded):
        path = str(tmp_path / os.path.basename(os.path.dirname(result.saved_model_dir)))
        shutil.copytree(result.saved_model_dir, path)
        exports[path] = result.keras_model(x).numpy()
    env = {**os.environ, "TF_ENABLE_ONEDNN_OPTS": onednn, "TF_CPP_MIN_LOG_LEVEL": "2"}
    files = [str(tmp_path / name) for name in ("x.npy", "good.png", "cut.jpg")]
    proc = subprocess.run([sys.executable, "-c", SERVE_SCRIPT, *files, *exports],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    for path, expected in exports.items():
        _close(np.load(path + ".served.npy"), expected)
    assert len(_printed_ranges(proc.stderr)) == len(exports)
    assert "`image_bytes[1]` starts as a JPEG file but could not be decoded" in proc.stdout


# --------------------------------------------------------------------------
# F0 structure.


@pytest.mark.slow  # the real 71M-parameter graph; every path runs on tiny models by default
def test_f0_export_round_trip_and_folding(f0):
    model, saved_model_dir = f0
    assert model.count_params() == 71_489_284  # reference doc §2
    x = _images(2, F0_SIZE, seed=16)
    expected = model(x).numpy()
    assert expected.shape == (2, 1000)
    loaded = tf.saved_model.load(saved_model_dir)
    _close(loaded(tf.constant(x)), expected)
    _close(loaded.signatures["serving_default"](images=tf.constant(x))["logits"], expected)
    png = _encoded("png", seed=17)
    _close(
        loaded.signatures["serving_bytes"](image_bytes=tf.constant([png]))["logits"],
        model(preprocessing.eval_transform(png, deepmind_eval(F0_SIZE))[None]).numpy(),
    )
    _close(nfnet_keras.fold_for_inference(model)(x), expected)
    layer = keras.layers.TFSMLayer(saved_model_dir, call_endpoint="serve")
    inputs = keras.Input((F0_SIZE, F0_SIZE, 3))
    _close(keras.Model(inputs, layer(inputs))(x), expected)


# --------------------------------------------------------------------------
# Bundle and command line.


def test_bundle_tarball_card_and_kaggle_metadata(tiny):
    with tarfile.open(tiny.tarball) as tar:
        names = tar.getnames()
    assert "saved_model.pb" in names
    assert any(n.startswith("variables/variables.data") for n in names)
    assert "variables/variables.index" in names
    assert not any(os.path.basename(n).startswith(".") or n.startswith("/") for n in names)
    with open(tiny.model_card) as f:
        card = f.read()
    assert card.startswith("# Module ")
    for needle in ("<!-- task: image-classification -->", "<!-- format: saved_model_2 -->",
                   "## Overview", "## Inputs and outputs", "## Usage", "TFSMLayer",
                   "hub.KerasLayer", "hub.load", "## Fine-tuning", "## Training data",
                   "## Metrics", "## License", "## Citation", "brock2021high",
                   "serving_bytes", "[batch, 10]", "values outside\n[-0.28125, 1.28125]",
                   "naming its index"):
        assert needle in card, needle
    for path in tiny.kaggle_metadata:
        with open(path) as f:
            content = json.load(f)
        assert content["ownerSlug"]
    instance = json.load(open(os.path.join(os.path.dirname(tiny.tarball), "model-instance-metadata.json")))
    assert instance["framework"] == "tensorFlow2" and instance["fineTunable"] is True


def test_cli_rejects_bad_arguments_before_writing(tmp_path, capsys):
    out = tmp_path / "out"
    assert export_lib.main(["--model", "nfnet_f9", "--out", str(out)]) == 2
    assert "Unknown model name 'nfnet_f9'" in capsys.readouterr().err
    assert not out.exists()
    missing = str(tmp_path / "missing.weights.h5")
    assert export_lib.main(["--model", "nfnet_tiny", "--weights", missing, "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    assert not out.exists()
    with pytest.raises(ValueError, match="image_size"):
        export_lib.export("nfnet_tiny", str(out), image_size=16, log=None)
    with pytest.raises(ValueError, match="output"):
        export_lib.export("nfnet_tiny", str(out), output="logits", log=None)
    assert not out.exists()


def test_cli_writes_verified_export(tmp_path, tiny_weights, capsys):
    out = tmp_path / "cli"
    code = export_lib.main(["--model", "nfnet_tiny", "--weights", tiny_weights, "--classes",
                            str(TINY_CLASSES), "--image_size", "32", "--fold", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "Verified: reloaded SavedModel matches the Keras model" in printed
    assert (out / "saved_model" / "saved_model.pb").exists()
    assert (out / "nfnet_tiny_classification.tar.gz").exists()


def test_hub_environment_pins():
    import setuptools
    import tf_keras

    import tensorflow_hub as hub

    assert hub.__version__
    # tf_keras must match TensorFlow's minor version; tensorflow_hub imports
    # pkg_resources, removed in setuptools 82.
    assert tf_keras.__version__.split(".")[:2] == tf.__version__.split(".")[:2]
    assert int(setuptools.__version__.split(".")[0]) < 82
