"""timm (the test oracle) and comparisons of timm's own architectures (light
NFNets, attention NF-ResNets) with the package's."""

import numpy as np
import pytest

pytest.importorskip("torch")
from _timm_import import timm, torch  # noqa: E402

torch.set_num_threads(2)

import keras  # noqa: E402

import nfnet_keras  # noqa: E402
from nfnet_keras.convert.timm import load_timm_state_dict  # noqa: E402
from nfnet_keras.models import get_architecture  # noqa: E402
from nfnet_keras.weights import rows as checkpoint_rows  # noqa: E402

SIZE = (67, 45)  # odd, non-square: exercises timm's symmetric padding and ceil-mode pools


def randomize_timm(model, seed=0):
    """Gives every parameter of a timm NF model a non-trivial random value.

    Skip gains (`skipinit_gain`, or the last conv's gain in timm's non-dm
    models) start at 0, other gains at 1 and biases at 0: left as they are
    they would hide every residual-branch, gain and bias bug.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("skipinit_gain") or name.endswith(".gain"):
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
            elif p.ndim >= 2:
                fan_in = int(np.prod(p.shape[1:]))
                p.copy_(torch.randn(p.shape, generator=gen) / np.sqrt(fan_in))
            else:
                p.copy_(torch.randn(p.shape, generator=gen))
    return model.eval()


def timm_outputs(model, images):
    """(pre-logit features, logits) of NHWC float32 `images`, eval mode."""
    with torch.inference_mode():
        x = torch.from_numpy(np.transpose(images, (0, 3, 1, 2)).copy())
        features = model.forward_features(x)
        pooled = model.forward_head(features, pre_logits=True)
        logits = model.forward_head(features)
    return pooled.numpy(), logits.numpy()


def _tolerance(reference):
    return 1e-4 * max(1.0, float(np.abs(reference).max()))


# timm's own architectures (light NFNets, attention NF-ResNets): rows named
# as in timm, built by `get_model(name)`.


def assert_row_matches_timm(name, count_params, pretrained):
    """The row `name` against timm's: constructor, exact parameter count,
    sizes, pooled width; published weights exactly for the names in
    `pretrained`."""
    row = get_architecture(name)
    assert row.timm_name == name and name in nfnet_keras.list_models()
    assert getattr(nfnet_keras, row.constructor).architecture is row
    # Shapes only, on both sides: timm's modules on the meta device, Keras's
    # variables in a StatelessScope.
    reference = timm.create_model(name, device="meta")
    expected = sum(p.numel() for p in reference.parameters())
    assert count_params(name) == expected
    assert row.params == expected
    cfg = reference.pretrained_cfg
    assert row.test_size == (cfg.get("test_input_size") or cfg["input_size"])[1]
    assert row.train_size == cfg["input_size"][1]
    assert row.pooled_features == reference.num_features
    assert (name in pretrained) == bool(checkpoint_rows.checkpoints(name))


def assert_forward_matches_timm(name, tmp_path, file_kind=None, size=SIZE, seed=0):
    """timm's logits and pooled features against the Keras model's, the
    weights assigned by name (or read back from a file the test writes)."""
    reference = randomize_timm(timm.create_model(name), seed=seed)
    images = np.random.default_rng(seed + 1).standard_normal((2, *size, 3)).astype("float32")
    ref_pooled, ref_logits = timm_outputs(reference, images)
    row = get_architecture(name)
    constructor = nfnet_keras.get_model
    kwargs = dict(include_preprocessing=False, input_shape=(*size, 3))
    state = reference.state_dict()
    if file_kind is None:
        model = constructor(name, weights=None, classifier_activation=None, **kwargs)
        load_timm_state_dict(model, state, arch=row.timm_layout)
    else:
        path = str(tmp_path / f"{name}.{file_kind}")
        if file_kind == "pth":
            torch.save(state, path)
        else:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in state.items()}, path)
        model = constructor(name, weights=path, classifier_activation=None, **kwargs)
    logits = keras.ops.convert_to_numpy(model(images))  # eager: no graph tracing
    assert np.abs(ref_logits).max() > 0.1  # the head is not trivially zero
    np.testing.assert_allclose(logits, ref_logits, rtol=0, atol=_tolerance(ref_logits))
    # The pooled features, from the same layers.
    pooled = keras.ops.convert_to_numpy(keras.Model(model.input, model.get_layer("avg_pool").output)(images))
    np.testing.assert_allclose(pooled, ref_pooled, rtol=0, atol=_tolerance(ref_pooled))
    return model


__all__ = [
    "timm", "torch", "randomize_timm", "timm_outputs", "SIZE", "assert_row_matches_timm",
    "assert_forward_matches_timm",
]
