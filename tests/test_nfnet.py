"""The NFNet rows (`nfnet_keras/models/nfnet.py`): NFNet-F0...F7 (parameter
counts, signal-propagation betas, feature shapes, forward parity with timm)
and timm's light NFNets (rows, checkpoints and forward parity against timm)."""

import keras
import numpy as np
import pytest

import nfnet_keras
from nfnet_keras.convert.timm import load_timm_state_dict
from nfnet_keras.models import get_architecture
from nfnet_keras.weights import rows as checkpoint_rows

# deepmind-research README / reference doc §2 (derived from the code's shapes).
PUBLISHED_NFNET_PARAMS = {
    "nfnet_f0": 71_489_284, "nfnet_f1": 132_634_256, "nfnet_f2": 193_779_228,
    "nfnet_f3": 254_924_200, "nfnet_f4": 316_069_172, "nfnet_f5": 377_214_144,
    "nfnet_f6": 438_359_116, "nfnet_f7": 499_504_088,
}

# timm's light NFNets, and those with published weights.
LIGHT_NFNETS = ("nfnet_l0", "eca_nfnet_l0", "eca_nfnet_l1", "eca_nfnet_l2", "eca_nfnet_l3")
PRETRAINED = ("nfnet_l0", "eca_nfnet_l0", "eca_nfnet_l1", "eca_nfnet_l2")


# --- NFNet-F0...F7 -------------------------------------------------------------


@pytest.mark.parametrize("name", [f"nfnet_f{i}" for i in range(8)])
def test_nfnet_parameter_count_is_exact(name, count_params):
    # Reference doc §2: derived counts that reproduce the DeepMind README.
    assert count_params(name) == get_architecture(name).params == PUBLISHED_NFNET_PARAMS[name]


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


@pytest.fixture(scope="module")
def timm_f0():
    from _timm import randomize_timm, timm

    return randomize_timm(timm.create_model("dm_nfnet_f0"))


# The odd, non-square size (uneven "SAME" padding at every stride) runs by
# default; F0's train and test sizes run with `-m slow`.
@pytest.mark.parametrize(
    "size",
    [pytest.param((192, 192), marks=pytest.mark.slow), pytest.param((256, 256), marks=pytest.mark.slow), (223, 255)],
)
def test_nfnet_f0_matches_timm(timm_f0, size):
    from _timm import timm_outputs

    rng = np.random.default_rng(1)
    images = rng.standard_normal((2, *size, 3)).astype("float32")
    ref_features, ref_logits = timm_outputs(timm_f0, images)

    model = nfnet_keras.NFNetF0(
        weights=None, include_preprocessing=False, input_shape=(*size, 3), classifier_activation=None, convention="timm"
    )
    load_timm_state_dict(model, timm_f0.state_dict())
    logits = model.predict(images, verbose=0)
    features = nfnet_keras.NFNetF0(
        weights=None, include_preprocessing=False, include_top=False, pooling="avg", input_shape=(*size, 3), convention="timm"
    )
    features.set_weights(model.get_weights()[: len(features.weights)])
    pooled = features.predict(images, verbose=0)

    tol = 1e-4 * max(1.0, float(np.abs(ref_logits).max()))
    assert np.abs(ref_logits).max() > 0.1  # the head is not trivially zero
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=tol)
    np.testing.assert_allclose(
        pooled, ref_features, rtol=0, atol=1e-4 * max(1.0, float(np.abs(ref_features).max()))
    )


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["F1", "F2", "F3", "F4", "F5", "F6"])
def test_deeper_nfnets_match_timm(variant):
    # Every released variant's structure (depths) against timm, at 128 px.
    from _timm import randomize_timm, timm, timm_outputs

    reference = randomize_timm(timm.create_model(f"dm_nfnet_{variant.lower()}"), seed=2)
    images = np.random.default_rng(3).standard_normal((1, 128, 128, 3)).astype("float32")
    _, ref_logits = timm_outputs(reference, images)
    model = getattr(nfnet_keras, f"NFNet{variant}")(
        input_shape=(128, 128, 3), classifier_activation=None, convention="timm"
    )
    load_timm_state_dict(model, reference.state_dict())
    logits = model.predict(images, verbose=0)
    tol = 1e-4 * max(1.0, float(np.abs(ref_logits).max()))
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=tol)


# --- timm's light NFNets ---------------------------------------------------------


# The counts take seconds each: slow. The default parity tests load every
# tensor of nfnet_l0 and eca_nfnet_l0, all or nothing, shape-checked: their
# counts are timm's too.
@pytest.mark.slow
@pytest.mark.parametrize("name", LIGHT_NFNETS)
def test_rows_match_timm(name, count_params):
    from _timm import assert_row_matches_timm

    assert_row_matches_timm(name, count_params, PRETRAINED)


def test_pretrained_rows_are_timms_default_cfgs():
    from _timm import timm

    for name in PRETRAINED:
        row = checkpoint_rows.checkpoint(name)
        cfg = timm.models.get_pretrained_cfg(f"{name}.{row.tag}")
        assert row.url == cfg.url and cfg.url.rsplit("-", 1)[1].startswith(row.file_hash)
        assert (row.source, row.file_format, row.hash_algorithm) == ("timm", "timm", "sha256")
        t = row.eval_transform
        assert t.size == cfg.test_input_size[-1] == get_architecture(name).test_size
        assert cfg.test_crop_pct == 1.0 and t.resize == t.size  # crop 1.0: resize = crop
        assert t.keep_aspect and cfg.crop_mode == "center" and t.interpolation == cfg.interpolation
        assert row.top1 == get_architecture(name).top1
        assert row.top1_source == f"timm results/results-imagenet.csv ({name}.{row.tag} @{t.size})"
        assert row.citation and row.license


# The default suite: one NFNet with SE, one with ECA, through a timm file each.
@pytest.mark.parametrize("name, file_kind", [("nfnet_l0", "safetensors"), ("eca_nfnet_l0", "pth")])
def test_matches_timm(name, file_kind, tmp_path):
    from _timm import assert_forward_matches_timm

    assert_forward_matches_timm(name, tmp_path, file_kind)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["eca_nfnet_l1", "eca_nfnet_l2", "eca_nfnet_l3"])
def test_deeper_variants_match_timm(name, tmp_path):
    from _timm import assert_forward_matches_timm

    assert_forward_matches_timm(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", PRETRAINED)
@pytest.mark.parametrize("file_kind", ["pth", "safetensors"])
def test_every_pretrained_architecture_loads_timm_files(name, file_kind, tmp_path):
    from _timm import assert_forward_matches_timm

    assert_forward_matches_timm(name, tmp_path, file_kind, size=(33, 35), seed=3)


def test_file_of_another_architecture_is_refused(tmp_path):
    # eca_nfnet_l1's file into nfnet_l0: L0's SE weights are missing, L1's ECA
    # kernels and deeper blocks unused, and its final conv is 3072 wide, not
    # 2304; the error lists each, and nothing is assigned.
    from _timm import timm
    from safetensors.torch import save_file

    path = str(tmp_path / "eca_nfnet_l1.safetensors")
    save_file(timm.create_model("eca_nfnet_l1", device="meta").to_empty(device="cpu").state_dict(), path)
    keras.utils.set_random_seed(0)
    with pytest.raises(ValueError) as error:
        nfnet_keras.NFNetL0(weights=path, include_preprocessing=False, input_shape=(32, 32, 3))
    message = str(error.value)
    for heading, name in [
        ("missing from the state dict", "stages.0.0.attn_last.fc1.weight"),
        ("unused tensors of the state dict", "stages.0.0.attn_last.conv.weight"),
        ("unused tensors of the state dict", "stages.3.5.conv3.weight"),
        ("shape mismatches", "final_conv.weight: file (3072, 1536, 1, 1), expected (2304, 1536, 1, 1)"),
    ]:
        assert heading in message and name in message, (heading, name)
