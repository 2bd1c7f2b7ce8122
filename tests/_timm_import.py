"""Imports timm on PyPI's CPU-only torch wheel, without Keras or TensorFlow
(the benchmark's timm process measures timm's memory alone).

PyPI's torchvision links CUDA libraries that the CPU torch lacks and then
fails to register two fake ops ("operator torchvision::nms does not exist").
Declaring those two op schemas first lets torchvision import; NFNets use
none of torchvision's C++ ops. Where torchvision's extension loads (a
torchvision built for this torch, as on a CUDA machine), it declares them
itself, and declaring them here too would fail.
"""

import glob
import importlib.util
import os

import torch


def _declare_torchvision_ops():
    try:
        torch.ops.torchvision.nms  # noqa: B018 - already registered
        return
    except (AttributeError, RuntimeError):
        pass
    spec = importlib.util.find_spec("torchvision")
    for folder in spec.submodule_search_locations if spec else ():
        for extension in glob.glob(os.path.join(folder, "_C*.so")):
            try:
                torch.ops.load_library(extension)  # as torchvision/extension.py does
                return
            except OSError:  # built against CUDA libraries this machine lacks
                pass
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    globals()["_TORCHVISION_LIB"] = lib  # keep the registration alive


_declare_torchvision_ops()
import timm  # noqa: E402
