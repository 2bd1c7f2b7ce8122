"""The model registry: listed names, lookup by name, round trips, no name
parsing, no import side effects."""

import os
import re
import subprocess
import sys

import pytest

import nfnet_keras
from nfnet_keras.models import get_architecture, registry
from nfnet_keras.weights import rows as checkpoint_rows

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_list_models_hides_test_rows_and_round_trips():
    names = nfnet_keras.list_models()
    assert not any("tiny" in name for name in names)
    # F0-F7, 5 + 3 NF-ResNets, 6 + 6 NF-RegNets, timm's L0 + ECA-L0...L3,
    # 3 SE + 3 ECA NF-ResNets
    assert len(names) == 39
    for name in names:
        row = get_architecture(name)
        assert row.name == name and row.public
        assert getattr(nfnet_keras, row.constructor).architecture is row
    assert nfnet_keras.list_models(pretrained=True) == sorted(
        {row.architecture for row in checkpoint_rows.CHECKPOINTS}
    )
    assert "nfnet_tiny" in registry.ARCHITECTURES  # still buildable by name


@pytest.mark.slow  # the parameter-count tests build every listed row but nf_resnet26
def test_every_listed_name_builds(count_params):
    for name in nfnet_keras.list_models():
        assert count_params(name) > 1_000_000, name


def test_unknown_name_is_refused():
    with pytest.raises(ValueError, match="Unknown model name 'nfnet_f9'"):
        nfnet_keras.get_model("nfnet_f9")


def test_no_name_is_taken_apart_outside_the_registry():
    # Names are looked up, never parsed: no prefix tests or splits of model
    # names, no "module:function" strings resolved with importlib.
    pattern = re.compile(
        r"startswith\(\"(nfnet_(?!keras)|nf_|timm_|dm_)|removeprefix\(\"(nf|timm)|"
        r"\.split\(\"_\"\)|importlib\.import_module|\"nf_resnettiny\""
    )
    offenders = []
    for folder in ("nfnet_keras", "training", "export", "benchmarks", "tests"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, folder)):
            for file in files:
                if not file.endswith(".py") or file == "test_registry.py":
                    continue
                path = os.path.join(dirpath, file)
                with open(path) as f:
                    for number, line in enumerate(f, 1):
                        if pattern.search(line):
                            offenders.append(f"{os.path.relpath(path, ROOT)}:{number}: {line.strip()}")
    assert offenders == []


def test_import_has_no_side_effects():
    code = (
        "import sys; before = sys.getrecursionlimit(); import nfnet_keras; "
        "assert sys.getrecursionlimit() == before, sys.getrecursionlimit(); "
        "assert sorted(nfnet_keras.__all__) == sorted(set(nfnet_keras.__all__)); "
        "[getattr(nfnet_keras, n) for n in nfnet_keras.__all__]; print('ok')"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.strip() == "ok", result.stderr[-2000:]


def test_rows_carry_the_pooled_width_in_the_docstrings():
    f0 = get_architecture("nfnet_f0")
    assert f0.pooled_features == 3072
    assert "Pooled feature width (`include_top=False, pooling=\"avg\"`): 3072" in nfnet_keras.NFNetF0.__doc__
    assert get_architecture("nf_resnet50").pooled_features == 2048


def test_get_model_lookup():
    assert nfnet_keras.get_model("nfnet_tiny", weights=None, include_preprocessing=False, input_shape=(32, 32, 3), classes=3).output.shape == (None, 3)
    with pytest.raises(ValueError, match="nfnet_f0"):
        nfnet_keras.get_model("nfnet_f9", weights=None, include_preprocessing=False)
