"""The checkpoint registry, downloads (hash, truncation, cache), the file
formats accepted by `weights=`, the eval transforms and `nfnet-convert`.

No network: downloads come from file:// URLs and a local HTTP server.
"""

import contextlib
import dataclasses
import hashlib
import http.server
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _haiku_files as hf  # noqa: E402

import nfnet_keras  # noqa: E402
from nfnet_keras import weights as weights_lib  # noqa: E402
from nfnet_keras.convert import cli  # noqa: E402
from nfnet_keras.models import get_architecture, list_models  # noqa: E402
from nfnet_keras.weights import download  # noqa: E402
from nfnet_keras.weights import rows as rows_lib  # noqa: E402

# ---------------------------------------------------------------------------
# Registry.


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


def test_timm_checkpoint_refused_by_a_deepmind_architecture(tmp_path):
    # timm's nf_resnet50 weights belong to timm's own architecture
    # (reference doc §6), not to DeepMind's NF-ResNet-50.
    from _timm import timm, torch

    path = str(tmp_path / "nf_resnet50.pth")
    torch.save(timm.create_model("nf_resnet26").state_dict(), path)
    with pytest.raises(ValueError, match="TimmNFResNet50"):
        nfnet_keras.NFResNet("tiny", include_preprocessing=False, input_shape=(32, 32, 3), weights=path)


def test_timm_nf_regnet_file_loads_into_the_timm_architecture(tmp_path):
    from _timm import timm, torch

    reference = timm.create_model("nf_regnet_b0").eval()
    with torch.no_grad():
        for p in reference.parameters():  # non-trivial values everywhere
            p.add_(torch.rand(p.shape) * 0.5)
    path = str(tmp_path / "nf_regnet_b0.pth")
    torch.save(reference.state_dict(), path)
    model = nfnet_keras.TimmNFRegNetB0(include_preprocessing=False, input_shape=(64, 64, 3), classifier_activation=None, weights=path)
    images = np.random.default_rng(0).standard_normal((2, 64, 64, 3)).astype("float32")
    with torch.inference_mode():
        expected = reference(torch.from_numpy(images.transpose(0, 3, 1, 2).copy())).numpy()
    got = model.predict(images, verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-4 * max(1.0, float(np.abs(expected).max())))


def test_unknown_variant_has_no_imagenet_weights():
    model = nfnet_keras.NFNet("tiny", weights=None, include_preprocessing=False, input_shape=(32, 32, 3))
    with pytest.raises(ValueError, match="No published ImageNet weights named 'nfnet_f7'"):
        weights_lib.load_weights(model, "imagenet", get_architecture("nfnet_f7"), include_top=True)


def test_imagenet_requires_1000_classes():
    with pytest.raises(ValueError, match="`classes` should be 1000"):
        nfnet_keras.NFNet("tiny", include_preprocessing=False, input_shape=(32, 32, 3), weights="imagenet", classes=10)


# ---------------------------------------------------------------------------
# Eval transforms.


def test_deepmind_eval_transform_matches_the_reference_pipeline():
    import tensorflow as tf

    image = np.random.default_rng(0).integers(0, 256, (300, 411, 3), dtype=np.uint8)
    out = np.asarray(nfnet_keras.preprocess_input(weights_lib.checkpoint("nfnet_f0").eval_transform(image)))
    # deepmind-research `dataset._decode_and_resize_then_crop`, crop_pct=32:
    # resize to (256 + 32)^2 bicubic, crop offset ((288 - 256) + 1) // 2.
    ref = tf.image.resize(image, (288, 288), tf.image.ResizeMethod.BICUBIC)
    ref = tf.image.crop_to_bounding_box(ref, 16, 16, 256, 256).numpy()
    ref = (ref - np.array([0.485, 0.456, 0.406]) * 255) / (np.array([0.229, 0.224, 0.225]) * 255)
    assert out.shape == (256, 256, 3)
    np.testing.assert_allclose(out, ref, atol=1e-4)


@pytest.mark.parametrize(
    "name,resize,crop", [("nfnet_f0.timm", (284, 284), 256), ("timm_nf_resnet50", 306, 288)]
)
def test_timm_eval_transform_matches_torchvision(name, resize, crop):
    from _timm import torch
    from torchvision import transforms

    image = np.random.default_rng(1).uniform(0, 255, (2, 300, 411, 3)).astype("float32")
    out = np.asarray(weights_lib.checkpoint(name).eval_transform(image))
    pipeline = transforms.Compose(
        [
            transforms.Resize(resize, interpolation=transforms.InterpolationMode.BICUBIC, antialias=True),
            transforms.CenterCrop(crop),
        ]
    )
    ref = pipeline(torch.from_numpy(np.transpose(image, (0, 3, 1, 2)).copy())).numpy()
    assert out.shape == (2, crop, crop, 3)
    np.testing.assert_allclose(out, np.transpose(ref, (0, 2, 3, 1)), atol=2e-3)


# ---------------------------------------------------------------------------
# Downloads and the conversion cache.


@pytest.fixture
def tiny_imagenet(tmp_path, monkeypatch):
    """A registry row for the tiny model served from a file:// URL."""
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
        row = dataclasses.replace(weights_lib.checkpoint("nfnet_f0"), **(fields | changes))
        monkeypatch.setattr(rows_lib, "CHECKPOINTS", published + (row,))
        return row

    install()
    return dict(tree=tree, source=source, md5=md5, models=home / "models", install=install)


def _cached(models):
    """The files in the download cache (by name; lock files left out)."""
    if not models.exists():
        return []
    return sorted(p.name for p in models.rglob("*") if p.is_file() and p.suffix != ".lock")


def _cached_file(models, name):
    (path,) = [p for p in models.rglob(name) if p.is_file()]
    return path


def _tiny(**kwargs):
    return nfnet_keras.NFNet(
        "tiny", input_shape=(32, 32, 3), **{"weights": None, "include_preprocessing": False, **kwargs}
    )


def _assert_holds(model, tree):
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


def test_imagenet_downloads_converts_caches_and_works_offline(tiny_imagenet, monkeypatch):
    model = _tiny(weights="imagenet")
    _assert_holds(model, tiny_imagenet["tree"])
    models = tiny_imagenet["models"]
    assert _cached(models) == ["tiny_haiku.npz", "tiny_haiku.weights.h5"]

    # Offline: the origin and the downloaded file are gone, conversion is
    # forbidden; the cached Keras file alone serves every later load.
    tiny_imagenet["source"].unlink()
    _cached_file(models, "tiny_haiku.npz").unlink()
    from nfnet_keras.convert import haiku

    monkeypatch.setattr(haiku, "load_haiku_params", lambda *a, **k: pytest.fail("converted again"))
    again = _tiny(weights="imagenet")
    for a, b in zip(again.weights, model.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    body = _tiny(weights="imagenet", include_top=False, pooling="avg")
    _assert_holds(body, tiny_imagenet["tree"])


def test_include_top_false_first_writes_a_notop_cache(tiny_imagenet):
    body = _tiny(weights="imagenet", include_top=False)
    _assert_holds(body, tiny_imagenet["tree"])
    assert _cached(tiny_imagenet["models"]) == [
        "tiny_haiku.npz",
        "tiny_haiku_notop.weights.h5",
    ]
    full = _tiny(weights="imagenet")  # the notop cache cannot serve the head
    _assert_holds(full, tiny_imagenet["tree"])
    assert "tiny_haiku.weights.h5" in _cached(tiny_imagenet["models"])


def test_hash_mismatch_is_refused_and_removed(tiny_imagenet):
    wrong = "0" * 32
    tiny_imagenet["install"](file_hash=wrong)
    with pytest.raises(ValueError) as info:
        _tiny(weights="imagenet")
    message = str(info.value)
    assert "tiny_haiku.npz" in message and f"expected md5 {wrong}" in message
    assert f"got {tiny_imagenet['md5']}" in message and "removed from the cache" in message
    assert "pass its path as `weights=`" in message
    assert _cached(tiny_imagenet["models"]) == []


def test_truncated_file_is_refused_and_removed(tiny_imagenet):
    source = tiny_imagenet["source"]
    source.write_bytes(source.read_bytes()[:5000])  # the row keeps the full file's md5
    with pytest.raises(ValueError, match="failed its integrity check"):
        _tiny(weights="imagenet")
    assert _cached(tiny_imagenet["models"]) == []


@contextlib.contextmanager
def _http_server(body, declared_length):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", str(declared_length))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_truncated_http_download_is_refused(tiny_imagenet):
    data = tiny_imagenet["source"].read_bytes()
    with _http_server(data[: len(data) // 3], len(data)) as base:
        tiny_imagenet["install"](url=f"{base}/tiny_haiku.npz")
        with pytest.raises(ValueError, match="Could not download the ImageNet weights"):
            _tiny(weights="imagenet")
    assert _cached(tiny_imagenet["models"]) == []


def test_http_download_and_stale_cached_file(tiny_imagenet):
    data = tiny_imagenet["source"].read_bytes()
    with _http_server(data, len(data)) as base:
        row = tiny_imagenet["install"](url=f"{base}/tiny_haiku.npz")
        stale = pathlib.Path(download.cached_path(row.url))
        stale.parent.mkdir(parents=True)
        stale.write_bytes(b"an old, corrupted copy")
        model = _tiny(weights="imagenet")
    _assert_holds(model, tiny_imagenet["tree"])
    assert stale.read_bytes() == data


def test_corrupt_conversion_cache_is_rebuilt(tiny_imagenet):
    _tiny(weights="imagenet")
    cache = _cached_file(tiny_imagenet["models"], "tiny_haiku.weights.h5")
    cache.write_bytes(b"not hdf5")
    model = _tiny(weights="imagenet")
    _assert_holds(model, tiny_imagenet["tree"])
    assert cache.read_bytes()[:8] == b"\x89HDF\r\n\x1a\n"


def test_wrong_checkpoint_from_a_url_leaves_no_cache(tiny_imagenet, tmp_path):
    other = hf.write_haiku_pickle(
        tmp_path / "other_haiku.npz", hf.nfnet_tree(**hf.TINY, classes=10)
    )
    with pytest.raises(ValueError, match="shape mismatches"):
        _tiny(weights=other.as_uri())
    assert _cached(tiny_imagenet["models"]) == ["other_haiku.npz"]
    # A registry URL of another variant is refused by name.
    with pytest.raises(ValueError, match="holds the weights of nfnet_f0"):
        _tiny(weights=weights_lib.checkpoint("nfnet_f0").url)


# ---------------------------------------------------------------------------
# Local files of every format.


@pytest.fixture(scope="module")
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


@pytest.mark.parametrize("kind", ["pth", "safetensors"])
def test_timm_files_load_the_same_tensors_as_haiku(tiny_files, kind):
    from_haiku = _tiny(classes=10, weights=str(tiny_files["haiku"]))
    from_timm = _tiny(classes=10, weights=str(tiny_files[kind]), convention="timm")
    assert len(from_timm.weights) == len(from_haiku.weights)
    for a, b in zip(from_timm.weights, from_haiku.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    body = _tiny(weights=str(tiny_files[kind]), include_top=False)
    for a, b in zip(body.weights, from_haiku.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)


def test_pth_with_code_is_refused(tmp_path):
    from _timm import torch

    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    torch.save({"stem.conv1.weight": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(ValueError, match=r"Cannot read .*evil\.pth as a PyTorch state dict.*posix\.system.*refused"):
        _tiny(classes=10, weights=str(tmp_path / "evil.pth"))
    assert not marker.exists()


def test_keras_weights_file_round_trip(tiny_files, tmp_path):
    source = _tiny(classes=10, weights=str(tiny_files["haiku"]))
    path = tmp_path / "tiny.weights.h5"
    source.save_weights(path)
    for kwargs in ({"classes": 10}, {"include_top": False, "pooling": "avg"}):
        model = _tiny(weights=str(path), **kwargs)
        for a, b in zip(model.weights, source.weights):
            np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_bad_weights_arguments(tmp_path):
    odd = tmp_path / "weights.bin.txt"
    odd.write_bytes(b"x")
    with pytest.raises(ValueError, match="Cannot tell the format"):
        _tiny(classes=10, weights=str(odd))
    with pytest.raises(ValueError, match="`weights` argument should be either.*does not exist"):
        _tiny(classes=10, weights=str(tmp_path / "missing.npz"))
    with pytest.raises(TypeError, match="`weights` must be None"):
        weights_lib.load_weights(_tiny(classes=10), 3, get_architecture("nfnet_tiny"), include_top=True)


# ---------------------------------------------------------------------------
# nfnet-convert.


def test_convert_cli(tiny_files, tmp_path, capsys):
    out = tmp_path / "tiny.weights.h5"
    code = cli.main([str(tiny_files["safetensors"]), "--model", "nfnet_tiny", "--classes", "10", "--out", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "97 arrays" in printed and f"Wrote {out}" in printed
    model = _tiny(classes=10, weights=str(out))
    reference = _tiny(classes=10, weights=str(tiny_files["haiku"]))
    for a, b in zip(model.weights, reference.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    # Errors go to stderr with a non-zero status.
    assert cli.main([str(tiny_files["haiku"]), "--model", "nfnet_tiny", "--out", str(out)]) == 1
    assert "shape mismatches" in capsys.readouterr().err


def test_convert_console_script(tiny_files, tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "nfnet-convert")
    out = tmp_path / "cli.weights.h5"
    result = subprocess.run(
        [script, str(tiny_files["haiku"]), "--model", "nfnet_tiny", "--classes", "10", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "Wrote" in result.stdout and out.exists()


# ---------------------------------------------------------------------------
# Faults: a 127.0.0.1 server that truncates, stalls or serves slowly, and
# files that do not hold what their name says.


@contextlib.contextmanager
def _server(routes):
    """Serves `routes`: path -> (body, mode); counts the requests per path.

    Modes: "full"; "cut" (no Content-Length, half the body, then the
    connection closes); "stall" (headers, then nothing for 30 s); "slow"
    (the body in 8 pieces 0.1 s apart).
    """
    hits = {path: 0 for path in routes}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body, mode = routes[self.path]
            hits[self.path] += 1
            self.send_response(200)
            if mode != "cut":
                self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if mode == "full":
                self.wfile.write(body)
            elif mode == "cut":
                self.wfile.write(body[: len(body) // 2])
                self.close_connection = True
            elif mode == "stall":
                self.wfile.flush()
                time.sleep(30)
            else:
                piece = len(body) // 8 + 1
                for start in range(0, len(body), piece):
                    self.wfile.write(body[start : start + piece])
                    self.wfile.flush()
                    time.sleep(0.1)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", hits
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def two_trees(tmp_path, monkeypatch):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras_home"))
    trees = [hf.nfnet_tree(**hf.TINY, classes=10, seed=seed) for seed in (21, 22)]
    files = [hf.write_haiku_pickle(tmp_path / f"t{i}.npz", tree).read_bytes() for i, tree in enumerate(trees)]
    return trees, files, tmp_path / "keras_home" / "models"


def test_connection_cut_without_length_leaves_nothing_and_next_load_works(two_trees):
    trees, files, models = two_trees
    with _server({"/a/tiny_haiku.npz": (files[0], "cut")}) as (base, hits):
        with pytest.raises(ValueError, match=r"tiny_haiku\.npz"):
            _tiny(classes=10, weights=f"{base}/a/tiny_haiku.npz")
        assert hits["/a/tiny_haiku.npz"] == 1  # a file that does not parse is not re-fetched
    assert _cached(models) == []
    with _server({"/a/tiny_haiku.npz": (files[0], "full")}) as (base, _):
        _assert_holds(_tiny(classes=10, weights=f"{base}/a/tiny_haiku.npz"), trees[0])


def test_two_urls_with_one_file_name_do_not_share_the_cache(two_trees):
    trees, files, models = two_trees
    routes = {"/good/tiny_haiku.npz": (files[0], "full"), "/good/v2/tiny_haiku.npz": (files[1], "full")}
    with _server(routes) as (base, _):
        first = _tiny(classes=10, weights=f"{base}/good/tiny_haiku.npz")
        second = _tiny(classes=10, weights=f"{base}/good/v2/tiny_haiku.npz")
    _assert_holds(first, trees[0])
    _assert_holds(second, trees[1])


def test_a_stalled_server_times_out_with_a_clear_message(two_trees, monkeypatch):
    _, files, models = two_trees
    monkeypatch.setenv(download.TIMEOUT_VARIABLE, "0.5")
    with _server({"/tiny_haiku.npz": (files[0], "stall")}) as (base, hits):
        start = time.perf_counter()
        with pytest.raises(ValueError, match=r"no data for 0\.5 s.*timed out.*tried 2 times"):
            _tiny(classes=10, weights=f"{base}/tiny_haiku.npz")
        assert time.perf_counter() - start < 10
        assert hits["/tiny_haiku.npz"] == 2  # one retry
    assert _cached(models) == []


def test_concurrent_loads_wait_for_one_download(two_trees):
    trees, files, models = two_trees
    results, errors = [], []
    with _server({"/tiny_haiku.npz": (files[0], "slow")}) as (base, hits):

        def load():
            try:
                results.append(download.download(f"{base}/tiny_haiku.npz", validate=download_validate))
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(e)

        threads = [threading.Thread(target=load) for _ in range(3)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == [] and hits["/tiny_haiku.npz"] == 1
    assert len(set(results)) == 1 and pathlib.Path(results[0]).read_bytes() == files[0]


def download_validate(path):
    from nfnet_keras.weights.readers import validate_file

    validate_file(path, "haiku")


@pytest.mark.slow  # two Python processes importing TensorFlow
def test_two_processes_loading_one_url_both_succeed(two_trees, tmp_path):
    trees, files, models = two_trees
    code = (
        "import sys, nfnet_keras; m = nfnet_keras.NFNet('tiny', weights=sys.argv[1], "
        "include_preprocessing=False, input_shape=(32, 32, 3), classes=10); "
        "print(float(m.get_layer('stage1_block0_conv1').kernel.numpy().sum()))"
    )
    with _server({"/tiny_haiku.npz": (files[0], "slow")}) as (base, hits):
        env = dict(os.environ, KERAS_HOME=str(models.parent))
        procs = [
            subprocess.Popen([sys.executable, "-c", code, f"{base}/tiny_haiku.npz"], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)
        ]
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
        assert hits["/tiny_haiku.npz"] == 1
    expected = float(trees[0]["NFNet/~/nf_block_1/~/conv1"]["w"].sum())
    for out, _ in outs:
        assert float(out.strip().splitlines()[-1]) == pytest.approx(expected, rel=1e-6)


def test_a_corrupt_cached_file_is_downloaded_again_once(two_trees):
    trees, files, models = two_trees
    with _server({"/tiny_haiku.npz": (files[0], "full")}) as (base, hits):
        url = f"{base}/tiny_haiku.npz"
        cached = pathlib.Path(download.cached_path(url))
        cached.parent.mkdir(parents=True)
        cached.write_bytes(files[0][:1000])  # killed mid-download by an older version
        _assert_holds(_tiny(classes=10, weights=url), trees[0])
        assert hits["/tiny_haiku.npz"] == 1
    assert cached.read_bytes() == files[0]


# Strict converters: every file shape is checked before any transpose.


def _tiny_state(tiny_files):
    from safetensors.numpy import load_file

    return dict(load_file(str(tiny_files["safetensors"])))


@pytest.mark.parametrize(
    "key,change,expected",
    [
        # A gain reshaped from (16, 1, 1, 1) to (4, 4).
        ("stages.1.0.conv1.gain", lambda w: w.reshape(4, 4), r"stages\.1\.0\.conv1\.gain: file \(4, 4\), expected \(16, 1, 1, 1\)"),
        # An SE kernel with a 2x2 window instead of 1x1.
        ("stages.1.0.attn_last.fc1.weight", lambda w: np.repeat(np.repeat(w, 2, 2), 2, 3),
         r"attn_last\.fc1\.weight: file \(16, 32, 2, 2\), expected \(16, 32, 1, 1\)"),
        # A conv kernel with an axis dropped, and one added.
        ("stem.conv1.weight", lambda w: w[0], r"stem\.conv1\.weight: file \(3, 3, 3\), expected \(8, 3, 3, 3\)"),
        ("stem.conv1.weight", lambda w: w[None], r"stem\.conv1\.weight: file \(1, 8, 3, 3, 3\), expected"),
    ],
)
def test_converter_checks_file_shapes_before_any_reshape(tiny_files, tmp_path, key, change, expected):
    from safetensors.numpy import save_file

    state = _tiny_state(tiny_files)
    state[key] = np.ascontiguousarray(change(state[key]))
    path = tmp_path / "bad.safetensors"
    save_file(state, str(path))
    with pytest.raises(ValueError, match=expected):
        _tiny(classes=10, weights=str(path))


@pytest.mark.parametrize(
    "name,content,expected",
    [
        ("random.pth", os.urandom(4000), r"as a PyTorch state dict .*: not a pickle of tensors"),
        ("empty.pth", b"", r"as a PyTorch state dict .*: the file is empty or ends early"),
        ("random.safetensors", os.urandom(4000), r"as a safetensors file: "),
        ("random.weights.h5", os.urandom(4000), r"as a Keras \.weights\.h5 \(HDF5\) file"),
    ],
)
def test_unreadable_files_get_one_line_from_the_api_and_the_cli(tmp_path, capsys, name, content, expected):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(ValueError, match=expected) as info:
        _tiny(classes=10, weights=str(path))
    assert len(str(info.value).splitlines()) == 1 and name in str(info.value)
    assert cli.main([str(path), "--model", "nfnet_tiny", "--classes", "10", "--out", str(tmp_path / "o.weights.h5")]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and name in err and err.startswith("nfnet-convert: error:")
