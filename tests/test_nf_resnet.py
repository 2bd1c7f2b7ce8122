"""The NF-ResNet rows (`nfnet_keras/models/nf_resnet.py`): DeepMind's
NF-ResNets (parameter counts), their timm convention (a state dict of another
depth is refused) and timm's attention NF-ResNets (rows and forward parity
against timm). The timm convention's counts and forward parity, tested
across NF-ResNets and NF-RegNets, are in `test_builder.py`."""

import pytest

import nfnet_keras
from nfnet_keras.convert.timm import load_timm_state_dict
from nfnet_keras.models import get_architecture

# timm's attention NF-ResNets (no published weights).
ATTENTION_NF_RESNETS = (
    "nf_seresnet26", "nf_seresnet50", "nf_seresnet101",
    "nf_ecaresnet26", "nf_ecaresnet50", "nf_ecaresnet101",
)


# --- DeepMind convention -------------------------------------------------------


@pytest.mark.parametrize("variant", ["50", "101", "152", "200"])
@pytest.mark.parametrize("use_se", [False, True])
def test_nf_resnet_parameter_count(variant, use_se, count_params):
    row = get_architecture(f"nf_resnet{variant}")
    expected = row.params_se if use_se else row.params
    # The reference gives these counts to 0.01M (derived from the code).
    assert round(count_params(row.name, use_se=use_se) / 1e6, 2) == expected / 1e6


def test_nf_resnet50_count_equals_timm_plus_skip_gains(count_params):
    # timm's nf_resnet50 has the same convolutions (pooling has no weights)
    # but no scalar skip gain per block: ours = timm + number of blocks.
    from _timm import timm

    reference = sum(p.numel() for p in timm.create_model("nf_resnet50").parameters())
    blocks = sum(get_architecture("nf_resnet50").depths)
    assert count_params("nf_resnet50") == reference + blocks


# --- timm convention (TimmNFResNet26, 50, 101) -----------------------------------


def test_wrong_architecture_is_refused(timm_models):
    model = nfnet_keras.TimmNFResNet26(weights=None, include_preprocessing=False, input_shape=(64, 64, 3))
    with pytest.raises(ValueError, match=r"unused tensors[\s\S]*stages\.2\.2\.conv1"):
        load_timm_state_dict(model, timm_models("nf_resnet50").state_dict(), arch="timm_nf_resnet")
    with pytest.raises(ValueError, match="arch"):
        load_timm_state_dict(model, {}, arch="nf_resnet")


# --- timm's attention NF-ResNets -------------------------------------------------


# The counts take seconds each: slow, but for nf_ecaresnet50 (ECA kernels of
# 5 and 7). The default parity test loads every tensor of nf_seresnet50, all
# or nothing, shape-checked: its count is timm's too.
@pytest.mark.parametrize(
    "name",
    [n if n == "nf_ecaresnet50" else pytest.param(n, marks=pytest.mark.slow) for n in ATTENTION_NF_RESNETS],
)
def test_rows_match_timm(name, count_params):
    from _timm import assert_row_matches_timm

    assert_row_matches_timm(name, count_params, pretrained=())


# The default suite: one attention NF-ResNet, its tensors assigned by name.
@pytest.mark.parametrize("name, file_kind", [("nf_seresnet50", None)])
def test_matches_timm(name, file_kind, tmp_path):
    from _timm import assert_forward_matches_timm

    assert_forward_matches_timm(name, tmp_path, file_kind)


@pytest.mark.slow
@pytest.mark.parametrize(
    "name", ["nf_ecaresnet101", "nf_seresnet26", "nf_seresnet101", "nf_ecaresnet26", "nf_ecaresnet50"]
)
def test_deeper_variants_match_timm(name, tmp_path):
    from _timm import assert_forward_matches_timm

    assert_forward_matches_timm(name, tmp_path)
