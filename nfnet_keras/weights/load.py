"""`load_weights`: every form of `weights=`, the converters and the cache.

`load_weights` (called by every model constructor) accepts

* ``None`` — nothing is loaded;
* ``"imagenet"`` — the architecture's published checkpoint: downloaded
  once into ``$KERAS_HOME/models`` (hash checked; a file that does not
  match is removed), converted by parameter name with shape checks, and
  cached next to the download as ``<file>.weights.h5`` (or
  ``<file>_notop.weights.h5`` when only the body was loaded) so that later
  loads read the Keras file and work offline;
* a checkpoint name of the registry (``"nfnet_f0.timm"``);
* a local Keras ``.weights.h5`` file;
* a DeepMind Haiku checkpoint (``.npz``/``.pkl``; `nfnet_keras.convert.haiku`);
* a timm state dict (``.pth``/``.pt``/``.bin`` via ``torch.load(...,
  weights_only=True)`` when PyTorch is installed, ``.safetensors`` via the
  ``safetensors`` NumPy API; `nfnet_keras.convert.timm`);
* a URL of any of these (downloaded like ``"imagenet"``; the hash is checked
  when the URL is a row of the registry).

With ``include_top=False`` everything but the classifier (``predictions``)
is loaded.

Conventions: the published tensors of the F-models were all trained under
DeepMind's conventions (tanh GELU, ``max(N var, 1e-4)`` weight
standardisation; reference doc §5). Build the model with
``convention="deepmind"`` (their default) to evaluate them as trained, or
with ``convention="timm"`` to reproduce timm's outputs to float precision.
"""

import os
import re

from nfnet_keras.weights import rows as rows_lib
from nfnet_keras.weights.download import DownloadError, cached_path, download, file_name
from nfnet_keras.weights.readers import file_kind, read_timm_file, validate_file
from nfnet_keras.weights.transform import deepmind_eval, timm_eval

_CACHE_FORMAT = 1  # bump when the layout of converted files changes


def load_source(model, path, arch, include_top=True, kind=None):
    """Converts and assigns a non-Keras checkpoint file; returns its format."""
    kind = kind or file_kind(path)
    if kind == "haiku":
        if not arch.haiku_layout:
            raise ValueError(
                "DeepMind Haiku checkpoints exist for NFNet-F0...F6 only. "
                f"Received a model of architecture {arch.name!r}."
            )
        from nfnet_keras.convert.haiku import load_haiku_params

        load_haiku_params(model, path, include_top=include_top)
    elif kind in ("torch", "safetensors"):
        if arch.timm_layout is None:
            raise ValueError(
                "timm checkpoints load into the NFNets (timm's `dm_nfnet_*` layout) and "
                "into timm's own NF-ResNet / NF-RegNet architectures (`TimmNFResNet50`, "
                "`TimmNFRegNetB1`, ...; their stems, shortcuts and widths differ from "
                f"DeepMind's, reference doc §6). Received a model of architecture {arch.name!r}."
            )
        from nfnet_keras.convert.timm import load_timm_state_dict

        load_timm_state_dict(
            model,
            read_timm_file(path),
            arch=arch.timm_layout,
            skip=None if include_top else r"head\.fc\.",
        )
    elif kind == "keras":
        _load_keras_file(model, path)
    else:  # pragma: no cover - file_kind raises first
        raise ValueError(f"Unknown checkpoint kind {kind!r}")
    return kind


def _load_keras_file(model, path):
    validate_file(path, "keras")
    model.load_weights(path)


# ---------------------------------------------------------------------------
# The converted-file cache.


def _cache_path(path, include_top):
    stem = os.path.splitext(path)[0]
    return f"{stem}{'' if include_top else '_notop'}.weights.h5"


def _cache_tag(arch, source_name, source_hash):
    return {
        "nfnet_keras_cache_format": _CACHE_FORMAT,
        "nfnet_keras_variant": arch.name,
        "nfnet_keras_source": source_name,
        "nfnet_keras_source_hash": source_hash or "",
    }


def _read_cache_tag(path):
    import h5py

    try:
        with h5py.File(path, "r") as f:
            return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}
    except OSError:
        return None


def _load_cache(model, source_path, include_top, tag):
    """Loads the converted file of `source_path` if a valid one exists."""
    candidates = [_cache_path(source_path, True)]
    if not include_top:
        candidates.append(_cache_path(source_path, False))
    for path in candidates:
        if not os.path.exists(path):
            continue
        found = _read_cache_tag(path)
        if found is None:  # unreadable (e.g. truncated): convert again
            os.remove(path)
            continue
        if any(str(found.get(k)) != str(v) for k, v in tag.items()):
            continue
        model.load_weights(path)
        return path
    return None


def _write_cache(model, source_path, include_top, tag):
    import h5py

    path = _cache_path(source_path, include_top)
    tmp = f"{path[: -len('.weights.h5')]}.partial-{os.getpid()}.weights.h5"
    try:
        model.save_weights(tmp)
        with h5py.File(tmp, "a") as f:
            for key, value in tag.items():
                f.attrs[key] = value
        os.replace(tmp, path)
    except OSError:  # read-only cache directory: loading still succeeded
        if os.path.exists(tmp):
            os.remove(tmp)
        return None
    return path


def _load_downloaded(model, url, arch, include_top, file_hash, hash_algorithm):
    """Download (or reuse) `url`, convert, cache; the fast path reads the cache."""
    fname = file_name(url)
    kind = file_kind(fname)
    tag = _cache_tag(arch, fname, file_hash)
    if kind != "keras" and _load_cache(model, cached_path(url), include_top, tag):
        return model
    path = download(url, file_hash, hash_algorithm, validate=lambda p: validate_file(p, kind))
    if kind == "keras":
        _load_keras_file(model, path)
        return model
    load_source(model, path, arch, include_top, kind)
    _write_cache(model, path, include_top, tag)
    return model


def _load_checkpoints(model, rows, arch, include_top):
    """Loads the first of `rows` that downloads; returns its row."""
    failures = []
    for row in rows:
        if row.architecture != arch.name:
            raise ValueError(
                f"The checkpoint {row.name} holds the weights of {row.architecture}; "
                f"the model is {arch.name}."
            )
        try:
            _load_downloaded(model, row.url, arch, include_top, row.file_hash, row.hash_algorithm)
            return row
        except DownloadError as e:  # network: try the next mirror
            failures.append(str(e))
    raise ValueError(
        f"Could not download the ImageNet weights of {arch.name}:\n  "
        + "\n  ".join(failures)
        + "\nCheck the network, or download one of these files yourself and "
        "pass its path as `weights=`."
    )


def load_weights(model, weights, arch, include_top):
    """Loads `weights` into `model` (see the module docstring for the forms).

    Args:
        model: the freshly built model.
        weights: ``None``, ``"imagenet"``, a checkpoint name, a file path or
            a URL.
        arch: the model's `Architecture` row.
        include_top: whether the model has its classifier.

    Returns:
        The registry `Checkpoint` row that was loaded, or `None` (random
        weights, or a file that is not a registry row).
    """
    if weights is None:
        return None
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            "`weights` must be None, 'imagenet', a file path or a URL. "
            f"Received: weights={weights!r} of type {type(weights).__name__}"
        )
    weights = os.fspath(weights)
    if weights == "imagenet":
        rows = rows_lib.checkpoints(arch.name)
        if not rows:
            rows_lib.checkpoint(arch.name)  # raises the explanation
        return _load_checkpoints(model, rows, arch, include_top)
    if weights in {row.name for row in rows_lib.CHECKPOINTS}:
        return _load_checkpoints(model, [rows_lib.checkpoint(weights)], arch, include_top)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", weights):
        row = rows_lib.checkpoint_for_url(weights)
        if row is not None:
            return _load_checkpoints(model, [row], arch, include_top)
        try:
            _load_downloaded(model, weights, arch, include_top, None, "sha256")
        except DownloadError as e:
            raise ValueError(f"Could not download the weights file: {e}") from e
        return None
    if not os.path.exists(weights):
        raise ValueError(
            "`weights` must be None, 'imagenet', an existing file or a URL. "
            f"Received: weights={weights!r} (no such file)"
        )
    load_source(model, weights, arch, include_top)
    return None


def eval_transform(arch):
    """The evaluation transform of an architecture: its preferred
    checkpoint's, else its convention's reference evaluation at the row's
    test size."""
    rows = rows_lib.checkpoints(arch.name)
    if rows:
        return rows[0].eval_transform
    if arch.convention == "deepmind":
        return deepmind_eval(arch.test_size)
    return timm_eval(arch.test_size)


def pretrained_cfg(arch, checkpoint=None):
    """timm-`pretrained_cfg`-style metadata of a built model (JSON-ready)."""
    transform = checkpoint.eval_transform if checkpoint else eval_transform(arch)
    cfg = {
        "architecture": arch.name,
        "checkpoint": checkpoint.name if checkpoint else None,
        "source": checkpoint.source if checkpoint else None,
        "url": checkpoint.url if checkpoint else None,
        "top1": checkpoint.top1 if checkpoint else None,
        "license": checkpoint.license if checkpoint else None,
        "num_classes": 1000,
        **transform.metadata(),
    }
    return {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()}
