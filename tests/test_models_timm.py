"""timm's NF-ResNet / NF-RegNet architectures against timm itself (the oracle)."""

import os
import sys

import keras
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _timm import randomize_timm, timm, timm_outputs, torch  # noqa: E402

import nfnet_keras  # noqa: E402
from nfnet_keras.convert.timm import load_timm_state_dict  # noqa: E402
from nfnet_keras.models import builder  # noqa: E402
from conftest import randomize  # noqa: E402

# (Keras constructor, timm model name, converter rule set)
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


@pytest.fixture(scope="module")
def timm_models():
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = randomize_timm(timm.create_model(name))
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_parameter_count_matches_timm(name, count_params):
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
    rng = np.random.default_rng(0)
    x = -np.abs(rng.standard_normal((2, *size, 3))).astype("float32") - 1.0
    ours = np.asarray(builder.SymmetricMaxPooling2D(3, 2, 1)(x))
    ref = torch.nn.MaxPool2d(3, stride=2, padding=1)(
        torch.from_numpy(np.transpose(x, (0, 3, 1, 2)).copy())
    )
    np.testing.assert_array_equal(ours, np.transpose(ref.numpy(), (0, 2, 3, 1)))


def test_layer_names_and_init():
    model = nfnet_keras.TimmNFRegNetB0(weights=None, include_preprocessing=False, input_shape=(64, 64, 3))
    names = {layer.name for layer in model.layers}
    for expected in (
        "stem_conv0",
        "stage0_block0_preact",
        "stage0_block0_shortcut_pool",
        "stage0_block0_shortcut_conv",
        "stage0_block0_conv0",
        "stage0_block0_conv1",
        "stage0_block0_se",
        "stage0_block0_conv2",
        "stage0_block0_add",
        "final_conv",
        "final_act",
        "predictions",
    ):
        assert expected in names
    # timm skipinit=False: the last conv's gain starts at 0, the others at 1;
    # no scalar skip gain.
    np.testing.assert_array_equal(model.get_layer("stage1_block0_conv2").gain.numpy(), 0.0)
    np.testing.assert_array_equal(model.get_layer("stage1_block0_conv1").gain.numpy(), 1.0)
    assert not any(layer.name.endswith("skip_gain") for layer in model.layers)
    assert model.get_layer("stem_conv0").convention == "timm"


def test_drop_path_schedule_matches_timm():
    reference = timm.create_model("nf_regnet_b0", drop_path_rate=0.1)
    expected = {}
    for stage, blocks in enumerate(reference.stages):
        for block, module in enumerate(blocks):
            rate = getattr(module.drop_path, "drop_prob", 0.0)
            if rate > 0:
                expected[f"stage{stage}_block{block}_drop_path"] = rate
                assert module.drop_path.scale_by_keep
    model = nfnet_keras.TimmNFRegNetB0(weights=None, include_preprocessing=False, input_shape=(64, 64, 3), stochastic_depth_rate=0.1)
    got = {
        layer.name: layer.rate for layer in model.layers if layer.name.endswith("drop_path")
    }
    assert got.keys() == expected.keys()
    for key, rate in expected.items():
        assert got[key] == pytest.approx(rate, abs=1e-7)
        assert model.get_layer(key).scale_by_keep


def test_wrong_architecture_is_refused(timm_models):
    model = nfnet_keras.TimmNFResNet26(weights=None, include_preprocessing=False, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match=r"unused tensors[\s\S]*stages\.2\.2\.conv1"):
        load_timm_state_dict(model, timm_models("nf_resnet50").state_dict(), arch="timm_nf_resnet")
    with pytest.raises(ValueError, match="arch"):
        load_timm_state_dict(model, {}, arch="nf_resnet")


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
