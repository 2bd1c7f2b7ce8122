"""`preprocess_input` and `decode_predictions` in the keras.applications style."""

import json
import os

import numpy as np
from keras import ops

# ImageNet channel statistics used by every NF checkpoint: deepmind-research
# `nfnets/dataset.py` (MEAN_RGB / STDDEV_RGB on 0-255 pixels) and timm's
# IMAGENET_DEFAULT_MEAN/STD on 0-1 pixels — the same normalisation
# (reference doc §3.1).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# The values [0, 1] pixels can take after one bicubic resize, which
# overshoots: Keys' cubic kernel with a = -0.5 (tf.image.resize's and PIL's
# bicubic) has, per axis at half-pixel phase, positive weights summing to
# P = 1.125 and negative ones to -N = -0.125, so a 2-D resize stays within
# [-2PN, P^2 + N^2] = [-0.28125, 1.28125]. Inputs outside it (mapped
# through the normalisation when a model takes normalised images) are not
# the pixels the model expects: the range warnings use it.
RESIZED_PIXEL_RANGE = (-0.28125, 1.28125)

_CLASS_INDEX_PATH = os.path.join(
    os.path.dirname(__file__), "data", "imagenet_class_index.json"
)
_CLASS_INDEX = None


def preprocess_input(x, data_format=None):
    """Normalises RGB images with pixels in [0, 255] for an NF model.

    Computes ``(x - 255 * mean) / (255 * std)`` per channel with the ImageNet
    mean/std of the reference (§3.1). Not needed when the model was built
    with ``include_preprocessing=True`` (it then does this itself).

    Args:
        x: a NumPy array or tensor of shape ``(..., H, W, 3)`` (or
            ``(..., 3, H, W)`` with ``data_format="channels_first"``), RGB,
            any real or integer dtype, values in [0, 255].
        data_format: ``"channels_last"`` (default) or ``"channels_first"``.

    Returns:
        A float32 array (NumPy input) or tensor of the same shape.
    """
    if data_format is None:
        data_format = "channels_last"
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(
            "`data_format` must be 'channels_last' or 'channels_first'. "
            f"Received: data_format={data_format!r}"
        )
    axis = -1 if data_format == "channels_last" else -3
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) < 3 or shape[axis] != 3:
        raise ValueError(
            "`x` must be RGB images with 3 channels on the "
            f"{'last' if axis == -1 else 'third-last'} axis. "
            f"Received: x with shape {shape}"
        )
    mean = np.array(IMAGENET_MEAN, "float32") * 255.0
    std = np.array(IMAGENET_STD, "float32") * 255.0
    if axis == -3:
        mean, std = mean[:, None, None], std[:, None, None]
    if isinstance(x, np.ndarray):
        return (x.astype("float32") - mean) / std
    x = ops.cast(x, "float32")
    return (x - mean) / std


def resize_and_center_crop(
    images,
    size,
    resize,
    keep_aspect=False,
    antialias=False,
    interpolation="bicubic",
    centre="deepmind",
):
    """The evaluation resize-then-crop of the NF checkpoints (no normalisation).

    Resizes so that both sides (``keep_aspect=False``, "squash") or the
    shorter side (``keep_aspect=True``, the longer one to
    ``floor(resize * long / short)`` as torchvision's `Resize`) equal
    `resize`, then takes the centre ``size x size`` crop. Bicubic without
    antialiasing and without clamping is DeepMind's `resize_crop_32`
    (``resize = size + 32``); timm resizes with antialiasing. Works on
    images whose height and width are only known at run time (the
    exported `serving_bytes` signature).

    Args:
        images: ``(H, W, 3)`` or ``(N, H, W, 3)``, any real or integer dtype.
        centre: where the crop starts for a margin ``d``: ``"deepmind"``
            ``(d + 1) // 2`` (`nfnets/dataset.py`
            `_decode_and_resize_then_crop`; reference doc §8.1) or
            ``"torchvision"`` ``round(d / 2)``, half to even (torchvision
            `CenterCrop`, timm's evaluation).

    Returns:
        float32 ``(..., size, size, 3)``, in the input's value range.
    """
    if centre not in ("deepmind", "torchvision"):
        raise ValueError(f"`centre` must be 'deepmind' or 'torchvision'. Received: centre={centre!r}")
    x = ops.cast(ops.convert_to_tensor(images), "float32")
    shape = ops.shape(x)
    height, width = shape[-3], shape[-2]
    static = isinstance(height, int) and isinstance(width, int)
    if not keep_aspect:
        new_h = new_w = resize
    elif static:
        long = int(resize * max(height, width) / min(height, width))
        new_h, new_w = (resize, long) if height <= width else (long, resize)
    else:
        h, w = ops.cast(height, "float64"), ops.cast(width, "float64")
        long = ops.cast(ops.floor(resize * ops.maximum(h, w) / ops.minimum(h, w)), "int32")
        new_h, new_w = ops.where(h <= w, resize, long), ops.where(w <= h, resize, long)
    if static or not keep_aspect:
        x = ops.image.resize(x, (new_h, new_w), interpolation=interpolation, antialias=antialias)
    else:
        # A size known only at run time: `keras.ops.image.resize` wants ints;
        # TensorFlow's resize (what it calls on this backend) takes tensors.
        import tensorflow as tf

        x = tf.image.resize(x, tf.stack([new_h, new_w]), method=interpolation, antialias=antialias)
    if centre == "deepmind":
        top, left = (new_h - size + 1) // 2, (new_w - size + 1) // 2
    elif static or not keep_aspect:
        top, left = round((new_h - size) / 2), round((new_w - size) / 2)  # half to even
    else:
        top = ops.cast(ops.round((new_h - size) / 2), "int32")  # half to even
        left = ops.cast(ops.round((new_w - size) / 2), "int32")
    if len(shape) == 3:
        return ops.slice(x, [top, left, 0], [size, size, 3])
    return ops.slice(x, [0, top, left, 0], [shape[0], size, size, 3])


def _class_index():
    global _CLASS_INDEX
    if _CLASS_INDEX is None:
        with open(_CLASS_INDEX_PATH) as f:
            _CLASS_INDEX = json.load(f)
    return _CLASS_INDEX


def decode_predictions(preds, top=5):
    """Decodes ImageNet predictions of a 1000-class model.

    The class index ships with the package (WordNet ids and first lemma
    of each ILSVRC-2012 class), so this works offline.

    Args:
        preds: array of shape ``(samples, 1000)`` (logits or probabilities).
        top: how many classes to return per sample.

    Returns:
        A list (one per sample) of lists of ``(class_id, class_name, score)``,
        best first.
    """
    preds = np.asarray(ops.convert_to_numpy(preds))
    if preds.ndim != 2 or preds.shape[1] != 1000:
        raise ValueError(
            "`decode_predictions` expects a batch of predictions "
            "(i.e. a 2D array of shape (samples, 1000)). "
            f"Received array with shape: {preds.shape}"
        )
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"`top` must be a positive integer. Received: top={top!r}")
    index = _class_index()
    results = []
    for pred in preds:
        top_indices = pred.argsort()[-top:][::-1]
        results.append(
            [tuple(index[str(i)]) + (float(pred[i]),) for i in top_indices]
        )
    return results
