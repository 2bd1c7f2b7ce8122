"""Published ImageNet checkpoints of the NF models, and the weights loader.

`CHECKPOINTS` holds one row per published file: where it lives, its format,
its hash, how it was evaluated (resolution and eval transform) and what it
scored. `load_weights` (called by every model constructor) accepts

* ``None`` — nothing is loaded;
* ``"imagenet"`` — the variant's published checkpoint: downloaded once with
  `keras.utils.get_file` into ``$KERAS_HOME/models`` (hash checked; a file
  that does not match is removed), converted by parameter name with shape
  checks, and cached next to the download as ``<file>.weights.h5`` (or
  ``<file>_notop.weights.h5`` when only the body was loaded) so that later
  loads read the Keras file and work offline;
* a local Keras ``.weights.h5`` file;
* a DeepMind Haiku checkpoint (``.npz``/``.pkl``; `nfnet_keras.convert.haiku`);
* a timm state dict (``.pth``/``.pt``/``.bin`` via ``torch.load(...,
  weights_only=True)`` when PyTorch is installed, ``.safetensors`` via the
  ``safetensors`` NumPy API; `nfnet_keras.convert.timm`);
* a URL of any of these (downloaded like ``"imagenet"``; the hash is checked
  when the URL is a row of `CHECKPOINTS`).

With ``include_top=False`` everything but the classifier (``predictions``)
is loaded.

Conventions: the published tensors of the F-models were all trained under
DeepMind's conventions (tanh GELU, ``max(N var, 1e-4)`` weight
standardisation; reference doc §5). Build the model with
``convention="deepmind"`` (the default) to evaluate them as trained, or with
``convention="timm"`` to reproduce timm's outputs to float precision.
"""

import dataclasses
import hashlib
import importlib
import os
import re
import urllib.parse

import keras
from keras import ops

from nfnet_keras.imagenet_utils import preprocess_input, resize_and_center_crop

# ---------------------------------------------------------------------------
# Rows.


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """How a checkpoint's published accuracy was measured.

    The image is resized (bicubic) so that both sides (``keep_aspect=False``,
    "squash") or its shorter side (``keep_aspect=True``) equal `resize`,
    then centre-cropped to ``size x size`` and normalised with the ImageNet
    mean/std (`preprocess_input`).
    """

    size: int  # side of the centre crop fed to the network (px)
    resize: int  # side the image is first resized to (px)
    keep_aspect: bool  # False: squash both sides to `resize`; True: shorter side
    antialias: bool  # True: PIL-style area-aware resampling (timm); False: tf.image.resize (DeepMind)
    interpolation: str = "bicubic"  # both references evaluate with bicubic resizing


def _deepmind_eval(size):
    # deepmind-research `nfnets/dataset.py` `_decode_and_resize_then_crop` with
    # eval_preproc "resize_crop_32" (`experiment_nfnets.py`): tf.image.resize
    # bicubic (no antialiasing, no clamping) to (S + 32) x (S + 32), aspect
    # not kept, centre crop S (reference doc §8.1).
    return EvalTransform(size, size + 32, keep_aspect=False, antialias=False)


def _timm_eval(size, crop_pct, keep_aspect):
    # timm `transforms_imagenet_eval`: scale = floor(S / crop_pct), PIL bicubic
    # resize (squash for crop_mode='squash', shorter side otherwise), centre
    # crop S (timm `timm/data/transforms_factory.py`).
    return EvalTransform(size, int(size / crop_pct), keep_aspect, antialias=True)


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One published file of ImageNet-1k weights."""

    variant: str  # the package's variant name ("nfnet_f0")
    source: str  # who published it: "deepmind" or "timm"
    url: str  # where it is downloaded from
    file_format: str  # "haiku" (DeepMind pickle) or "timm" (PyTorch state dict)
    file_hash: str  # hex digest, or its leading digits (timm file names carry 8)
    hash_algorithm: str  # "md5" or "sha256"
    hash_verified: bool  # whether the hash was checked against the file by this package
    architecture: str  # the network the tensors belong to: "deepmind" (dm_nfnet) or "timm"
    eval_transform: EvalTransform  # the evaluation the published top-1 used
    top1: float  # published ImageNet-1k top-1 (%) at eval_transform.size
    top1_source: str  # where that number is published
    license: str
    citation: str
    constructor: str  # "module:function" building the matching Keras model

    @property
    def file_name(self):
        return os.path.basename(urllib.parse.urlsplit(self.url).path)


_DM_BASE = "https://storage.googleapis.com/dm-nfnets/"
_TIMM_DNF = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-dnf-weights/"
_TIMM_NF = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
_NFNET_CITATION = (
    "Brock, De, Smith, Simonyan. High-Performance Large-Scale Image "
    "Recognition Without Normalization. ICML 2021, arXiv:2102.06171."
)
_NF_CITATION = (
    "Brock, De, Smith. Characterizing signal propagation to close the "
    "performance gap in unnormalized ResNets. ICLR 2021, arXiv:2101.08692."
)
_DM_LICENSE = (
    "Apache-2.0 (the deepmind-research repository's licence; its nfnets "
    "README states no separate licence for the weights)"
)
_TIMM_LICENSE = "Apache-2.0 (timm `pretrained_cfg` license field)"

# DeepMind rows: URLs and top-1 from deepmind-research `nfnets/README.md`;
# md5 sums as recorded by ethanluoyc/jam `checkpoints.py` (reference doc
# §9.1), not yet checked against the files by this package.
# timm rows: URLs, test sizes and crop_pct from timm 1.0.31
# `timm/models/nfnet.py` `default_cfgs`; the 8 hex digits in each file name
# are the start of its SHA-256 (timm/torch.hub convention, reference doc
# §9.3); top-1 from timm `results/results-imagenet.csv` (reference doc §2, §6).
_F_ROWS = {
    # variant: (test px, DM md5, DM top-1, timm file, timm crop_pct, timm top-1)
    "F0": (256, "0a41039da1cb43adf47f1b7d86ddfe0f", 83.6, "dm_nfnet_f0-604f9c3a.pth", 0.9, 83.468),
    "F1": (320, "c9126bbfaf855f9ddb7ff3b902558781", 84.7, "dm_nfnet_f1-fc540f82.pth", 0.91, 84.700),
    "F2": (352, "7a018d8d1498020e2f5a8719a1e7f53f", 85.1, "dm_nfnet_f2-89875923.pth", 0.92, 85.184),
    "F3": (416, "d8e1e78d26db659c486150dbaccbe78a", 85.7, "dm_nfnet_f3-d74ab3aa.pth", 0.94, 85.676),
    "F4": (512, "f5974a7e3388aa81b91a9f1403e759a4", 85.9, "dm_nfnet_f4-0ac5b10b.pth", 0.951, 85.838),
    "F5": (544, "8639e925de951030651ac775b9f915c3", 86.0, "dm_nfnet_f5-ecb20ab1.pth", 0.954, 86.102),
    "F6": (576, "b16cca40ac1ecec2bd5e3273866da0c1", 86.5, "dm_nfnet_f6-e0f12116.pth", 0.956, 86.364),
}


def _f_rows():
    rows = []
    for name, (size, md5, dm_top1, timm_file, crop_pct, timm_top1) in _F_ROWS.items():
        variant = f"nfnet_{name.lower()}"
        constructor = f"nfnet_keras.models.nfnet:NFNet{name}"
        rows.append(
            Checkpoint(
                variant=variant,
                source="deepmind",
                url=f"{_DM_BASE}{name}_haiku.npz",
                file_format="haiku",
                file_hash=md5,
                hash_algorithm="md5",
                hash_verified=False,
                architecture="deepmind",
                eval_transform=_deepmind_eval(size),
                top1=dm_top1,
                top1_source="deepmind-research nfnets/README.md"
                + (" (F6 trained with SAM)" if name == "F6" else ""),
                license=_DM_LICENSE,
                citation=_NFNET_CITATION,
                constructor=constructor,
            )
        )
        rows.append(
            Checkpoint(
                variant=variant,
                source="timm",
                url=_TIMM_DNF + timm_file,
                file_format="timm",
                file_hash=timm_file.rsplit("-", 1)[1].split(".")[0],
                hash_algorithm="sha256",
                hash_verified=False,
                # DeepMind's tensors re-laid-out for PyTorch (reference doc §5).
                architecture="deepmind",
                eval_transform=_timm_eval(size, crop_pct, keep_aspect=False),
                top1=timm_top1,
                top1_source="timm results/results-imagenet.csv (dm_nfnet_"
                f"{name.lower()}.dm_in1k)",
                license=_TIMM_LICENSE,
                citation=_NFNET_CITATION,
                constructor=constructor,
            )
        )
    return rows


CHECKPOINTS = tuple(
    _f_rows()
    + [
        # timm-trained weights of timm's own NF-ResNet-50 and NF-RegNet-B1
        # architectures (7x7 + max-pool stem, D-style shortcuts, 8-rounded
        # widths; reference doc §6), which are not DeepMind's.
        Checkpoint(
            variant="timm_nf_resnet50",
            source="timm",
            url=_TIMM_NF + "nf_resnet50_ra2-9f236009.pth",
            file_format="timm",
            file_hash="9f236009",
            hash_algorithm="sha256",
            hash_verified=False,
            architecture="timm",
            # timm default_cfgs 'nf_resnet50.ra2_in1k': test 288, crop_pct 0.94,
            # crop_mode 'center' (shorter side).
            eval_transform=_timm_eval(288, 0.94, keep_aspect=True),
            top1=80.658,
            top1_source="timm results/results-imagenet.csv (nf_resnet50.ra2_in1k @288)",
            license=_TIMM_LICENSE,
            citation=_NF_CITATION,
            constructor="nfnet_keras.models.timm_variants:TimmNFResNet50",
        ),
        Checkpoint(
            variant="timm_nf_regnet_b1",
            source="timm",
            url=_TIMM_NF + "nf_regnet_b1_256_ra2-ad85cfef.pth",
            file_format="timm",
            file_hash="ad85cfef",
            hash_algorithm="sha256",
            hash_verified=False,
            architecture="timm",
            # timm default_cfgs 'nf_regnet_b1.ra2_in1k': test 288, crop_pct 0.9
            # (the `_dcfg` default), crop_mode 'center'.
            eval_transform=_timm_eval(288, 0.9, keep_aspect=True),
            top1=79.368,
            top1_source="timm results/results-imagenet.csv (nf_regnet_b1.ra2_in1k @288)",
            license=_TIMM_LICENSE,
            citation=_NF_CITATION,
            constructor="nfnet_keras.models.timm_variants:TimmNFRegNetB1",
        ),
    ]
)

# Which published file `weights="imagenet"` takes first: DeepMind's own
# (the paper's numbers); timm's copy of the same tensors if that fails to
# download.
SOURCE_PREFERENCE = ("deepmind", "timm")

_CACHE_FORMAT = 1  # bump when the layout of converted files changes


def checkpoints(variant):
    """The published checkpoints of `variant`, preferred first."""
    rows = [row for row in CHECKPOINTS if row.variant == variant]
    return sorted(rows, key=lambda row: SOURCE_PREFERENCE.index(row.source))


def checkpoint(variant, source=None):
    """The preferred (or `source`'s) checkpoint row of `variant`."""
    rows = [r for r in checkpoints(variant) if source in (None, r.source)]
    if not rows:
        known = sorted({r.variant for r in CHECKPOINTS})
        raise ValueError(
            f"No published ImageNet weights for variant={variant!r}"
            + (f" from source={source!r}" if source else "")
            + f". Variants with weights: {known}. Use `weights=None` or the "
            "path of your own weights file."
        )
    return rows[0]


# ---------------------------------------------------------------------------
# Evaluation preprocessing.


def eval_transform(images, variant, source="deepmind", normalize=True):
    """The evaluation preprocessing a checkpoint's top-1 was measured with.

    Args:
        images: RGB image(s) with pixels in [0, 255], shape ``(H, W, 3)`` or
            ``(N, H, W, 3)``, any real or integer dtype.
        variant: the variant name (``"nfnet_f0"``).
        source: whose checkpoint (and evaluation) to follow: ``"deepmind"``
            (squash to S+32, centre crop S, tf.image.resize bicubic) or
            ``"timm"`` (timm's crop_pct, antialiased bicubic).
        normalize: also apply `preprocess_input` (ImageNet mean/std).

    Returns:
        A float32 tensor ``(N, S, S, 3)`` (or ``(S, S, 3)``).
    """
    row = checkpoint(variant, source)
    t = row.eval_transform
    shape = tuple(ops.shape(images))
    if len(shape) not in (3, 4) or shape[-1] != 3:
        raise ValueError(
            "`images` must have shape (H, W, 3) or (N, H, W, 3). "
            f"Received: images with shape {shape}"
        )
    x = resize_and_center_crop(
        images, t.size, t.resize, t.keep_aspect, t.antialias, t.interpolation
    )
    return preprocess_input(x) if normalize else x


# ---------------------------------------------------------------------------
# Files.


def _keras_home():
    # KERAS_HOME is read here (not at import) so that it can change at run time.
    return os.environ.get("KERAS_HOME") or keras.src.backend.config.keras_home()


def file_digest(path, algorithm):
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hash_matches(path, expected, algorithm):
    digest = file_digest(path, algorithm)
    return digest.startswith(expected.lower()) and len(expected) >= 8, digest


def _download(url, file_hash=None, hash_algorithm="sha256"):
    """`keras.utils.get_file` into $KERAS_HOME/models, then the hash check.

    A file that fails the check is removed from the cache; if it was an old
    cached copy it is downloaded once more, a fresh download is reported.
    """
    fname = os.path.basename(urllib.parse.urlsplit(url).path)
    if not fname:
        raise ValueError(f"Cannot tell a file name from the URL {url!r}.")
    cache_dir = _keras_home()
    # get_file falls back to /tmp/.keras when the directory is not writable,
    # which includes "does not exist yet".
    try:
        os.makedirs(cache_dir, exist_ok=True)
    except OSError:
        pass
    was_cached = os.path.exists(os.path.join(cache_dir, "models", fname))
    while True:
        path = keras.utils.get_file(
            fname=fname, origin=url, cache_dir=cache_dir, cache_subdir="models"
        )
        if file_hash is None:
            return path
        ok, digest = _hash_matches(path, file_hash, hash_algorithm)
        if ok:
            return path
        os.remove(path)
        if not was_cached:
            break
        was_cached = False
    prefix = "..." if len(file_hash) < hashlib.new(hash_algorithm).digest_size * 2 else ""
    raise ValueError(
        f"The file downloaded from {url} failed its integrity check and was "
        f"removed from the cache ({path}): expected {hash_algorithm} "
        f"{file_hash}{prefix}, got {digest}. The download was incomplete or "
        "the file is not the published one. Try again; if it keeps failing, "
        "download the file yourself, check it, and pass its path as `weights=`."
    )


def _file_kind(path):
    name = os.path.basename(path).lower()
    if name.endswith(".weights.h5") or name.endswith(".h5"):
        return "keras"
    if name.endswith((".npz", ".pkl", ".pickle")):
        return "haiku"
    if name.endswith((".pth", ".pt", ".bin", ".ckpt")):
        return "torch"
    if name.endswith(".safetensors"):
        return "safetensors"
    raise ValueError(
        "Cannot tell the format of the weights file from its name. Expected "
        "a Keras `.weights.h5`, a DeepMind Haiku `.npz`, or a timm "
        f"`.pth`/`.safetensors` file. Received: weights={path!r}"
    )


def read_timm_file(path):
    """A timm checkpoint as a dict of NumPy arrays (name -> array)."""
    kind = _file_kind(path)
    if kind == "safetensors":
        from safetensors.numpy import load_file

        return dict(load_file(path))
    if kind != "torch":
        raise ValueError(f"{path!r} is not a .pth or .safetensors file.")
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"Reading the PyTorch checkpoint {path} needs `torch`, which is not "
            "installed. Install it, or use the `.safetensors` version of the "
            "checkpoint (read with the `safetensors` package, no torch needed)."
        ) from e
    # weights_only=True: tensors and containers only, no code (PyTorch's
    # restricted unpickler).
    state = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model", "state_dict_ema"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
            break
    if not isinstance(state, dict):
        raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__}).")
    out = {}
    for key, value in state.items():
        if not hasattr(value, "detach"):
            raise ValueError(f"{path}: entry {key!r} is not a tensor.")
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()
        out[key.removeprefix("module.")] = value.numpy()
    return out


# ---------------------------------------------------------------------------
# Conversion and cache.


# Name-rule sets of `nfnet_keras.convert.timm` by model-name prefix: timm's
# `dm_nfnet_*` layout for the NFNets, timm's own NF-ResNet / NF-RegNet
# architectures for the `timm_*` models (reference doc §6).
_TIMM_RULES_BY_PREFIX = (
    ("nfnet_", "dm_nfnet"),
    ("timm_nf_resnet", "timm_nf_resnet"),
    ("timm_nf_regnet", "timm_nf_regnet"),
)


def _timm_arch(variant):
    for prefix, arch in _TIMM_RULES_BY_PREFIX:
        if variant.startswith(prefix):
            return arch
    raise ValueError(
        "timm checkpoints load into the NFNets (timm's `dm_nfnet_*` layout) and "
        "into timm's own NF-ResNet / NF-RegNet architectures (`TimmNFResNet50`, "
        "`TimmNFRegNetB1`, ...; their stems, shortcuts and widths differ from "
        f"DeepMind's, reference doc §6). Received a model of variant={variant!r}."
    )


def load_source(model, path, variant, include_top=True, kind=None):
    """Converts and assigns a non-Keras checkpoint file; returns its format."""
    kind = kind or _file_kind(path)
    if kind == "haiku":
        if not variant.startswith("nfnet_"):
            raise ValueError(
                "DeepMind Haiku checkpoints exist for NFNet-F0...F6 only. "
                f"Received a model of variant={variant!r}."
            )
        from nfnet_keras.convert.haiku import load_haiku_params

        load_haiku_params(model, path, include_top=include_top)
    elif kind in ("torch", "safetensors"):
        from nfnet_keras.convert.timm import load_timm_state_dict

        arch = _timm_arch(variant)
        load_timm_state_dict(
            model,
            read_timm_file(path),
            arch=arch,
            skip=None if include_top else r"head\.fc\.",
        )
    elif kind == "keras":
        model.load_weights(path)
    else:  # pragma: no cover - _file_kind raises first
        raise ValueError(f"Unknown checkpoint kind {kind!r}")
    return kind


def _cache_path(path, include_top):
    stem = os.path.splitext(path)[0]
    return f"{stem}{'' if include_top else '_notop'}.weights.h5"


def _cache_tag(variant, source_name, source_hash):
    return {
        "nfnet_keras_cache_format": _CACHE_FORMAT,
        "nfnet_keras_variant": variant,
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


def _load_downloaded(model, url, variant, include_top, file_hash, hash_algorithm):
    """Download (or reuse) `url`, convert, cache; the fast path reads the cache."""
    fname = os.path.basename(urllib.parse.urlsplit(url).path)
    kind = _file_kind(fname)
    tag = _cache_tag(variant, fname, file_hash)
    expected_source = os.path.join(_keras_home(), "models", fname)
    if kind != "keras" and _load_cache(model, expected_source, include_top, tag):
        return model
    path = _download(url, file_hash, hash_algorithm)
    if kind == "keras":
        model.load_weights(path)
        return model
    if _load_cache(model, path, include_top, tag):  # get_file fell back to /tmp
        return model
    load_source(model, path, variant, include_top, kind)
    _write_cache(model, path, include_top, tag)
    return model


def _load_imagenet(model, variant, include_top):
    rows = checkpoints(variant)
    if not rows:
        checkpoint(variant)  # raises the explanation
    failures = []
    for row in rows:
        try:
            return _load_downloaded(
                model, row.url, variant, include_top, row.file_hash, row.hash_algorithm
            )
        except Exception as e:  # noqa: BLE001 - network: try the next mirror
            if "URL fetch failure" not in str(e):
                raise
            failures.append(f"{row.url}: {e}")
    raise ValueError(
        f"Could not download the ImageNet weights of {variant}:\n  "
        + "\n  ".join(failures)
        + "\nCheck the network, or download one of these files yourself and "
        "pass its path as `weights=`."
    )


def _row_for_url(url):
    for row in CHECKPOINTS:
        if row.url == url:
            return row
    return None


def load_weights(model, weights, variant, include_top):
    """Loads `weights` into `model` (see the module docstring for the forms).

    Args:
        model: the freshly built model.
        weights: ``None``, ``"imagenet"``, a file path or a URL.
        variant: the model's variant name (``"nfnet_f0"``, ``"nfnet_tiny"``).
        include_top: whether the model has its classifier.

    Returns:
        `model`.
    """
    if weights is None:
        return model
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            "`weights` must be None, 'imagenet', a file path or a URL. "
            f"Received: weights={weights!r} of type {type(weights).__name__}"
        )
    weights = os.fspath(weights)
    if weights == "imagenet":
        return _load_imagenet(model, variant, include_top)
    if re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", weights):
        row = _row_for_url(weights)
        if row is not None and row.variant != variant:
            raise ValueError(
                f"{weights} holds the weights of {row.variant}; the model is "
                f"{variant}."
            )
        return _load_downloaded(
            model,
            weights,
            variant,
            include_top,
            row.file_hash if row else None,
            row.hash_algorithm if row else "sha256",
        )
    if not os.path.exists(weights):
        raise ValueError(
            "`weights` must be None, 'imagenet', an existing file or a URL. "
            f"Received: weights={weights!r} (no such file)"
        )
    load_source(model, weights, variant, include_top)
    return model


def resolve_constructor(row):
    """The Keras constructor a checkpoint row loads into."""
    module, _, name = row.constructor.partition(":")
    return getattr(importlib.import_module(module), name)


__all__ = [
    "CHECKPOINTS",
    "Checkpoint",
    "EvalTransform",
    "checkpoint",
    "checkpoints",
    "eval_transform",
    "load_weights",
    "read_timm_file",
]
