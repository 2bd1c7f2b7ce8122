"""Published ImageNet checkpoints of the NF models, and the weights loader.

* `rows` — one `Checkpoint` row per published file (URL, hash, format,
  evaluation transform, top-1, licence, citation);
* `transform` — `EvalTransform`, the one evaluation transform object;
* `download` — atomic, locked, bounded, URL-keyed downloads with hash checks;
* `readers` — the file formats;
* `load` — `load_weights` and the converted-file cache.
"""

from nfnet_keras.weights.load import eval_transform, load_weights, pretrained_cfg
from nfnet_keras.weights.readers import read_timm_file
from nfnet_keras.weights.rows import CHECKPOINTS, Checkpoint, checkpoint, checkpoints
from nfnet_keras.weights.transform import EvalTransform, deepmind_eval, timm_eval

__all__ = [
    "CHECKPOINTS",
    "Checkpoint",
    "EvalTransform",
    "checkpoint",
    "checkpoints",
    "deepmind_eval",
    "eval_transform",
    "load_weights",
    "pretrained_cfg",
    "read_timm_file",
    "timm_eval",
]
