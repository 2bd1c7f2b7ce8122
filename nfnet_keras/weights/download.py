"""Downloads into ``$KERAS_HOME/models``: atomic, locked, bounded, URL-keyed.

What pip's download cache and TensorFlow's fault-tolerance guide do, for a
weights file:

* the cache is keyed by URL: ``models/<sha256(url)[:16]>/<file name>``, so
  two URLs whose files share a name never share a cache entry;
* a per-file lock (``fcntl.flock``) makes concurrent processes wait for one
  download instead of racing on the same path;
* the file is streamed into a temporary file next to its final path and
  checked -- its length against the server's Content-Length, its hash when
  one is known, and that it parses in its format -- and only then renamed
  into place (`os.replace`, atomic on POSIX): an interrupted or corrupt
  download never becomes the cached file;
* connecting and every read time out (`NFNET_KERAS_DOWNLOAD_TIMEOUT`
  seconds, default 60) with a message that says so; a failed transfer is
  tried once more;
* a cached file that fails the same checks is removed and downloaded again,
  once.
"""

import contextlib
import fcntl
import hashlib
import http.client
import os
import socket
import urllib.error
import urllib.parse
import urllib.request

import keras

# Seconds without data before a connection or read gives up (pip's default
# is 15 s; checkpoint hosts can be slow to start a large file).
DEFAULT_TIMEOUT = 60.0
TIMEOUT_VARIABLE = "NFNET_KERAS_DOWNLOAD_TIMEOUT"
ATTEMPTS = 2  # one retry after a failed transfer
_CHUNK = 1 << 20


class DownloadError(OSError):
    """The file could not be fetched (network, HTTP error, timeout, cut connection)."""


def keras_home():
    # KERAS_HOME is read here (not at import) so that it can change at run time.
    return os.environ.get("KERAS_HOME") or keras.src.backend.config.keras_home()


def file_name(url):
    name = os.path.basename(urllib.parse.urlsplit(url).path)
    if not name:
        raise ValueError(f"Cannot tell a file name from the URL {url!r}.")
    return name


def cached_path(url):
    """Where the file of `url` is cached: one folder per URL."""
    key = hashlib.sha256(url.encode("utf-8")).hexdigest()[:16]
    return os.path.join(keras_home(), "models", key, file_name(url))


def file_digest(path, algorithm):
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _timeout():
    value = os.environ.get(TIMEOUT_VARIABLE)
    if value is None:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError(
            f"`{TIMEOUT_VARIABLE}` must be a positive number of seconds. Received: {value!r}"
        )
    return seconds


@contextlib.contextmanager
def _locked(path):
    """An exclusive lock on `path` across processes (the folder is created)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _stream(url, target, timeout):
    """Writes the body of `url` to `target`; raises `DownloadError`."""
    request = urllib.request.Request(url, headers={"User-Agent": "nfnet_keras"})
    received = 0
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response, open(target, "wb") as out:
            declared = response.headers.get("Content-Length")
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                received += len(chunk)
    except (TimeoutError, socket.timeout):
        raise DownloadError(
            f"{url}: no data for {timeout:g} s after {received} bytes (timed out; set "
            f"{TIMEOUT_VARIABLE} to wait longer)"
        ) from None
    except http.client.IncompleteRead as e:
        raise DownloadError(
            f"{url}: the connection closed after {received + len(e.partial)} of "
            f"{received + len(e.partial) + (e.expected or 0)} bytes"
        ) from None
    except (urllib.error.URLError, http.client.HTTPException, ConnectionError) as e:
        reason = getattr(e, "reason", None) or e
        raise DownloadError(f"{url}: {reason}") from None
    if declared is not None and received != int(declared):
        raise DownloadError(
            f"{url}: the connection closed after {received} of {declared} bytes"
        )


def _check(path, url, file_hash, hash_algorithm, validate):
    """Raises ValueError unless `path` matches its hash and parses."""
    if file_hash is not None:
        digest = file_digest(path, hash_algorithm)
        if not (digest.startswith(file_hash.lower()) and len(file_hash) >= 8):
            full = len(file_hash) == hashlib.new(hash_algorithm).digest_size * 2
            raise ValueError(
                f"The file downloaded from {url} failed its integrity check and was "
                f"removed from the cache ({cached_path(url)}): expected {hash_algorithm} "
                f"{file_hash}{'' if full else '...'}, got {digest}. The download was "
                "incomplete or the file is not the published one. Try again; if it keeps "
                "failing, download the file yourself, check it, and pass its path as "
                "`weights=`."
            )
    if validate is not None:
        try:
            validate(path)
        except ValueError as e:
            raise ValueError(f"The file downloaded from {url} is not readable: {e}") from None


def download(url, file_hash=None, hash_algorithm="sha256", validate=None):
    """The cached file of `url`, downloaded (once, atomically) if needed.

    Args:
        url: an http(s):// or file:// URL.
        file_hash: its hex digest, or a leading part of it (timm file names
            carry 8 digits); `None` if unknown.
        hash_algorithm: ``"sha256"`` or ``"md5"``.
        validate: a callable that raises `ValueError` when the file does not
            parse in its format.

    Returns:
        The path of the checked file in the cache.

    Raises:
        DownloadError: every attempt failed in transfer (nothing is left in
            the cache).
        ValueError: the file does not match its hash or does not parse
            (nothing is left in the cache).
    """
    path = cached_path(url)
    timeout = _timeout()
    with _locked(path):
        if os.path.exists(path):
            try:
                _check(path, url, file_hash, hash_algorithm, validate)
                return path
            except ValueError:  # a corrupt cached copy: downloaded again, once
                os.remove(path)
        print(f"Downloading data from {url}")
        failure = None
        for _ in range(ATTEMPTS):
            partial = f"{path}.partial-{os.getpid()}"
            try:
                _stream(url, partial, timeout)
                _check(partial, url, file_hash, hash_algorithm, validate)
                os.replace(partial, path)
                return path
            except DownloadError as e:
                failure = e
            finally:
                if os.path.exists(partial):
                    os.remove(partial)
        raise DownloadError(f"{failure} (tried {ATTEMPTS} times)")
