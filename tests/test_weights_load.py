"""`weights=` (`nfnet_keras.weights.load`): the registry's ImageNet weights,
the converted-file cache, Keras files, files of another architecture and bad
arguments.

No network: downloads come from file:// URLs.
"""

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _haiku_files as hf  # noqa: E402
from conftest import assert_holds, cached_file, cached_files, tiny_nfnet  # noqa: E402

import nfnet_keras  # noqa: E402
from nfnet_keras import weights as weights_lib  # noqa: E402
from nfnet_keras.models import get_architecture  # noqa: E402


def test_timm_checkpoint_refused_by_a_deepmind_architecture(tmp_path):
    # timm's nf_resnet50 weights belong to timm's own architecture
    # (reference doc §6), not to DeepMind's NF-ResNet-50.
    from _timm import timm, torch

    path = str(tmp_path / "nf_resnet50.pth")
    torch.save(timm.create_model("nf_resnet26").state_dict(), path)
    with pytest.raises(ValueError, match="TimmNFResNet50"):
        nfnet_keras.NFResNet("tiny", include_preprocessing=False, input_shape=(32, 32, 3), weights=path)


def test_timm_nf_regnet_file_loads_into_the_timm_architecture(tmp_path):
    from _timm import randomize_timm, timm, torch

    reference = randomize_timm(timm.create_model("nf_regnet_b0"))  # non-trivial values everywhere
    path = str(tmp_path / "nf_regnet_b0.pth")
    torch.save(reference.state_dict(), path)
    model = nfnet_keras.TimmNFRegNetB0(include_preprocessing=False, input_shape=(64, 64, 3), classifier_activation=None, weights=path)
    images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype("float32")
    with torch.inference_mode():
        expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    got = model(images).numpy()  # eager: no predict-function trace
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, float(np.abs(expected).max())))


def test_unknown_variant_has_no_imagenet_weights():
    model = nfnet_keras.NFNet("tiny", weights=None, include_preprocessing=False, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="No published ImageNet weights named 'nfnet_f7'"):
        weights_lib.load_weights(model, "imagenet", get_architecture("nfnet_f7"), include_top=True)


def test_imagenet_requires_1000_classes():
    with pytest.raises(ValueError, match="`classes` should be 1000"):
        nfnet_keras.NFNet("tiny", include_preprocessing=False, input_shape=(32, 32, 3), weights="imagenet", classes=10)


def test_imagenet_downloads_converts_caches_and_works_offline(tiny_imagenet, monkeypatch):
    model = tiny_nfnet(weights="imagenet")
    assert_holds(model, tiny_imagenet["tree"])
    models = tiny_imagenet["models"]
    assert cached_files(models) == ["tiny_haiku.npz", "tiny_haiku.weights.h5"]

    # Offline: the origin and the downloaded file are gone, conversion is
    # forbidden; the cached Keras file alone serves every later load.
    tiny_imagenet["source"].unlink()
    cached_file(models, "tiny_haiku.npz").unlink()
    from nfnet_keras.convert import haiku

    monkeypatch.setattr(haiku, "load_haiku_params", lambda *a, **k: pytest.fail("converted again"))
    again = tiny_nfnet(weights="imagenet")
    for a, b in zip(again.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    body = tiny_nfnet(weights="imagenet", include_top=False, pooling="avg")
    assert_holds(body, tiny_imagenet["tree"])


def test_include_top_false_first_writes_a_notop_cache(tiny_imagenet):
    body = tiny_nfnet(weights="imagenet", include_top=False)
    assert_holds(body, tiny_imagenet["tree"])
    assert cached_files(tiny_imagenet["models"]) == [
        "tiny_haiku.npz",
        "tiny_haiku_notop.weights.h5",
    ]
    full = tiny_nfnet(weights="imagenet")  # the notop cache cannot serve the head
    assert_holds(full, tiny_imagenet["tree"])
    assert "tiny_haiku.weights.h5" in cached_files(tiny_imagenet["models"])


def test_corrupt_conversion_cache_is_rebuilt(tiny_imagenet):
    tiny_nfnet(weights="imagenet")
    cache = cached_file(tiny_imagenet["models"], "tiny_haiku.weights.h5")
    cache.write_bytes(b"not hdf5")
    model = tiny_nfnet(weights="imagenet")
    assert_holds(model, tiny_imagenet["tree"])
    assert cache.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"


def test_wrong_checkpoint_from_a_url_leaves_no_cache(tiny_imagenet, tmp_path):
    other = hf.write_haiku_pickle(
        tmp_path / "other_haiku.npz", hf.nfnet_tree(**hf.TINY, classes=10)
    )
    with pytest.raises(ValueError, match="shape mismatches"):
        tiny_nfnet(weights=other.as_uri())
    assert cached_files(tiny_imagenet["models"]) == ["other_haiku.npz"]
    # A registry URL of another variant is refused by name.
    with pytest.raises(ValueError, match="holds the weights of nfnet_f0"):
        tiny_nfnet(weights=weights_lib.checkpoint("nfnet_f0").url)


def test_keras_weights_file_round_trip(tiny_files, tmp_path):
    source = tiny_nfnet(classes=10, weights=str(tiny_files["haiku"]))
    path = tmp_path / "tiny.weights.h5"
    source.save_weights(path)
    for kwargs in ({"classes": 10}, {"include_top": False, "pooling": "avg"}):
        model = tiny_nfnet(weights=str(path), **kwargs)
        for a, b in zip(model.weights, source.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_bad_weights_arguments(tmp_path):
    odd = tmp_path / "weights.bin.txt"
    odd.write_bytes(b"x")
    with pytest.raises(ValueError, match="Cannot tell the format"):
        tiny_nfnet(classes=10, weights=str(odd))
    with pytest.raises(ValueError, match="`weights` argument should be either.*does not exist"):
        tiny_nfnet(classes=10, weights=str(tmp_path / "missing.npz"))
    with pytest.raises(TypeError, match="`weights` must be None"):
        weights_lib.load_weights(tiny_nfnet(classes=10), 3, get_architecture("nfnet_tiny"), include_top=True)
