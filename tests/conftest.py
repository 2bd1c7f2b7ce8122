"""Shared fixtures: offline model builders, the shape-only parameter count,
the random weights of the tests, the randomised timm models of the parity
tests, and the tiny checkpoint files and weights cache of the `weights=`
tests."""

import dataclasses
import hashlib
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

import _haiku_files as hf  # noqa: E402 - tests/ is on sys.path


# The README's test command runs two pytest workers, each taking whole modules
# (`-n 2 --dist loadfile`) in collection order. The modules that run whole
# trainings and exports in subprocesses go first, so that the run does not end
# with one of them alone on one core.
LONG_MODULES = ("test_distributed.py", "test_trainer.py", "test_export.py", "test_benchmarks.py")


def pytest_collection_modifyitems(items):
    items.sort(key=lambda item: item.path.name not in LONG_MODULES)  # stable: keeps the rest


# JAX for the subprocesses that run Keras's JAX backend (install.sh puts it
# there, out of the way of TensorFlow, which imports JAX whenever it can).
JAX_SITE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        ".venv", "jax-backend")


@pytest.fixture(scope="module")
def jax_env():
    """The environment of a subprocess on Keras's JAX backend, on the CPU."""
    if not os.path.isdir(os.path.join(JAX_SITE, "jax")):
        pytest.skip(f"JAX is not installed in {JAX_SITE} (bash install.sh test)")
    path = os.pathsep.join(p for p in (JAX_SITE, os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu", "PYTHONPATH": path}


def randomize(model, seed=0):
    """Non-trivial values for every weight of a Keras model (skip gains start
    at zero, gains at one, biases at zero: left as they are they hide bugs)."""
    rng = np.random.default_rng(seed)
    weights = []
    for w in model.weights:
        value = w.numpy()
        if "seed_generator" in w.path:
            weights.append(value)
        elif w.name in ("gain", "skip_gain"):
            weights.append(rng.uniform(0.5, 1.5, value.shape).astype(value.dtype))
        elif w.name == "bias":
            weights.append((rng.standard_normal(value.shape) * 0.1).astype(value.dtype))
        else:
            fan_in = np.prod(value.shape[:-1]) if value.ndim > 1 else 1
            weights.append((rng.standard_normal(value.shape) / np.sqrt(fan_in)).astype(value.dtype))
    model.set_weights(weights)
    return model


@pytest.fixture
def count_params():
    """Parameter count of a registry model from its layer shapes alone.

    Built in a `keras.StatelessScope` that does not initialise variables on
    exit, variables get shapes but no values (no initializer runs, no
    memory), so F7's 500M parameters count in seconds; no forward pass runs.
    `clear_session` then drops the never-initialised variables.
    """
    import nfnet_keras

    def count(name, **kwargs):
        with keras.StatelessScope(initialize_variables=False):
            model = nfnet_keras.get_model(name, weights=None, include_preprocessing=False, **kwargs)
            total = model.count_params()
        del model
        keras.backend.clear_session()
        return total

    return count


@pytest.fixture(scope="module")
def timm_models():
    """timm's model of a name, with random parameters, built once per module."""
    from _timm import randomize_timm, timm

    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = randomize_timm(timm.create_model(name))
        return cache[name]

    return get


def tiny_nfnet(**kwargs):
    """The tiny NFNet row, offline by default: no weights, no preprocessing,
    32 px; keyword arguments are the constructor's."""
    import nfnet_keras

    defaults = {"input_shape": (32, 32, 3), "weights": None, "include_preprocessing": False}
    return nfnet_keras.NFNet("tiny", **{**defaults, **kwargs})


def assert_holds(model, tree):
    """Asserts that `model` holds tensors of the Haiku tree `tree` (a body
    conv, a skip gain and, when the model has one, the classifier)."""
    np.testing.assert_array_equal(
        model.get_layer("stage1_block0_conv1").kernel.numpy(),
        tree["NFNet/~/nf_block_1/~/conv1"]["w"],
    )
    np.testing.assert_array_equal(
        model.get_layer("stage3_block0_skip_gain").skip_gain.numpy(),
        tree["NFNet/~/nf_block_3"]["skip_gain"],
    )
    if "predictions" in [layer.name for layer in model.layers]:
        np.testing.assert_array_equal(
            model.get_layer("predictions").kernel.numpy(), tree["NFNet/~/linear"]["w"]
        )


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    """The same tiny tensors as a Haiku pickle, a .pth and a .safetensors."""
    from _timm import torch
    from safetensors.numpy import save_file

    folder = tmp_path_factory.mktemp("files")
    tree = hf.nfnet_tree(**hf.TINY, classes=10, seed=11)
    state = hf.haiku_to_timm(tree, hf.TINY["depths"])
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, folder / "tiny.pth")
    save_file(state, str(folder / "tiny.safetensors"))
    return dict(
        tree=tree,
        haiku=hf.write_haiku_pickle(folder / "tiny_haiku.npz", tree),
        pth=folder / "tiny.pth",
        safetensors=folder / "tiny.safetensors",
    )


@pytest.fixture
def tiny_imagenet(tmp_path, monkeypatch):
    """A registry row for the tiny model served from a file:// URL."""
    from nfnet_keras.weights import rows as rows_lib

    origin = tmp_path / "origin"
    origin.mkdir()
    tree = hf.nfnet_tree(**hf.TINY, classes=1000, seed=5)
    source = hf.write_haiku_pickle(origin / "tiny_haiku.npz", tree)
    md5 = hashlib.md5(source.read_bytes()).hexdigest()
    home = tmp_path / "keras_home"
    monkeypatch.setenv("KERAS_HOME", str(home))

    published = rows_lib.CHECKPOINTS

    def install(**changes):
        fields = dict(architecture="nfnet_tiny", url=source.as_uri(), file_hash=md5)
        row = dataclasses.replace(rows_lib.checkpoint("nfnet_f0"), **(fields | changes))
        monkeypatch.setattr(rows_lib, "CHECKPOINTS", published + (row,))
        return row

    install()
    return dict(tree=tree, source=source, md5=md5, models=home / "models", install=install)


def cached_files(models):
    """The files in the download cache (by name; lock files left out)."""
    if not models.exists():
        return []
    return sorted(p.name for p in models.rglob("*") if p.is_file() and p.suffix != ".lock")


def cached_file(models, name):
    """The one file named `name` in the download cache."""
    (path,) = [p for p in models.rglob(name) if p.is_file()]
    return path

