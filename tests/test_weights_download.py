"""Downloads (`nfnet_keras.weights.download`): hashes, truncation, stale and
corrupt cached files, per-URL cache entries, timeouts, and one download
shared by threads and processes.

No network: a 127.0.0.1 server that serves in full, truncates, stalls or
serves slowly, and file:// URLs.
"""

import contextlib
import http.server
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import _haiku_files as hf  # noqa: E402
from conftest import assert_holds, cached_files, tiny_nfnet  # noqa: E402

from nfnet_keras.weights import download  # noqa: E402


@contextlib.contextmanager
def _server(routes):
    """Serves `routes`: path -> (body, mode); counts the requests per path.

    Modes: "full"; "short" (the whole body's Content-Length, a third of
    the body, then the connection closes); "cut" (no Content-Length, half
    the body, then the connection closes); "stall" (headers, then nothing
    for 30 s); "slow" (the body in 8 pieces 0.1 s apart).
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
            elif mode == "short":
                self.wfile.write(body[: len(body) // 3])
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


def test_hash_mismatch_is_refused_and_removed(tiny_imagenet):
    wrong = "0" * 32
    tiny_imagenet["install"](file_hash=wrong)
    with pytest.raises(ValueError) as info:
        tiny_nfnet(weights="imagenet")
    message = str(info.value)
    assert "tiny_haiku.npz" in message and f"expected md5 {wrong}" in message
    assert f"got {tiny_imagenet['md5']}" in message and "removed from the cache" in message
    assert "pass its path as `weights=`" in message
    assert cached_files(tiny_imagenet["models"]) == []


def test_truncated_file_is_refused_and_removed(tiny_imagenet):
    source = tiny_imagenet["source"]
    source.write_bytes(source.read_bytes()[:5000])  # the row keeps the full file's md5
    with pytest.raises(ValueError, match="failed its integrity check"):
        tiny_nfnet(weights="imagenet")
    assert cached_files(tiny_imagenet["models"]) == []


def test_truncated_http_download_is_refused(tiny_imagenet):
    data = tiny_imagenet["source"].read_bytes()
    with _server({"/tiny_haiku.npz": (data, "short")}) as (base, _):
        tiny_imagenet["install"](url=f"{base}/tiny_haiku.npz")
        with pytest.raises(ValueError, match="Could not download the ImageNet weights"):
            tiny_nfnet(weights="imagenet")
    assert cached_files(tiny_imagenet["models"]) == []


def test_http_download_and_stale_cached_file(tiny_imagenet):
    data = tiny_imagenet["source"].read_bytes()
    with _server({"/tiny_haiku.npz": (data, "full")}) as (base, _):
        row = tiny_imagenet["install"](url=f"{base}/tiny_haiku.npz")
        stale = pathlib.Path(download.cached_path(row.url))
        stale.parent.mkdir(parents=True)
        stale.write_bytes(b"an old, corrupted copy")
        model = tiny_nfnet(weights="imagenet")
    assert_holds(model, tiny_imagenet["tree"])
    assert stale.read_bytes() == data


def test_connection_cut_without_length_leaves_nothing_and_next_load_works(two_trees):
    trees, files, models = two_trees
    with _server({"/a/tiny_haiku.npz": (files[0], "cut")}) as (base, hits):
        with pytest.raises(ValueError, match=r"tiny_haiku\.npz"):
            tiny_nfnet(classes=10, weights=f"{base}/a/tiny_haiku.npz")
        assert hits["/a/tiny_haiku.npz"] == 1  # a file that does not parse is not re-fetched
    assert cached_files(models) == []
    with _server({"/a/tiny_haiku.npz": (files[0], "full")}) as (base, _):
        assert_holds(tiny_nfnet(classes=10, weights=f"{base}/a/tiny_haiku.npz"), trees[0])


def test_two_urls_with_one_file_name_do_not_share_the_cache(two_trees):
    trees, files, models = two_trees
    routes = {"/good/tiny_haiku.npz": (files[0], "full"), "/good/v2/tiny_haiku.npz": (files[1], "full")}
    with _server(routes) as (base, _):
        first = tiny_nfnet(classes=10, weights=f"{base}/good/tiny_haiku.npz")
        second = tiny_nfnet(classes=10, weights=f"{base}/good/v2/tiny_haiku.npz")
    assert_holds(first, trees[0])
    assert_holds(second, trees[1])


def test_a_stalled_server_times_out_with_a_clear_message(two_trees, monkeypatch):
    _, files, models = two_trees
    monkeypatch.setenv(download.TIMEOUT_VARIABLE, "0.5")
    with _server({"/tiny_haiku.npz": (files[0], "stall")}) as (base, hits):
        start = time.perf_counter()
        with pytest.raises(ValueError, match=r"no data for 0\.5 s.*timed out.*tried 2 times"):
            tiny_nfnet(classes=10, weights=f"{base}/tiny_haiku.npz")
        assert time.perf_counter() - start < 10
        assert hits["/tiny_haiku.npz"] == 2  # one retry
    assert cached_files(models) == []


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
        assert_holds(tiny_nfnet(classes=10, weights=url), trees[0])
        assert hits["/tiny_haiku.npz"] == 1
    assert cached.read_bytes() == files[0]
