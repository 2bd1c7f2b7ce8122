"""Imports timm (the test oracle) on the CPU-only torch wheel.

PyPI's torchvision links CUDA libraries that the CPU torch lacks and then
fails to register two fake ops ("operator torchvision::nms does not exist").
Declaring those two op schemas first lets torchvision import; NFNets use
none of torchvision's C++ ops.
"""

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

__all__ = ["timm", "torch"]
