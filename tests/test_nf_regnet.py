"""The NF-RegNet rows (`nfnet_keras/models/nf_regnet.py`): DeepMind's
NF-RegNets (parameter counts) and their timm convention (layer names and
initial gains, drop-path schedule against timm). The timm convention's
counts and forward parity, tested across NF-ResNets and NF-RegNets, are in
`test_builder.py`."""

import numpy as np
import pytest

import nfnet_keras
from nfnet_keras.models import get_architecture


# --- DeepMind convention -------------------------------------------------------


@pytest.mark.parametrize("variant", ["b0", "b1", "b2", "b3", "b4", "b5"])
def test_nf_regnet_parameter_count(variant, count_params):
    row = get_architecture(f"nf_regnet_{variant}")
    assert round(count_params(row.name) / 1e6, 2) == row.params / 1e6


# --- timm convention (TimmNFRegNetB0 ... B5) --------------------------------------


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
    from _timm import timm

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
