"""`pyramid_outputs`: P1...P5 at strides 2...32, their widths, timm's
`features_only` taps, and a two-output detection-style model that trains."""

import os
import sys

import keras
import numpy as np
import pytest

import nfnet_keras
from conftest import randomize  # noqa: E402 - tests/ is on sys.path
from nfnet_keras.models import builder, get_architecture


@pytest.mark.parametrize(
    "name, include_top",
    [("nfnet_f0", True), ("nf_resnet50", False), ("eca_nfnet_l0", False), ("timm_nf_regnet_b0", False)],
)
def test_pyramid_strides_and_widths_at_256(name, include_top):
    # F0's default input is 256 px; the others are built at 256 px without the top.
    row = get_architecture(name)
    with keras.StatelessScope(initialize_variables=False):  # shapes only: no weights
        model = nfnet_keras.get_model(
            name, weights=None, include_top=include_top, input_shape=None if include_top else (256, 256, 3)
        )
        pyramid = model.pyramid_outputs
    assert list(pyramid) == ["P1", "P2", "P3", "P4", "P5"]
    sizes = [tuple(pyramid[key].shape[1:3]) for key in pyramid]
    assert sizes == [(128, 128), (64, 64), (32, 32), (16, 16), (8, 8)]
    widths = [pyramid[key].shape[-1] for key in pyramid]
    assert widths == list(builder.pyramid_widths(row))
    doc = getattr(nfnet_keras, row.constructor).__doc__
    assert ", ".join(f"P{i} {w} channels" for i, w in enumerate(widths, 1)) in doc
    keras.backend.clear_session()


def test_pyramid_is_timms_features_only():
    # timm's nf_resnet26 has no final conv: its five `features_only` taps are
    # P1...P5 exactly (odd, non-square input).
    sys.path.insert(0, os.path.dirname(__file__))
    from _timm import randomize_timm, timm, torch
    from nfnet_keras.convert.timm import load_timm_state_dict

    reference = randomize_timm(timm.create_model("nf_resnet26"))
    images = np.random.default_rng(0).standard_normal((1, 67, 45, 3)).astype("float32")
    with torch.inference_mode():
        taps = reference.forward_intermediates(
            torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), intermediates_only=True
        )
    model = nfnet_keras.TimmNFResNet26(weights=None, include_top=False, include_preprocessing=False, input_shape=(67, 45, 3))
    load_timm_state_dict(model, reference.state_dict(), arch="timm_nf_resnet", skip=r"head\.fc\.")
    features = keras.Model(model.input, model.pyramid_outputs)(images)
    assert len(taps) == 5
    for i, tap in enumerate(taps, 1):
        expected = tap.numpy().transpose(0, 2, 3, 1)
        got = keras.ops.convert_to_numpy(features[f"P{i}"])
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-4 * max(1.0, float(np.abs(expected).max())))


def test_detection_style_model_trains_one_step():
    keras.utils.set_random_seed(0)
    # No drop path: a dropped branch would leave its skip gain's gradient at 0.
    backbone = nfnet_keras.get_model(
        "nfnet_tiny", weights=None, include_top=False, input_shape=(64, 64, 3), stochastic_depth_rate=0.0
    )
    p = backbone.pyramid_outputs
    boxes = keras.layers.Conv2D(4, 1, name="boxes")(p["P3"])  # stride 8: 8x8 cells
    classes = keras.layers.Conv2D(3, 1, name="classes")(p["P5"])  # stride 32: 2x2 cells
    detector = keras.Model(backbone.inputs, {"boxes": boxes, "classes": classes})
    detector.compile(optimizer=keras.optimizers.SGD(0.01), loss={"boxes": "mse", "classes": "mse"})
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    y = {"boxes": rng.standard_normal((2, 8, 8, 4)).astype("float32"),
         "classes": rng.standard_normal((2, 2, 2, 3)).astype("float32")}
    before = {w.path: w.numpy().copy() for w in backbone.trainable_weights}
    history = detector.fit(x, y, epochs=1, batch_size=2, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    # The backbone trained: its stem and every block's skip gain (the only
    # path into a SkipInit residual branch at initialisation) moved.
    moved = [w.path for w in backbone.trainable_weights if not np.array_equal(before[w.path], w.numpy())]
    assert any(p.startswith("stem_conv0/") for p in moved)
    assert {f"stage{i}_block0_skip_gain/skip_gain" for i in range(4)} <= set(moved), moved


def test_pyramid_outputs_survive_keras_reload(tmp_path):
    model = randomize(nfnet_keras.get_model("nfnet_tiny", weights=None, include_top=False, input_shape=(64, 48, 3)))
    path = tmp_path / "backbone.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    assert loaded.get_config()["pyramid_layers"] == model.pyramid_layers
    assert list(loaded.pyramid_outputs) == ["P1", "P2", "P3", "P4", "P5"]
    shapes = [tuple(t.shape) for t in loaded.pyramid_outputs.values()]
    assert shapes == [tuple(t.shape) for t in model.pyramid_outputs.values()]
    assert [s[1:3] for s in shapes] == [(32, 24), (16, 12), (8, 6), (4, 3), (2, 2)]
    images = np.random.default_rng(0).uniform(0, 255, (2, 64, 48, 3)).astype("float32")
    expected = keras.Model(model.input, model.pyramid_outputs)(images)
    got = keras.Model(loaded.input, loaded.pyramid_outputs)(images)
    for key in expected:
        np.testing.assert_array_equal(keras.ops.convert_to_numpy(got[key]), keras.ops.convert_to_numpy(expected[key]))
