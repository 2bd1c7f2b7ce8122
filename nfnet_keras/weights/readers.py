"""The checkpoint file formats `weights=` accepts, told apart by name."""

import os
import re


def file_kind(path):
    """``"keras"``, ``"haiku"``, ``"torch"`` or ``"safetensors"``."""
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
    kind = file_kind(path)
    if kind == "safetensors":
        from safetensors.numpy import load_file

        try:
            return dict(load_file(path))
        except Exception as e:  # noqa: BLE001 - safetensors raises its own SafetensorError
            raise ValueError(
                f"Cannot read {path} as a safetensors file: {_first_line(e)}."
            ) from None
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
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises UnpicklingError, EOFError, RuntimeError, ...
        raise ValueError(
            f"Cannot read {path} as a PyTorch state dict (a torch.save file of "
            f"tensors, read with weights_only=True): {_torch_reason(e)}."
        ) from None
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


def _first_line(error):
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _torch_reason(error):
    """The cause in torch's message, without its advice to load unsafely."""
    if isinstance(error, EOFError):
        return "the file is empty or ends early"
    text = str(error)
    match = re.search(r"unsupported GLOBAL (\S+)", text)
    if match:
        return f"it asks to run the Python object {match.group(1)}, which is refused"
    match = re.search(r"Unsupported operand \d+", text)
    if match:
        return f"not a pickle of tensors ({match.group(0)})"
    if "Weights only load failed" in text:
        return "not a pickle of tensors"
    # Corrupt bytes fail anywhere in the unpickler (UnicodeDecodeError,
    # IndexError, KeyError, torch's zip reader, ...).
    return f"not a pickle of tensors ({type(error).__name__}: {_first_line(error)})"


def validate_file(path, kind=None):
    """Raises `ValueError` (one line) unless `path` parses in its format."""
    kind = kind or file_kind(path)
    if kind == "haiku":
        from nfnet_keras.convert.haiku import read_haiku_file

        read_haiku_file(path)
    elif kind in ("torch", "safetensors"):
        read_timm_file(path)
    else:
        import h5py

        try:
            with h5py.File(path, "r"):
                pass
        except OSError as e:
            raise ValueError(f"Cannot read {path} as a Keras .weights.h5 (HDF5) file: {e}.") from None
