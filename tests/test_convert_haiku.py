"""DeepMind Haiku checkpoints: safe reading of every published pickle form,
name mapping with shape checks, and F0 parity with timm (independent oracle)."""

import functools
import os
import pickle
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _haiku_files as hf  # noqa: E402
from conftest import tiny_nfnet  # noqa: E402

import nfnet_keras  # noqa: E402
from nfnet_keras.convert import haiku  # noqa: E402


def _dotted(flat_name):
    return flat_name.replace("/~/", ".").replace("/", ".")


@pytest.fixture(scope="module")
def tiny_tree():
    return hf.nfnet_tree(**hf.TINY, classes=10, seed=3)


tiny_model = functools.partial(tiny_nfnet, classes=10)


# ---------------------------------------------------------------------------
# Reading.


@pytest.mark.parametrize("mapping", ["flatmapping", "frozendict", "dict"])
@pytest.mark.parametrize(
    "arrays,protocol",
    [
        ("dill", 4),  # dill 0.3.3 + NumPy 1.x, as published
        ("dill", 3),  # GLOBAL opcodes instead of STACK_GLOBAL
        ("dill_numpy2", 4),
        ("numpy1", 4),
        ("numpy2", 2),  # bytes as _codecs.encode(..., 'latin1')
        ("standard", 4),  # NumPy 2.x's own reduce
        ("standard", 5),  # protocol 5: _frombuffer with an in-band buffer
    ],
)
def test_reads_every_published_pickle_form(tmp_path, tiny_tree, mapping, arrays, protocol):
    path = hf.write_haiku_pickle(
        tmp_path / "tiny_haiku.npz", tiny_tree, mapping=mapping, arrays=arrays, protocol=protocol
    )
    params = haiku.read_haiku_file(path)
    flat = hf.flatten(tiny_tree)
    assert sorted(params) == sorted(_dotted(k) for k in flat)
    for name, array in flat.items():
        got = params[_dotted(name)]
        assert type(got) is np.ndarray and got.dtype == np.float32
        np.testing.assert_array_equal(got, array)
    assert params["NFNet.nf_block.skip_gain"].shape == ()
    assert "haiku" not in sys.modules and "dill" not in sys.modules


def test_reads_a_flattened_npz_archive(tmp_path, tiny_tree):
    # utils.flatten_haiku_tree names (reference doc §9.1), saved by np.savez.
    flat = {_dotted(k): v for k, v in hf.flatten(tiny_tree).items()}
    np.savez(tmp_path / "flat.npz", **flat)
    model = tiny_model()
    haiku.load_haiku_params(model, str(tmp_path / "flat.npz"))
    conv = model.get_layer("stage2_block0_conv1b")
    np.testing.assert_array_equal(
        conv.kernel.numpy(), tiny_tree["NFNet/~/nf_block_2/~/conv1b"]["w"]
    )


class _Evil:
    def __init__(self, target, args):
        self.target, self.args = target, args

    def __reduce__(self):
        return self.target, self.args


def _evil_pickles(marker):
    import builtins
    import subprocess

    command = f"touch {marker}"
    yield "os.system", pickle.dumps({"NFNet/~/linear": _Evil(os.system, (command,))})
    yield "eval", pickle.dumps(_Evil(builtins.eval, (f"open({str(marker)!r}, 'w')",)))
    yield "subprocess", pickle.dumps(_Evil(subprocess.call, (["touch", str(marker)],)))
    # dill's module route used to reach os.system instead of NumPy.
    via_dill = hf._Call(
        hf._Global("dill._dill", "_get_attr"),
        (hf._Call(hf._Global("dill._dill", "_import_module"), ("os",)), "system"),
    )
    yield "dill-os", hf.haiku_pickle_bytes({"NFNet/~/x": {"w": hf._Call(via_dill, (command,))}})
    # An object array would unpickle arbitrary objects.
    yield "object-array", pickle.dumps({"NFNet/~/x": {"w": np.array([1, "a"], dtype=object)}})
    # A FlatMapping whose argument is not a dict.
    yield "flatmapping-args", hf.haiku_pickle_bytes(
        {"NFNet/~/x": {"w": hf._Call(hf._Global("haiku._src.data_structures", "FlatMapping"), (1, 2))}}
    )


@pytest.mark.parametrize("case", ["os.system", "eval", "subprocess", "dill-os", "object-array", "flatmapping-args"])
def test_refuses_malicious_pickles_without_running_them(tmp_path, case):
    marker = tmp_path / "pwned"
    data = dict(_evil_pickles(marker))[case]
    path = tmp_path / "F0_haiku.npz"
    path.write_bytes(data)
    with pytest.raises(haiku.UnsafePickleError, match="Refusing to load"):
        haiku.read_haiku_file(path)
    assert not marker.exists()
    # The same file through the public loader: refused, nothing cached.
    with pytest.raises(ValueError, match="Refusing to load"):
        tiny_model(weights=str(path))
    assert not marker.exists()
    assert sorted(os.listdir(tmp_path)) == ["F0_haiku.npz"]


def test_rejects_garbage_and_truncated_files(tmp_path, tiny_tree):
    data = hf.haiku_pickle_bytes(tiny_tree)
    (tmp_path / "cut.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="not a readable DeepMind Haiku checkpoint"):
        haiku.read_haiku_file(tmp_path / "cut.npz")
    (tmp_path / "text.npz").write_bytes(b"hello")
    with pytest.raises(ValueError, match="unknown header"):
        haiku.read_haiku_file(tmp_path / "text.npz")


# ---------------------------------------------------------------------------
# Mapping.

# Hand-written from the reference doc §9.2 / §9.4 tables: Keras layer/variable
# <- Haiku module/param, for the tiny row (blocks numbered over the network).
_EXPECTED = {
    ("stem_conv0", "kernel"): ("NFNet/~/stem_conv0", "w"),
    ("stem_conv3", "gain"): ("NFNet/~/stem_conv3", "gain"),
    ("stage0_block0_shortcut_conv", "kernel"): ("NFNet/~/nf_block/~/conv_shortcut", "w"),
    ("stage0_block0_skip_gain", "skip_gain"): ("NFNet/~/nf_block", "skip_gain"),
    ("stage1_block0_conv0", "bias"): ("NFNet/~/nf_block_1/~/conv0", "bias"),
    ("stage2_block0_conv1", "kernel"): ("NFNet/~/nf_block_2/~/conv1", "w"),
    ("stage3_block0_conv1b", "gain"): ("NFNet/~/nf_block_3/~/conv1b", "gain"),
    ("stage3_block0_conv2", "kernel"): ("NFNet/~/nf_block_3/~/conv2", "w"),
    ("stage1_block0_se", "fc1/kernel"): ("NFNet/~/nf_block_1/~/squeeze_excite/~/linear", "w"),
    ("stage1_block0_se", "fc2/bias"): ("NFNet/~/nf_block_1/~/squeeze_excite/~/linear_1", "b"),
    ("final_conv", "kernel"): ("NFNet/~/final_conv", "w"),
    ("predictions", "kernel"): ("NFNet/~/linear", "w"),
    ("predictions", "bias"): ("NFNet/~/linear", "b"),
}


def _variable(model, layer, var):
    path = f"{layer}/{var}"
    (v,) = [w for w in model.weights if w.path == path]
    return v.numpy()


def test_maps_names_by_rule(tmp_path, tiny_tree):
    path = hf.write_haiku_pickle(tmp_path / "tiny.npz", tiny_tree)
    model = tiny_model(weights=str(path))
    for (layer, var), (module, param) in _EXPECTED.items():
        np.testing.assert_array_equal(_variable(model, layer, var), tiny_tree[module][param])
    # Every Keras weight holds one of the checkpoint's arrays.
    arrays = {a.tobytes() for a in hf.flatten(tiny_tree).values()}
    # 4 stem convs x 3 + 4 blocks x 17 + 4 shortcuts x 3 + final conv 3 + head 2.
    assert len(arrays) == len(model.weights) == 97
    assert {w.numpy().tobytes() for w in model.weights} == arrays


def test_include_top_false_loads_all_but_the_head(tmp_path, tiny_tree):
    path = hf.write_haiku_pickle(tmp_path / "tiny.npz", tiny_tree)
    full = tiny_model(weights=str(path))
    body = tiny_model(include_top=False, pooling="avg", weights=str(path))
    assert len(body.weights) == len(full.weights) - 2
    for a, b in zip(body.weights, full.weights):
        assert a.path == b.path
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_missing_and_unused_names_are_all_reported(tmp_path, tiny_tree):
    broken = {m: dict(p) for m, p in tiny_tree.items()}
    del broken["NFNet/~/nf_block_2/~/conv1b"]["w"]
    del broken["NFNet/~/nf_block_3"]
    broken["NFNet/~/nf_block_4/~/conv0"] = {"w": np.zeros((1, 1, 4, 4), np.float32)}
    path = hf.write_haiku_pickle(tmp_path / "broken.npz", broken)
    model = tiny_model()
    before = [w.numpy() for w in model.weights]
    with pytest.raises(ValueError) as info:
        haiku.load_haiku_params(model, str(path))
    message = str(info.value)
    assert "NFNet/~/nf_block_2/~/conv1b/w (for stage2_block0_conv1b/kernel" in message
    assert "NFNet/~/nf_block_3/skip_gain (for stage3_block0_skip_gain/skip_gain ())" in message
    assert "checkpoint parameters the model does not use (1):\n  NFNet/~/nf_block_4/~/conv0/w" in message
    # All or nothing: the model was not touched.
    for w, b in zip(model.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


# ---------------------------------------------------------------------------
# F0: the real names and shapes, and parity with timm.


@pytest.fixture(scope="module")
def f0_tree():
    return hf.nfnet_tree(**hf.F0, seed=0)


def test_f0_tree_is_the_published_layout(f0_tree):
    # Reference doc §9.2 / §2: 233 arrays, 71,489,284 parameters, 94 modules.
    flat = hf.flatten(f0_tree)
    assert len(flat) == 233
    assert len(f0_tree) == 94
    assert sum(a.size for a in flat.values()) == 71_489_284


def test_f1_weights_into_f0_are_refused_with_shapes(f0_models):
    model = f0_models["timm"]
    before = model.get_layer("stage1_block0_conv0").kernel.numpy()
    # F1's names and shapes (depths 2, 4, 12, 6) as zero-stride views.
    f1 = hf.flatten(hf.nfnet_tree(depths=(2, 4, 12, 6), values=False))
    params = {_dotted(k): v for k, v in f1.items()}
    with pytest.raises(ValueError) as info:
        haiku.load_haiku_params(model, params)
    message = str(info.value)
    # F1's nf_block_1 is its stage-0 second block; F0's is the stage-1 transition.
    assert (
        "NFNet/~/nf_block_1/~/conv0/w: checkpoint (1, 1, 256, 128), model (1, 1, 256, 256) "
        "(stage1_block0_conv0/kernel)" in message
    )
    assert "model weights missing from the checkpoint" in message
    assert "NFNet/~/nf_block_1/~/conv_shortcut/w" in message
    assert "checkpoint parameters the model does not use" in message
    np.testing.assert_array_equal(model.get_layer("stage1_block0_conv0").kernel.numpy(), before)


def _timm_dm_conventions(model, torch):
    """timm's forward with DeepMind's tanh GELU and (inactive) WS floor."""
    import torch.nn.functional as F

    for module in model.modules():
        if hasattr(module, "act_fn") and hasattr(module, "gamma"):
            module.act_fn = lambda x, inplace=False: F.gelu(x, approximate="tanh")
        if type(module).__name__.startswith("ScaledStdConv2d"):
            # DeepMind divides by sqrt(max(N var, 1e-4)); for these weights
            # N var ~ 1 >> 1e-4, i.e. timm's form with eps -> 0 (torch's
            # batch_norm needs eps > 0; 1e-12 is below float32 resolution of var).
            module.eps = 1e-12
    return model


@pytest.fixture(scope="module")
def f0_pickle(f0_tree, tmp_path_factory):
    path = tmp_path_factory.mktemp("f0") / "F0_haiku.npz"
    return hf.write_haiku_pickle(path, f0_tree, mapping="flatmapping", arrays="dill")


@pytest.fixture(scope="module")
def timm_f0s(f0_tree):
    from _timm import timm, torch

    models = {}
    for convention in ("timm", "deepmind"):
        model = timm.create_model("dm_nfnet_f0")
        state = {k: torch.from_numpy(v) for k, v in hf.haiku_to_timm(f0_tree, hf.F0["depths"]).items()}
        model.load_state_dict(state, strict=True)
        if convention == "deepmind":
            _timm_dm_conventions(model, torch)
        models[convention] = model.eval()
    return models


@pytest.fixture(scope="module")
def f0_models(f0_pickle):
    models = {}
    for convention in ("timm", "deepmind"):
        models[convention] = nfnet_keras.NFNetF0(
            include_preprocessing=False, input_shape=(64, 64, 3),
            classifier_activation=None,
            convention=convention,
            weights=str(f0_pickle),
        )
    return models


def _timm_logits(model, images):
    from _timm import torch

    with torch.inference_mode():
        return model(torch.from_numpy(np.transpose(images, (0, 3, 1, 2)).copy())).numpy()


@pytest.fixture(scope="module")
def f0_images():
    return np.random.default_rng(7).standard_normal((2, 64, 64, 3)).astype("float32")


def _relative(a, b):
    return float(np.abs(a - b).max() / np.abs(b).max())


def test_f0_from_haiku_matches_timm(f0_models, timm_f0s, f0_images):
    """Same tensors in a Haiku pickle and (re-laid-out, §9.3) in timm."""
    reference = _timm_logits(timm_f0s["timm"], f0_images)
    logits = f0_models["timm"].predict(f0_images, verbose=0)
    assert np.abs(reference).max() > 0.1
    assert _relative(logits, reference) <= 1e-4


def test_f0_deepmind_convention_differs_only_by_gelu_and_eps(f0_models, timm_f0s, f0_images):
    deepmind = f0_models["deepmind"].predict(f0_images, verbose=0)
    timm_like = f0_models["timm"].predict(f0_images, verbose=0)
    # timm with DeepMind's tanh GELU and WS formula reproduces DeepMind's convention...
    reference = _timm_logits(timm_f0s["deepmind"], f0_images)
    assert _relative(deepmind, reference) <= 1e-4
    # ...while timm's own conventions are measurably different (§1 item 1, §4).
    gap = _relative(deepmind, timm_like)
    print(f"F0 @64px: deepmind vs timm conventions, max |dlogit| / max |logit| = {gap:.2e}")
    assert 1e-4 < gap < 0.1, gap


@pytest.fixture(scope="module")
def timm_f0_files(tmp_path_factory):
    """A timm dm_nfnet_f0 with other random tensors, saved both ways."""
    from _timm import timm, torch
    from safetensors.numpy import save_file

    model = timm.create_model("dm_nfnet_f0")
    state = hf.haiku_to_timm(hf.nfnet_tree(**hf.F0, seed=1), hf.F0["depths"])
    model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
    folder = tmp_path_factory.mktemp("timm_f0")
    torch.save(model.state_dict(), folder / "dm_nfnet_f0.pth")
    save_file(state, str(folder / "dm_nfnet_f0.safetensors"))
    del state
    return model.eval(), folder


@pytest.mark.parametrize("suffix", ["pth", "safetensors"])
def test_f0_timm_files_reproduce_timm(f0_models, timm_f0_files, f0_images, suffix):
    from nfnet_keras import weights as weights_lib
    from nfnet_keras.models import get_architecture

    timm_model, folder = timm_f0_files
    model = f0_models["timm"]  # reloaded in place: these tests run last
    path = str(folder / f"dm_nfnet_f0.{suffix}")
    weights_lib.load_weights(model, path, get_architecture("nfnet_f0"), True)
    reference = _timm_logits(timm_model, f0_images)
    assert _relative(model.predict(f0_images, verbose=0), reference) <= 1e-4
