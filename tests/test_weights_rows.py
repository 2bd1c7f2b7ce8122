"""The published checkpoint rows (`nfnet_keras.weights.rows`): complete, and
agreeing with the model rows and with timm's `pretrained_cfg`."""

import dataclasses
import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

import nfnet_keras  # noqa: E402
from nfnet_keras import weights as weights_lib  # noqa: E402
from nfnet_keras.models import get_architecture, list_models  # noqa: E402


def test_every_row_is_complete():
    assert len(weights_lib.CHECKPOINTS) == 20  # F0-F6 x (DeepMind, timm) + 2 timm NF + 4 light NFNets
    seen = set()
    for row in weights_lib.CHECKPOINTS:
        for field in dataclasses.fields(row):
            value = getattr(row, field.name)
            assert value is not None and value != "", (row.name, field.name)
        assert (row.architecture, row.source) not in seen
        seen.add((row.architecture, row.source))
        assert row.url.startswith("https://")
        suffix = {"haiku": ".npz", "timm": ".pth"}[row.file_format]
        assert row.file_name.endswith(suffix)
        int(row.file_hash, 16)
        expected_length = {"md5": (32,), "sha256": (8, 64)}[row.hash_algorithm]
        assert len(row.file_hash) in expected_length, row
        if row.source == "timm":  # timm file names carry their SHA-256 prefix
            assert row.file_name.rsplit("-", 1)[1].startswith(row.file_hash)
        t = row.eval_transform
        assert 0 < t.size <= t.resize and t.interpolation == "bicubic"  # crop 1.0: equal
        assert 75.0 < row.top1 < 90.0
        # No hash has been checked against the real files here (no network).
        assert row.hash_verified is False
    assert weights_lib.checkpoint("nfnet_f0").source == "deepmind"


def test_rows_agree_with_the_model_rows_and_with_timm():
    from _timm import timm

    for row in weights_lib.CHECKPOINTS:
        t = row.eval_transform
        model_row = get_architecture(row.architecture)
        if model_row.family == "nfnet":
            assert t.size == model_row.test_size
        if row.source == "deepmind":
            # resize_crop_32 (reference doc §8.1), README top-1 (§2).
            assert t.resize == t.size + 32 and not t.keep_aspect and not t.antialias
            assert row.top1 == model_row.top1
            continue
        name = {
            "timm_nf_resnet50.ra2_in1k": "nf_resnet50.ra2_in1k",
            "timm_nf_regnet_b1.ra2_in1k": "nf_regnet_b1.ra2_in1k",
        }.get(row.name, f"{model_row.timm_name}.{'dm_in1k' if row.tag == 'timm' else row.tag}")
        cfg = timm.models.get_pretrained_cfg(name)
        assert cfg.url == row.url
        assert cfg.test_input_size[-1] == t.size
        assert t.resize == int(t.size / (cfg.test_crop_pct or cfg.crop_pct))
        assert t.keep_aspect == (cfg.crop_mode != "squash")
        assert cfg.interpolation == "bicubic" and t.antialias


def test_every_checkpoint_resolves_to_a_listed_model():
    for row in weights_lib.CHECKPOINTS:
        assert row.architecture in list_models(pretrained=True)
        assert weights_lib.checkpoint(row.name) is row
        constructor = getattr(nfnet_keras, get_architecture(row.architecture).constructor)
        assert constructor.architecture.name == row.architecture
    assert {row.name for row in weights_lib.CHECKPOINTS} >= {"nfnet_f0.dm_in1k", "nfnet_f0.timm"}
