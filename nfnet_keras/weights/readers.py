"""The checkpoint file formats `weights=` accepts, told apart by name."""

import os


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
