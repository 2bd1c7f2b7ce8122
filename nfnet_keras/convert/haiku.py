"""DeepMind Haiku checkpoints (`F0_haiku.npz` ... `F6_haiku.npz`) -> Keras.

The published files are not NumPy archives despite their suffix: they are
pickles written in 2021 with dill 0.3.3 and NumPy 1.x of a two-level Haiku
parameter tree, module path -> parameter name -> float32 array (reference doc
§9.1). Loading them with `dill.load` would import Haiku and execute whatever
the pickle asks for. `read_haiku_file` instead runs a restricted unpickler
that knows exactly the objects such a file is made of and refuses every
other global (``os.system``, ``builtins.eval``, ...) before it is called:

* each mapping level: a call of ``haiku._src.data_structures.FlatMapping``
  (or, in older files, ``frozendict``) with one plain dict, or a plain dict;
* each array: NumPy's ``_reconstruct(ndarray, (0,), b'b')`` + ``BUILD``
  state, named ``numpy.core.multiarray._reconstruct`` (NumPy 1.x),
  ``numpy._core.multiarray._reconstruct`` (NumPy 2.x), or — as dill 0.3.3
  writes it — ``dill._dill._get_attr(dill._dill._import_module(
  'numpy.core._multiarray_umath'), '_reconstruct')``; plus the dtype, the
  ``scalar`` form of 0-d values and the protocol-5 ``_frombuffer`` form.

Neither Haiku nor dill is imported. A true ``.npz`` (zip) archive of a
flattened tree (`utils.flatten_haiku_tree` names such as
``NFNet.nf_block_1.conv0.w``) is read with ``np.load(allow_pickle=False)``.

`load_haiku_params` then maps the parameters onto a model of this package by
name rule (reference doc §9.2): ``NFNet/~/stem_conv{k}`` -> ``stem_conv{k}``,
``NFNet/~/nf_block_{i}/~/conv0|conv1|conv1b|conv2|conv_shortcut`` ->
``stage{s}_block{b}_conv0|...|shortcut_conv`` (i counts blocks over the whole
network, the first has no suffix), ``.../squeeze_excite/~/linear[_1]`` ->
``stage{s}_block{b}_se`` ``fc1`` [``fc2``], ``nf_block_{i}`` ``skip_gain`` ->
``stage{s}_block{b}_skip_gain``, ``final_conv`` -> ``final_conv``, ``linear``
-> ``predictions``; ``w`` -> ``kernel``, ``b``/``bias`` -> ``bias``, ``gain``
-> ``gain``. Haiku and Keras share the HWIO conv and (in, out) dense
layouts, so no tensor is transposed; every shape is checked.
"""

import io
import pickle
import re

import numpy as np

from nfnet_keras import layers as nf_layers
from nfnet_keras.convert import assign_or_raise

# Names shown per section of a refused load (an F1 file into F0 lists hundreds).
_LISTING_LIMIT = 40

# ---------------------------------------------------------------------------
# The restricted unpickler.

try:  # NumPy >= 2 (and 1.26's forward-compatibility package)
    from numpy._core import multiarray as _multiarray
except ImportError:  # pragma: no cover - NumPy < 1.26
    from numpy.core import multiarray as _multiarray

_MAX_NDIM = 8


class UnsafePickleError(ValueError):
    """A pickle asked for something a Haiku checkpoint never contains."""


def _refuse(what):
    raise UnsafePickleError(
        f"Refusing to load {what}: a DeepMind Haiku checkpoint holds only "
        "Haiku mappings (FlatMapping/frozendict/dict) of NumPy arrays, and "
        "this file asks for something else. It is not a genuine NFNet "
        "checkpoint, or it was modified; it was not executed."
    )


def _mapping(*args, **kwargs):
    """Stand-in for FlatMapping/frozendict/OrderedDict: returns a plain dict."""
    if kwargs or len(args) > 1:
        _refuse("a mapping built with unexpected arguments")
    if not args:
        return {}
    data = args[0]
    if isinstance(data, dict):
        return data
    if isinstance(data, (list, tuple)) and all(
        isinstance(item, tuple) and len(item) == 2 for item in data
    ):
        return dict(data)
    _refuse(f"a mapping built from a {type(data).__name__}")


def _check_dtype(dtype):
    dtype = np.dtype(dtype)
    if dtype.kind not in "fiub" or dtype.hasobject or dtype.fields:
        _refuse(f"an array of dtype {dtype}")
    return dtype


def _dtype(spec, align=False, copy=True):
    """Stand-in for `numpy.dtype(spec, align, copy)` (plain numeric only)."""
    if not isinstance(spec, str) or not re.fullmatch(r"[<>|=]?[fiub]\d{1,2}", spec):
        _refuse(f"the dtype {spec!r}")
    # copy=True whatever the pickle says: the BUILD that follows must not
    # touch NumPy's shared dtype singletons.
    return _check_dtype(np.dtype(spec, align=bool(align), copy=True))


class _SafeNdarray:
    """The marker `numpy.ndarray` resolves to (only ever passed, never called)."""


def _reconstruct(subtype, shape, dtype_code):
    """Stand-in for NumPy's `_reconstruct`: plain ndarrays only."""
    if subtype is not _SafeNdarray:
        _refuse(f"an array of type {subtype!r}")
    if not isinstance(shape, tuple) or len(shape) > _MAX_NDIM:
        _refuse(f"an array of shape {shape!r}")
    if dtype_code not in (b"b", "b"):
        _refuse(f"an array with type code {dtype_code!r}")
    return _Array(shape)


class _Array(np.ndarray):
    """An empty array whose BUILD state is checked before NumPy sees it."""

    def __new__(cls, shape):
        return _multiarray._reconstruct(np.ndarray, shape, b"b").view(cls)

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 5):
            _refuse("an array with an unexpected state")
        _, shape, dtype, _, data = state
        if not isinstance(dtype, np.dtype):
            _refuse(f"an array state with dtype {type(dtype).__name__}")
        _check_dtype(dtype)
        if not isinstance(data, (bytes, bytearray)):
            _refuse(f"array data of type {type(data).__name__}")
        np.ndarray.__setstate__(self, state)


def _scalar(dtype, data):
    """Stand-in for NumPy's `scalar(dtype, bytes)` (0-d values)."""
    if not isinstance(dtype, np.dtype) or not isinstance(data, bytes):
        _refuse("a scalar with unexpected arguments")
    _check_dtype(dtype)
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _frombuffer(buffer, dtype, shape, order):
    """Stand-in for NumPy's protocol-5 `_frombuffer` (in-band buffers only)."""
    if not isinstance(buffer, (bytes, bytearray)) or not isinstance(dtype, np.dtype):
        _refuse("an out-of-band or non-byte array buffer")
    _check_dtype(dtype)
    if order not in ("C", "F"):
        _refuse(f"an array of order {order!r}")
    return np.frombuffer(bytes(buffer), dtype=dtype).reshape(shape, order=order).copy()


def _codecs_encode(text, encoding):
    """Stand-in for `_codecs.encode`: how protocol-2 pickles store bytes."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        _refuse(f"_codecs.encode of {type(text).__name__} as {encoding!r}")
    return text.encode("latin1")


# The globals a Haiku checkpoint may name, by NumPy 1.x and 2.x module names.
_NUMPY_MODULES = ("numpy.core", "numpy._core")
_ALLOWED = {
    ("haiku._src.data_structures", "FlatMapping"): _mapping,
    ("haiku._src.data_structures", "frozendict"): _mapping,
    ("collections", "OrderedDict"): _mapping,
    ("numpy", "ndarray"): _SafeNdarray,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _codecs_encode,
}
for _module in _NUMPY_MODULES:
    _ALLOWED[(f"{_module}.multiarray", "_reconstruct")] = _reconstruct
    _ALLOWED[(f"{_module}.multiarray", "scalar")] = _scalar
    _ALLOWED[(f"{_module}.numeric", "_frombuffer")] = _frombuffer

# What dill's `_get_attr(_import_module(module), name)` may resolve to.
_DILL_ATTRIBUTES = {}
for _module in _NUMPY_MODULES:
    for _sub in ("_multiarray_umath", "multiarray"):
        _DILL_ATTRIBUTES[(f"{_module}.{_sub}", "_reconstruct")] = _reconstruct
        _DILL_ATTRIBUTES[(f"{_module}.{_sub}", "scalar")] = _scalar
_DILL_ATTRIBUTES[("numpy", "ndarray")] = _SafeNdarray
_DILL_ATTRIBUTES[("numpy", "dtype")] = _dtype


class _ModuleName(str):
    """What `dill._dill._import_module(name)` returns here: just the name."""


def _dill_import_module(name, safe=False):
    if not isinstance(name, str) or not any(name == m for m, _ in _DILL_ATTRIBUTES):
        _refuse(f"dill's _import_module({name!r})")
    return _ModuleName(name)


def _dill_get_attr(module, name):
    if not isinstance(module, _ModuleName) or (str(module), name) not in _DILL_ATTRIBUTES:
        _refuse(f"dill's _get_attr({module!r}, {name!r})")
    return _DILL_ATTRIBUTES[(str(module), name)]


_ALLOWED[("dill._dill", "_import_module")] = _dill_import_module
_ALLOWED[("dill._dill", "_get_attr")] = _dill_get_attr


class _HaikuUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            _refuse(f"the global {module}.{name}")

    def persistent_load(self, pid):
        _refuse("a persistent reference")


def _unpickle(data, path):
    try:
        return _HaikuUnpickler(io.BytesIO(data)).load()
    except UnsafePickleError:
        raise
    except Exception as e:  # malformed / truncated pickle stream
        raise ValueError(
            f"{path} is not a readable DeepMind Haiku checkpoint (pickle "
            f"error: {type(e).__name__}: {e}). Re-download it."
        ) from e


# ---------------------------------------------------------------------------
# Parameter trees.


def _dotted(module, param):
    """`NFNet/~/nf_block_1/~/conv0` + `w` -> `NFNet.nf_block_1.conv0.w`."""
    return module.replace("/~/", ".").replace("/", ".") + "." + param


def _as_array(value, where):
    if isinstance(value, np.generic):
        value = np.asarray(value)
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        _refuse(f"the leaf {where} of type {type(value).__name__}")
    return np.asarray(value).view(np.ndarray)


def _flatten_tree(tree):
    """Two-level mapping -> {dotted name: (display name, array)}."""
    if not isinstance(tree, dict):
        raise ValueError(
            "A Haiku checkpoint must hold a mapping of module paths. "
            f"Received a {type(tree).__name__}."
        )
    flat = {}
    for module, params in tree.items():
        if not isinstance(module, str) or not isinstance(params, dict):
            raise ValueError(
                "A Haiku checkpoint maps module paths (str) to parameter "
                f"mappings. Received {module!r}: {type(params).__name__}."
            )
        for param, value in params.items():
            display = f"{module}/{param}"
            flat[_dotted(module, param)] = (display, _as_array(value, display))
    return flat


def read_haiku_file(path):
    """Reads a DeepMind Haiku checkpoint safely.

    Args:
        path: a published ``F*_haiku.npz`` (a dill/pickle stream), a pickle
            of the same tree, or a real ``.npz`` archive of a flattened tree.

    Returns:
        A dict ``{"NFNet.nf_block_1.conv0.w": array, ...}`` (dotted names
        as `utils.flatten_haiku_tree` writes them).

    Raises:
        UnsafePickleError: the pickle names anything but the mappings and
            arrays of a checkpoint (nothing it names is ever called).
        ValueError: the file is not a Haiku checkpoint.
    """
    return {name: array for name, (_, array) in _read(path).items()}


def _read(path):
    with open(path, "rb") as f:
        data = f.read()
    if data[:4] == b"PK\x03\x04":  # a real zip-based .npz of a flat tree
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {
                _dotted(key.rsplit("/", 1)[0], key.rsplit("/", 1)[1])
                if "/" in key
                else key: (key, _as_array(archive[key], key))
                for key in archive.files
            }
    if not data[:1] == b"\x80":
        raise ValueError(
            f"{path} is neither a pickled Haiku parameter tree nor an .npz "
            "archive (unknown header). Is it a DeepMind NFNet checkpoint?"
        )
    return _flatten_tree(_unpickle(data, path))


# ---------------------------------------------------------------------------
# Haiku names <-> the package's layer names.

_BLOCK_LAYER = re.compile(r"stage(\d+)_block(\d+)_(\w+)$")
_BLOCK_PARTS = {
    "conv0": "conv0",
    "conv1": "conv1",
    "conv1b": "conv1b",
    "conv2": "conv2",
    "shortcut_conv": "conv_shortcut",
}
HEAD_MODULE = "linear"


def _block_modules(model, root):
    """(stage, block) -> Haiku module of that block, in network order."""
    blocks = sorted(
        {
            (int(m[1]), int(m[2]))
            for m in (_BLOCK_LAYER.match(layer.name) for layer in model.layers)
            if m
        }
    )
    return {
        sb: f"{root}.nf_block" + (f"_{i}" if i else "") for i, sb in enumerate(blocks)
    }


def haiku_names(model, root="NFNet"):
    """Lists ``(variable, dotted Haiku name)`` for every weight of `model`.

    Raises:
        ValueError: a layer with weights that no Haiku rule covers.
    """
    blocks = _block_modules(model, root)
    targets, unmapped = [], []
    for layer in model.layers:
        if not layer.weights:
            continue
        name = layer.name
        block = _BLOCK_LAYER.match(name)
        if re.fullmatch(r"stem_conv\d", name) or name == "final_conv":
            module = f"{root}.{name}"
        elif name == "predictions":
            module = f"{root}.{HEAD_MODULE}"
        elif block and block[3] in _BLOCK_PARTS:
            module = f"{blocks[int(block[1]), int(block[2])]}.{_BLOCK_PARTS[block[3]]}"
        elif block and block[3] == "skip_gain" and isinstance(layer, nf_layers.SkipGain):
            targets.append((layer.skip_gain, f"{blocks[int(block[1]), int(block[2])]}.skip_gain"))
            continue
        elif block and block[3] == "se" and isinstance(layer, nf_layers.SqueezeExcite):
            se = f"{blocks[int(block[1]), int(block[2])]}.squeeze_excite"
            for dense, linear in ((layer.fc1, "linear"), (layer.fc2, "linear_1")):
                targets.append((dense.kernel, f"{se}.{linear}.w"))
                targets.append((dense.bias, f"{se}.{linear}.b"))
            continue
        else:
            unmapped.append(name)
            continue
        if isinstance(layer, nf_layers.ScaledStdConv2D):
            targets.append((layer._kernel, f"{module}.w"))
            targets.append((layer.gain, f"{module}.gain"))
            if layer.use_bias:
                targets.append((layer.bias, f"{module}.bias"))
        elif name == "predictions":
            targets.append((layer.kernel, f"{module}.w"))
            targets.append((layer.bias, f"{module}.b"))
        else:
            unmapped.append(name)
    if unmapped:
        raise ValueError(
            f"No Haiku name rule for these layers of model '{model.name}' "
            "(DeepMind released Haiku checkpoints for NFNet-F0...F6 only):\n  "
            + "\n  ".join(unmapped)
        )
    return targets


def _shape(shape):
    return "(" + ", ".join(str(int(d)) for d in shape) + (",)" if len(shape) == 1 else ")")


def load_haiku_params(model, params, include_top=True, root="NFNet", source="checkpoint"):
    """Assigns a Haiku parameter tree to a model of this package.

    Args:
        model: an NFNet built by this package (its layer names are the
            contract).
        params: the dict of `read_haiku_file` (dotted names -> arrays), or a
            path to a checkpoint file.
        include_top: whether the model has the classifier; if `False` the
            checkpoint's ``linear`` (head) parameters are left unused.
        root: the Haiku root module name (``NFNet``).
        source: how to name the checkpoint in error messages.

    Raises:
        ValueError: listing every model weight the checkpoint lacks, every
            checkpoint parameter the model does not use and every shape
            mismatch. Nothing is assigned in that case.
    """
    if isinstance(params, (str, bytes)) or hasattr(params, "__fspath__"):
        source = str(params)
        entries = _read(params)
    else:
        entries = {name: (_display(name), np.asarray(value)) for name, value in params.items()}
    targets = haiku_names(model, root)
    missing, mismatched, assignments = [], [], []
    for variable, name in targets:
        if name not in entries:
            missing.append(f"{_display(name)} (for {variable.path} {_shape(variable.shape)})")
            continue
        display, value = entries[name]
        if tuple(value.shape) != tuple(variable.shape):
            mismatched.append(
                f"{display}: checkpoint {_shape(value.shape)}, model "
                f"{_shape(variable.shape)} ({variable.path})"
            )
            continue
        assignments.append((variable, value))
    used = {name for _, name in targets}
    head_prefix = f"{root}.{HEAD_MODULE}."
    unused = sorted(
        entries[name][0]
        for name in entries
        if name not in used and (include_top or not name.startswith(head_prefix))
    )
    assign_or_raise(
        assignments,
        [
            ("shape mismatches", mismatched),
            ("model weights missing from the checkpoint", missing),
            ("checkpoint parameters the model does not use", unused),
        ],
        f"Cannot load the Haiku checkpoint {source} into model "
        f"'{model.name}' ({len(model.weights)} weights): is it the "
        "checkpoint of this variant?",
        limit=_LISTING_LIMIT,
    )
    return model


def _display(dotted):
    """`NFNet.nf_block_1.conv0.w` -> `NFNet/~/nf_block_1/~/conv0/w`."""
    parts = dotted.split(".")
    return "/~/".join(parts[:-1]) + "/" + parts[-1]
