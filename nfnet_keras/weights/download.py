"""Downloads into ``$KERAS_HOME/models`` with `keras.utils.get_file`, hash-checked."""

import hashlib
import os
import urllib.error
import urllib.parse

import keras


class DownloadError(OSError):
    """The file could not be fetched (network, HTTP error, cut connection)."""


def keras_home():
    # KERAS_HOME is read here (not at import) so that it can change at run time.
    return os.environ.get("KERAS_HOME") or keras.src.backend.config.keras_home()


def file_name(url):
    name = os.path.basename(urllib.parse.urlsplit(url).path)
    if not name:
        raise ValueError(f"Cannot tell a file name from the URL {url!r}.")
    return name


def cached_path(url):
    """Where `download` puts the file of `url`."""
    return os.path.join(keras_home(), "models", file_name(url))


def file_digest(path, algorithm):
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_full_hash(file_hash, algorithm):
    return len(file_hash) == hashlib.new(algorithm).digest_size * 2


def download(url, file_hash=None, hash_algorithm="sha256"):
    """`keras.utils.get_file` into $KERAS_HOME/models, then the hash check.

    A full hash goes to `get_file` (which then also replaces a stale cached
    copy); a hash prefix (timm file names carry 8 digits) is checked here.
    A file that fails the check is removed from the cache; a cached copy that
    fails it is downloaded once more.

    Raises:
        DownloadError: the transfer failed (nothing is left in the cache).
        ValueError: the file does not match its hash (it is removed).
    """
    fname = file_name(url)
    cache_dir = keras_home()
    # get_file falls back to /tmp/.keras when the directory is not writable,
    # which includes "does not exist yet".
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError:
        pass
    full = file_hash is not None and _is_full_hash(file_hash, hash_algorithm)
    was_cached = os.path.exists(os.path.join(cache_dir, "models", fname))
    while True:
        try:
            path = keras.utils.get_file(
                fname=fname,
                origin=url,
                cache_dir=cache_dir,
                cache_subdir="models",
                file_hash=file_hash if full else None,
                hash_algorithm=hash_algorithm,
            )
        except ValueError:  # get_file's hash mismatch; the file stays: check below
            path = os.path.join(cache_dir, "models", fname)
            if not os.path.exists(path):
                raise
            was_cached = False  # get_file already downloaded it again
        except Exception as error:  # noqa: BLE001 - get_file re-raises URLError as Exception
            if isinstance(error.__context__, urllib.error.URLError):
                raise DownloadError(f"{url}: {error}") from error
            raise
        if file_hash is None:
            return path
        digest = file_digest(path, hash_algorithm)
        if digest.startswith(file_hash.lower()) and len(file_hash) >= 8:
            return path
        os.remove(path)
        if not was_cached:
            break
        was_cached = False
    prefix = "" if full else "..."
    raise ValueError(
        f"The file downloaded from {url} failed its integrity check and was "
        f"removed from the cache ({path}): expected {hash_algorithm} "
        f"{file_hash}{prefix}, got {digest}. The download was incomplete or "
        "the file is not the published one. Try again; if it keeps failing, "
        "download the file yourself, check it, and pass its path as `weights=`."
    )
