"""Imports timm (the test oracle) on the CPU-only torch wheel.

PyPI's torchvision links CUDA libraries that the CPU torch lacks and then
fails to register two fake ops ("operator torchvision::nms does not exist").
Declaring those two op schemas first lets torchvision import; NFNets use
none of torchvision's C++ ops.
"""

import numpy as np
import pytest

torch = pytest.importorskip("torch")


def _declare_torchvision_ops():
    try:
        torch.ops.torchvision.nms  # noqa: B018 - already registered
        return
    except (AttributeError, RuntimeError):
        pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    globals()["_TORCHVISION_LIB"] = lib  # keep the registration alive


_declare_torchvision_ops()
torch.set_num_threads(2)
import timm  # noqa: E402



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


__all__ = ["timm", "torch", "randomize_timm", "timm_outputs"]
