"""The evaluation transform of a checkpoint: one object for every consumer.

A checkpoint's published top-1 was measured with one resize-then-crop.
`EvalTransform` holds it; the weights rows, the trainer's evaluation
(`training/pipeline.py`), the model metadata (`model.pretrained_cfg`) and
the exported `serving_bytes` signature (`export/preprocessing.py`) all call
the same object.
"""

import dataclasses

from nfnet_keras.imagenet_utils import IMAGENET_MEAN, IMAGENET_STD, resize_and_center_crop

# deepmind-research `nfnets/dataset.py` eval_preproc "resize_crop_32"
# (`experiment_nfnets.py`): the resize side is the crop side + 32 px
# (reference doc §8.1).
DEEPMIND_PADDING = 32
# timm's default `crop_pct` (`timm/models/nfnet.py` `_dcfg`, timm 1.0.31).
TIMM_DEFAULT_CROP_PCT = 0.9


@dataclasses.dataclass(frozen=True)
class EvalTransform:
    """Resize (bicubic) then centre-crop, as a checkpoint was evaluated.

    The image is resized so that both sides (``keep_aspect=False``,
    "squash") or its shorter side (``keep_aspect=True``) equal `resize`,
    then centre-cropped to ``size x size``. `resize` is ``size + padding``
    (DeepMind) or ``int(size / crop_pct)`` (timm). Pixels keep their range
    (no clamping of the bicubic overshoot, no normalisation); the models
    normalise with `mean`/`std`.
    """

    size: int  # side of the centre crop fed to the network (px)
    keep_aspect: bool  # False: squash both sides to `resize`; True: shorter side
    antialias: bool  # True: PIL-style area-aware resampling (timm); False: tf.image.resize (DeepMind)
    padding: int = 0  # resize = size + padding (DeepMind), when crop_pct is None
    crop_pct: float = None  # resize = int(size / crop_pct) (timm)
    centre: str = "deepmind"  # crop offset of a margin d: (d + 1) // 2, or torchvision's round(d / 2)
    interpolation: str = "bicubic"  # both references evaluate with bicubic resizing
    mean: tuple = IMAGENET_MEAN  # normalisation of [0, 1] pixels (reference doc §3.1)
    std: tuple = IMAGENET_STD

    @property
    def resize(self):
        if self.crop_pct is not None:
            return int(self.size / self.crop_pct)
        return self.size + self.padding

    def at_size(self, size):
        """The same transform for another crop side (same padding or crop_pct)."""
        return dataclasses.replace(self, size=int(size))

    def __call__(self, images):
        """``(H, W, 3)`` or ``(N, H, W, 3)`` images -> float32 crops, same value range."""
        return resize_and_center_crop(
            images,
            self.size,
            self.resize,
            self.keep_aspect,
            self.antialias,
            self.interpolation,
            self.centre,
        )

    def metadata(self):
        """timm `pretrained_cfg`-style fields."""
        return {
            "input_size": (3, self.size, self.size),
            "interpolation": self.interpolation,
            "crop_pct": self.size / self.resize,
            "crop_mode": "center" if self.keep_aspect else "squash",
            "mean": tuple(self.mean),
            "std": tuple(self.std),
        }


def deepmind_eval(size):
    """deepmind-research `_decode_and_resize_then_crop`, "resize_crop_32":
    tf.image.resize bicubic (no antialiasing, no clamping) to (S + 32)^2,
    aspect not kept, centre crop S (reference doc §8.1)."""
    return EvalTransform(size, keep_aspect=False, antialias=False, padding=DEEPMIND_PADDING)


def timm_eval(size, crop_pct=TIMM_DEFAULT_CROP_PCT, keep_aspect=True):
    """timm `transforms_imagenet_eval`: scale = floor(S / crop_pct), PIL
    bicubic resize (squash for crop_mode='squash', shorter side otherwise),
    centre crop S (timm `timm/data/transforms_factory.py`)."""
    return EvalTransform(
        size, keep_aspect=keep_aspect, antialias=True, crop_pct=crop_pct, centre="torchvision"
    )
