"""timm's light NFNets and attention NF-ResNets against timm itself (the oracle):
exact parameter counts, forward parity on randomised parameters, and their
checkpoints through `weights=`."""

import os
import sys

import keras
import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
from _timm import randomize_timm, timm, timm_outputs, torch  # noqa: E402

import nfnet_keras  # noqa: E402
from nfnet_keras.convert.timm import load_timm_state_dict  # noqa: E402
from nfnet_keras.models import get_architecture  # noqa: E402
from nfnet_keras.weights import rows as checkpoint_rows  # noqa: E402

NAMES = (
    "nfnet_l0", "eca_nfnet_l0", "eca_nfnet_l1", "eca_nfnet_l2", "eca_nfnet_l3",
    "nf_seresnet26", "nf_seresnet50", "nf_seresnet101",
    "nf_ecaresnet26", "nf_ecaresnet50", "nf_ecaresnet101",
)
PRETRAINED = ("nfnet_l0", "eca_nfnet_l0", "eca_nfnet_l1", "eca_nfnet_l2")
SIZE = (67, 45)  # odd, non-square: exercises timm's symmetric padding and ceil-mode pools


def _tolerance(reference):
    return 1e-4 * max(1.0, float(np.abs(reference).max()))


# ---------------------------------------------------------------------------
# The rows: names, constructors, exact parameter counts.


# The counts take seconds each: slow, but for nf_ecaresnet50 (ECA kernels of
# 5 and 7). The default parity tests load every tensor of three more rows,
# all or nothing, shape-checked: their counts are timm's too.
@pytest.mark.parametrize(
    "name", [n if n == "nf_ecaresnet50" else pytest.param(n, marks=pytest.mark.slow) for n in NAMES]
)
def test_rows_match_timm(name, count_params):
    row = get_architecture(name)
    assert row.timm_name == name and name in nfnet_keras.list_models()
    assert getattr(nfnet_keras, row.constructor).architecture is row
    # Shapes only, on both sides: timm's modules on the meta device, Keras's
    # variables in a StatelessScope.
    reference = timm.create_model(name, device="meta")
    expected = sum(p.numel() for p in reference.parameters())
    assert count_params(name) == expected
    assert row.params == expected
    cfg = reference.pretrained_cfg
    assert row.test_size == (cfg.get("test_input_size") or cfg["input_size"])[1]
    assert row.train_size == cfg["input_size"][1]
    assert row.pooled_features == reference.num_features
    assert (name in PRETRAINED) == bool(checkpoint_rows.checkpoints(name))


def test_pretrained_rows_are_timms_default_cfgs():
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


# ---------------------------------------------------------------------------
# Forward parity on randomised parameters.


def _parity(name, tmp_path, file_kind=None, size=SIZE, seed=0):
    """timm's logits and pooled features against the Keras model's, the
    weights assigned by name (or read back from a file the test writes)."""
    reference = randomize_timm(timm.create_model(name), seed=seed)
    images = np.random.default_rng(seed + 1).standard_normal((2, *size, 3)).astype("float32")
    ref_pooled, ref_logits = timm_outputs(reference, images)
    row = get_architecture(name)
    constructor = nfnet_keras.get_model
    kwargs = dict(include_preprocessing=False, input_shape=(*size, 3))
    state = reference.state_dict()
    if file_kind is None:
        model = constructor(name, weights=None, classifier_activation=None, **kwargs)
        load_timm_state_dict(model, state, arch=row.timm_layout)
    else:
        path = str(tmp_path / f"{name}.{file_kind}")
        if file_kind == "pth":
            torch.save(state, path)
        else:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, path)
        model = constructor(name, weights=path, classifier_activation=None, **kwargs)
    logits = keras.ops.convert_to_numpy(model(images))  # eager: no graph tracing
    assert np.abs(ref_logits).max() > 0.1  # the head is not trivially zero
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=_tolerance(ref_logits))
    # The pooled features, from the same layers.
    pooled = keras.ops.convert_to_numpy(keras.Model(model.input, model.get_layer("avg_pool").output)(images))
    np.testing.assert_allclose(pooled, ref_pooled, rtol=0, atol=_tolerance(ref_pooled))
    return model


# The default suite: one NFNet with SE, one with ECA (through a timm file each),
# one attention NF-ResNet.
@pytest.mark.parametrize(
    "name, file_kind",
    [("nfnet_l0", "safetensors"), ("eca_nfnet_l0", "pth"), ("nf_seresnet50", None)],
)
def test_matches_timm(name, file_kind, tmp_path):
    _parity(name, tmp_path, file_kind)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["eca_nfnet_l1", "eca_nfnet_l2", "eca_nfnet_l3", "nf_ecaresnet101",
             "nf_seresnet26", "nf_seresnet101", "nf_ecaresnet26", "nf_ecaresnet50"]
)
def test_deeper_variants_match_timm(name, tmp_path):
    _parity(name, tmp_path)


@pytest.mark.slow
@pytest.mark.parametrize("name", PRETRAINED)
@pytest.mark.parametrize("file_kind", ["pth", "safetensors"])
def test_every_pretrained_architecture_loads_timm_files(name, file_kind, tmp_path):
    _parity(name, tmp_path, file_kind, size=(33, 35), seed=3)


def test_file_of_another_architecture_is_refused(tmp_path):
    # eca_nfnet_l1's file into nfnet_l0: L0's SE weights are missing, L1's ECA
    # kernels and deeper blocks unused, and its final conv is 3072 wide, not
    # 2304; the error lists each, and nothing is assigned.
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
