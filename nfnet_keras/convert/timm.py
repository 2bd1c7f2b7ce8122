"""timm state dict -> Keras NF model, by parameter name, with shape checks.

timm stores PyTorch layouts: conv kernels OIHW, linear weights (out, in),
WS gains (out, 1, 1, 1), SE convs 1x1 (out, in, 1, 1). Keras uses HWIO and
(in, out). The name rules for timm's `dm_nfnet_*` models are those of the
reference doc §9.3 table (DeepMind name <-> timm name). Every Keras variable
must find its tensor and every tensor must be used; otherwise nothing is
assigned and the error lists the names on each side.

The weights reproduce timm's outputs only when the Keras model was built
with ``convention="timm"`` (exact GELU, timm's weight standardisation).
"""

import re

import numpy as np

from nfnet_keras import layers as nf_layers
from nfnet_keras.convert import assign_or_raise

# Keras layer-name rules -> timm module prefix, for `dm_nfnet_*` (and the
# package's tiny NFNet row, which has the same structure).
_DM_NFNET_RULES = [
    (r"stem_conv(\d)", lambda m: f"stem.conv{int(m[1]) + 1}"),
    (r"stage(\d+)_block(\d+)_conv0", lambda m: f"stages.{m[1]}.{m[2]}.conv1"),
    (r"stage(\d+)_block(\d+)_conv1", lambda m: f"stages.{m[1]}.{m[2]}.conv2"),
    (r"stage(\d+)_block(\d+)_conv1b", lambda m: f"stages.{m[1]}.{m[2]}.conv2b"),
    (r"stage(\d+)_block(\d+)_conv2", lambda m: f"stages.{m[1]}.{m[2]}.conv3"),
    (r"stage(\d+)_block(\d+)_shortcut_conv", lambda m: f"stages.{m[1]}.{m[2]}.downsample.conv"),
    (r"stage(\d+)_block(\d+)_se", lambda m: f"stages.{m[1]}.{m[2]}.attn_last"),
    (r"stage(\d+)_block(\d+)_eca", lambda m: f"stages.{m[1]}.{m[2]}.attn_last"),
    (r"stage(\d+)_block(\d+)_skip_gain", lambda m: f"stages.{m[1]}.{m[2]}"),
    (r"final_conv", lambda m: "final_conv"),
    (r"predictions", lambda m: "head.fc"),
]

# timm's own NF-ResNet / NF-RegNet (`NormFreeNet` with `_nfres_cfg` /
# `_nfreg_cfg`, built from the timm rows of `nfnet_keras.models`): one stem conv
# `stem.conv`, no `conv2b`, no skip gain; SE / ECA is `attn` (middle, RegNet)
# or `attn_last` (after conv3, ResNet).
def _timm_nf_rules(se_module):
    return [
        (r"stem_conv0", lambda m: "stem.conv"),
        (r"stage(\d+)_block(\d+)_conv0", lambda m: f"stages.{m[1]}.{m[2]}.conv1"),
        (r"stage(\d+)_block(\d+)_conv1", lambda m: f"stages.{m[1]}.{m[2]}.conv2"),
        (r"stage(\d+)_block(\d+)_conv2", lambda m: f"stages.{m[1]}.{m[2]}.conv3"),
        (r"stage(\d+)_block(\d+)_shortcut_conv", lambda m: f"stages.{m[1]}.{m[2]}.downsample.conv"),
        (r"stage(\d+)_block(\d+)_(se|eca)", lambda m: f"stages.{m[1]}.{m[2]}.{se_module}"),
        (r"final_conv", lambda m: "final_conv"),
        (r"predictions", lambda m: "head.fc"),
    ]


RULES = {
    "dm_nfnet": _DM_NFNET_RULES,
    # timm's own NFNets (`nfnet_l0`, `eca_nfnet_l*`): the same module tree,
    # without skip gains.
    "timm_nfnet": _DM_NFNET_RULES,
    "timm_nf_resnet": _timm_nf_rules("attn_last"),
    "timm_nf_regnet": _timm_nf_rules("attn"),
}


# PyTorch layouts of each Keras weight: (shape in the file, given the Keras
# shape; array -> Keras array). The file's shape is checked before any
# transpose, so that nothing is reshaped, squeezed or sliced silently.
_LAYOUTS = {
    # Conv kernel: OIHW -> HWIO.
    "conv": (lambda s: (s[3], s[2], s[0], s[1]), lambda w: np.transpose(w, (2, 3, 1, 0))),
    # Linear weight: (out, in) -> (in, out).
    "linear": (lambda s: (s[1], s[0]), np.transpose),
    # timm ECA: Conv1d kernel (out, in, k) -> Keras Conv1D (k, in, out).
    "conv1d": (lambda s: (s[2], s[1], s[0]), lambda w: np.transpose(w, (2, 1, 0))),
    # timm SE: 1x1 convs (out, in, 1, 1) -> Keras Dense (in, out).
    "conv1x1": (lambda s: (s[1], s[0], 1, 1), lambda w: np.transpose(w[:, :, 0, 0])),
    # ScaledStdConv2d gain: (out, 1, 1, 1) -> (out,).
    "gain": (lambda s: (s[0], 1, 1, 1), lambda w: w[:, 0, 0, 0]),
    # Biases and scalar gains: the same shape.
    "same": (tuple, lambda w: w),
}


def _targets(layer, prefix):
    """(variable, timm key, layout) for each weight of `layer`."""
    if isinstance(layer, nf_layers.ScaledStdConv2D):
        out = [(layer._kernel, f"{prefix}.weight", "conv")]
        if layer.use_bias:
            out.append((layer.bias, f"{prefix}.bias", "same"))
        out.append((layer.gain, f"{prefix}.gain", "gain"))
        return out
    if isinstance(layer, nf_layers.SqueezeExcite):
        return [
            (layer.fc1.kernel, f"{prefix}.fc1.weight", "conv1x1"),
            (layer.fc1.bias, f"{prefix}.fc1.bias", "same"),
            (layer.fc2.kernel, f"{prefix}.fc2.weight", "conv1x1"),
            (layer.fc2.bias, f"{prefix}.fc2.bias", "same"),
        ]
    if isinstance(layer, nf_layers.EfficientChannelAttention):
        return [(layer.kernel, f"{prefix}.conv.weight", "conv1d")]
    if isinstance(layer, nf_layers.SkipGain):
        return [(layer.skip_gain, f"{prefix}.skipinit_gain", "same")]
    # The classifier (keras Dense).
    return [
        (layer.kernel, f"{prefix}.weight", "linear"),
        (layer.bias, f"{prefix}.bias", "same"),
    ]


def _has_weights(layer):
    return bool(layer.weights) and not layer.__class__.__name__ in (
        "StochasticDepth",
        "Dropout",
    )


def timm_names(model, arch="dm_nfnet"):
    """Lists (keras variable, timm key, layout) for every weight of `model`."""
    if arch not in RULES:
        raise ValueError(
            f"`arch` must be one of {sorted(RULES)}. Received: arch={arch!r}"
        )
    rules = [(re.compile(pattern + r"$"), fn) for pattern, fn in RULES[arch]]
    targets, unmapped = [], []
    for layer in model.layers:
        if not _has_weights(layer):
            continue
        for pattern, fn in rules:
            match = pattern.match(layer.name)
            if match:
                targets.extend(_targets(layer, fn(match)))
                break
        else:
            unmapped.append(layer.name)
    if unmapped:
        raise ValueError(
            f"No timm name rule ({arch}) for these layers of model "
            f"'{model.name}':\n  " + "\n  ".join(unmapped)
        )
    return targets


def to_numpy(state_dict):
    """A name -> NumPy float array dict from a torch/NumPy state dict."""
    out = {}
    for key, value in state_dict.items():
        if hasattr(value, "detach"):  # torch tensor
            value = value.detach().cpu().float().numpy()
        out[key] = np.asarray(value)
    return out


def load_timm_state_dict(model, state_dict, arch="dm_nfnet", skip=None):
    """Assigns a timm state dict to a Keras NF model.

    Args:
        model: a model built by this package (layer names are the contract).
        state_dict: mapping timm name -> array (torch tensors accepted).
        arch: the name-rule set; ``"dm_nfnet"`` for timm's `dm_nfnet_*`,
            ``"timm_nf_resnet"`` / ``"timm_nf_regnet"`` for timm's
            `nf_resnet*` / `nf_regnet_*` (models of
            `TimmNFResNet50`, `TimmNFRegNetB1`, ...).
        skip: optional regex of timm names allowed to stay unused (e.g. the
            head, ``r"head\\.fc\\."``, when loading into `include_top=False`).

    Raises:
        ValueError: listing every Keras weight without a tensor, every tensor
            without a Keras weight, and every shape mismatch. Nothing is
            assigned in that case.
    """
    tensors = to_numpy(state_dict)
    targets = timm_names(model, arch)
    missing, mismatched, assignments = [], [], []
    for variable, key, layout in targets:
        if key not in tensors:
            missing.append(f"{key} (for {variable.path})")
            continue
        source_shape, transform = _LAYOUTS[layout]
        expected = tuple(int(d) for d in source_shape(tuple(variable.shape)))
        value = tensors[key]
        if tuple(value.shape) != expected:
            mismatched.append(
                f"{key}: file {tuple(value.shape)}, expected {expected} "
                f"(for {variable.path} {tuple(variable.shape)})"
            )
            continue
        assignments.append((variable, transform(value)))
    used = {key for _, key, _ in targets}
    skip_re = re.compile(skip) if skip else None
    leftover = sorted(
        k for k in tensors if k not in used and not (skip_re and skip_re.match(k))
    )
    assign_or_raise(
        assignments,
        [
            ("missing from the state dict", missing),
            ("unused tensors of the state dict", leftover),
            ("shape mismatches", mismatched),
        ],
        f"Cannot load the timm state dict into model '{model.name}' ({arch} rules):",
    )
    return model

