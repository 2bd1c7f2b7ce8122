"""Writes DeepMind-style Haiku checkpoints for the tests.

`nfnet_tree` transcribes the parameter names and shapes of deepmind-research
`nfnets/nfnet.py` (reference doc §9.2, §9.4) independently of the package.
`write_haiku_pickle` pickles such a tree the way the published files are
made — each mapping level a call of ``haiku._src.data_structures.FlatMapping``
(or ``frozendict``) with one dict, each array rebuilt by NumPy's
``_reconstruct`` named as NumPy 1.x, NumPy 2.x or dill 0.3.3
(``dill._dill._get_attr(dill._dill._import_module(
'numpy.core._multiarray_umath'), '_reconstruct')``) — using the standard
`pickle` module with stand-in objects, without Haiku or dill installed.
`haiku_to_timm` re-lays a tree out as a timm `dm_nfnet_*` state dict with
the §9.3 rules.
"""

import io
import pickle

import numpy as np

F0 = dict(depths=(1, 2, 6, 3))
# The package's "tiny" NFNet row (models/nfnet.py): narrow, one block per stage.
TINY = dict(
    depths=(1, 1, 1, 1), widths=(16, 32, 64, 64), stem_widths=(8, 8, 8), group_width=8
)


def nfnet_tree(
    depths,
    widths=(256, 512, 1536, 1536),
    stem_widths=(16, 32, 64),
    group_width=128,
    classes=1000,
    seed=0,
    values=True,
):
    """A random NFNet parameter tree with DeepMind's names and shapes.

    With ``values=False`` every leaf is a zero-stride view of 0 (names and
    shapes only, no memory).
    """
    rng = np.random.default_rng(seed)

    def normal(shape, scale):
        if not values:
            return np.broadcast_to(np.float32(0), shape)
        return rng.standard_normal(shape, dtype=np.float32) * np.float32(scale)

    def positive(shape):
        if not values:
            return np.broadcast_to(np.float32(0), shape)
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)

    tree = {}

    def conv(module, k, cin, cout):
        tree[f"NFNet/~/{module}"] = {
            "w": normal((k, k, cin, cout), 1.0 / np.sqrt(k * k * cin)),
            "gain": positive((cout,)),
            "bias": normal((cout,), 0.1),
        }

    def linear(module, cin, cout):
        tree[f"NFNet/~/{module}"] = {
            "w": normal((cin, cout), 1.0 / np.sqrt(cin)),
            "b": normal((cout,), 0.1),
        }

    cin = 3
    for i, width in enumerate(tuple(stem_widths) + (widths[0] // 2,)):
        conv(f"stem_conv{i}", 3, cin, width)
        cin = width
    index = 0
    for stage, (depth, cout) in enumerate(zip(depths, widths)):
        for block in range(depth):
            name = "nf_block" + (f"_{index}" if index else "")
            stride = 2 if stage > 0 and block == 0 else 1
            mid = group_width * (int(cout * 0.5) // group_width)
            tree[f"NFNet/~/{name}"] = {"skip_gain": positive(())}
            if stride > 1 or cin != cout:
                conv(f"{name}/~/conv_shortcut", 1, cin, cout)
            conv(f"{name}/~/conv0", 1, cin, mid)
            conv(f"{name}/~/conv1", 3, group_width, mid)
            conv(f"{name}/~/conv1b", 3, group_width, mid)
            conv(f"{name}/~/conv2", 1, mid, cout)
            hidden = int(cout * 0.5)
            linear(f"{name}/~/squeeze_excite/~/linear", cout, hidden)
            linear(f"{name}/~/squeeze_excite/~/linear_1", hidden, cout)
            cin = cout
            index += 1
    conv("final_conv", 1, cin, 2 * widths[-1])
    linear("linear", 2 * widths[-1], classes)
    return tree


def flatten(tree):
    return {f"{m}/{p}": a for m, params in tree.items() for p, a in params.items()}


# ---------------------------------------------------------------------------
# Pickling in the published forms.


class _Global:
    """Pickles as a GLOBAL/STACK_GLOBAL opcode naming `module.name`."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # save_reduce wants a callable
        raise AssertionError("never called")


class _Call:
    """Pickles as ``func(*args)`` (a REDUCE), e.g. dill's `_get_attr(...)`."""

    def __init__(self, func, args):
        self.func, self.args = func, args

    def __call__(self, *args):
        raise AssertionError("never called")


class _Mapping(dict):
    pass


_RECONSTRUCT = {
    "numpy1": _Global("numpy.core.multiarray", "_reconstruct"),
    "numpy2": _Global("numpy._core.multiarray", "_reconstruct"),
    "dill": _Call(
        _Global("dill._dill", "_get_attr"),
        (
            _Call(_Global("dill._dill", "_import_module"), ("numpy.core._multiarray_umath",)),
            "_reconstruct",
        ),
    ),
    "dill_numpy2": _Call(
        _Global("dill._dill", "_get_attr"),
        (
            _Call(_Global("dill._dill", "_import_module"), ("numpy._core._multiarray_umath",)),
            "_reconstruct",
        ),
    ),
}
_MAPPINGS = {
    "flatmapping": _Global("haiku._src.data_structures", "FlatMapping"),
    "frozendict": _Global("haiku._src.data_structures", "frozendict"),
}


class _HaikuStylePickler(pickle._Pickler):
    dispatch = dict(pickle._Pickler.dispatch)

    def __init__(self, file, protocol, mapping, arrays):
        super().__init__(file, protocol=protocol)
        self.mapping, self.arrays = mapping, arrays

    def save_standin_global(self, obj):
        if self.proto >= 4:
            self.save(obj.module)
            self.save(obj.name)
            self.write(pickle.STACK_GLOBAL)
        else:
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
        self.memoize(obj)

    dispatch[_Global] = save_standin_global

    def reducer_override(self, obj):
        if isinstance(obj, _Call):
            return obj.func, obj.args
        if isinstance(obj, _Mapping):
            if self.mapping == "dict":
                return NotImplemented
            return _MAPPINGS[self.mapping], (dict(obj),)
        if type(obj) is np.ndarray and self.arrays != "standard":
            _, _, state = obj.__reduce__()
            return (
                _RECONSTRUCT[self.arrays],
                (_Global("numpy", "ndarray"), (0,), b"b"),
                state,
            )
        return NotImplemented


def haiku_pickle_bytes(tree, mapping="flatmapping", arrays="dill", protocol=4):
    """Pickle bytes of a two-level Haiku tree in one of the published forms.

    mapping: "flatmapping", "frozendict" or "dict"; arrays: "numpy1",
    "numpy2", "dill", "dill_numpy2" or "standard" (NumPy's own reduce).
    """
    if mapping == "dict":
        outer = {m: dict(p) for m, p in tree.items()}
    else:
        outer = _Mapping({m: _Mapping(p) for m, p in tree.items()})
    buf = io.BytesIO()
    _HaikuStylePickler(buf, protocol, mapping, arrays).dump(outer)
    return buf.getvalue()


def write_haiku_pickle(path, tree, **kwargs):
    data = haiku_pickle_bytes(tree, **kwargs)
    with open(path, "wb") as f:
        f.write(data)
    return path


# ---------------------------------------------------------------------------
# Haiku -> timm (reference doc §9.3).


def haiku_to_timm(tree, depths):
    """A timm `dm_nfnet_*` state dict (NumPy arrays) from a Haiku tree."""
    blocks = {}
    index = 0
    for stage, depth in enumerate(depths):
        for block in range(depth):
            blocks["nf_block" + (f"_{index}" if index else "")] = f"stages.{stage}.{block}"
            index += 1
    parts = {"conv0": "conv1", "conv1": "conv2", "conv1b": "conv2b", "conv2": "conv3",
             "conv_shortcut": "downsample.conv",
             "squeeze_excite/~/linear": "attn_last.fc1",
             "squeeze_excite/~/linear_1": "attn_last.fc2"}
    out = {}
    for module, params in tree.items():
        path = module.removeprefix("NFNet/~/")
        if path.startswith("stem_conv"):
            prefix = f"stem.conv{int(path[-1]) + 1}"
        elif path == "final_conv":
            prefix = "final_conv"
        elif path == "linear":
            out["head.fc.weight"] = params["w"].T.copy()
            out["head.fc.bias"] = params["b"]
            continue
        else:
            block, _, part = path.partition("/~/")
            if not part:
                out[f"{blocks[block]}.skipinit_gain"] = params["skip_gain"]
                continue
            prefix = f"{blocks[block]}.{parts[part]}"
            if part.startswith("squeeze_excite"):
                out[f"{prefix}.weight"] = params["w"].T[:, :, None, None].copy()
                out[f"{prefix}.bias"] = params["b"]
                continue
        out[f"{prefix}.weight"] = np.ascontiguousarray(np.transpose(params["w"], (3, 2, 0, 1)))
        out[f"{prefix}.gain"] = params["gain"].reshape(-1, 1, 1, 1)
        out[f"{prefix}.bias"] = params["bias"]
    return out
