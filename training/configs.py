"""Training recipes as code, derived from the model rows.

`get_config("nfnet_f0")` is the paper's recipe for that variant (reference
doc §8); `get_config("demo")` shrinks everything to a tiny NFNet on the
embedded `shapes` dataset, which trains in about a minute on a CPU:

    python -m training.train --config=demo
    python -m training.train --config=nfnet_f0 --dataset=imagenet2012 --strategy=tpu
"""

import ast
import dataclasses

from nfnet_keras import weights
from nfnet_keras.models import registry

IMAGENET_TRAIN_EXAMPLES = 1_281_167  # reference doc §8.1


@dataclasses.dataclass
class TrainConfig:
    model: str
    dataset: str = "imagenet2012"
    train_size: int = 224
    eval_transform: weights.EvalTransform = weights.deepmind_eval(224)  # eval: S + 32, crop S (§8.1)
    batch_size: int = 4096  # global batch
    epochs: float = 360
    base_lr: float = 0.1  # learning rate per 256 examples
    scale_lr_with_batch: bool = True  # lr = base_lr * batch / 256
    warmup_epochs: float = 5
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 2e-5
    label_smoothing: float = 0.1
    ema_decay: float = 0.99999  # None: no EMA
    agc_clipping: float = 0.01  # None: AGC off
    randaugment_layers: int = 0
    randaugment_magnitude: int = 0
    mixup_cutmix: bool = True
    crop_area_range: tuple = (0.08, 1.0)
    shuffle_buffer: int = 10_000
    stochastic_depth_rate: float = None  # None: the model's default
    dropout_rate: float = None  # None: the row's value
    checkpoint_every_steps: int = 500  # steps between checkpoints
    # Fine-tuning from --weights (Keras's transfer-learning guide): train the
    # classifier alone for this many epochs, then everything at the learning
    # rate times `unfrozen_lr_scale`. A tenth is this project's choice (the
    # guide goes from Adam's 1e-3 to 1e-5 for its small dataset).
    freeze_backbone_epochs: float = 0
    unfrozen_lr_scale: float = 0.1

    @property
    def peak_lr(self):
        if self.scale_lr_with_batch:
            return self.base_lr * self.batch_size / 256
        return self.base_lr


def _nfnet(row):
    # deepmind-research experiment_nfnets.py (reference doc §8.1): batch
    # 4096, 360 epochs, lr 0.1 x bs/256, 5 warm-up epochs, cosine, SGD
    # Nesterov 0.9, wd 2e-5, AGC 0.01, EMA 0.99999, label smoothing 0.1,
    # RandAugment "4xM" from the row, MixUp + CutMix.
    return TrainConfig(
        model=row.name,
        train_size=row.train_size,
        eval_transform=weights.eval_transform(row),
        randaugment_layers=int(row.randaugment[0]),
        randaugment_magnitude=int(row.randaugment[1:]),
        stochastic_depth_rate=row.stochastic_depth_rate,
    )


def _nf_regnet(row):
    # experiment_nf_regnets.py (reference doc §8.2): batch 1024, lr 0.4 not
    # batch-scaled, no AGC, wd per row, MixUp + CutMix, no RandAugment.
    return TrainConfig(
        model=row.name,
        train_size=row.train_size,
        eval_transform=weights.eval_transform(row),
        batch_size=1024,
        base_lr=0.4,
        scale_lr_with_batch=False,
        weight_decay=row.weight_decay,
        agc_clipping=None,
    )


def _nf_resnet(row):
    # No NF-ResNet experiment config exists in deepmind-research; the base
    # experiment.py recipe (reference doc §8.3): batch 1024, 90 epochs,
    # lr 0.1 x bs/256, wd 1e-4 (gains/biases excluded), no AGC, no EMA.
    return TrainConfig(
        model=row.name,
        train_size=row.train_size,
        eval_transform=weights.eval_transform(row),
        batch_size=1024,
        epochs=90,
        weight_decay=1e-4,
        ema_decay=None,
        agc_clipping=None,
        mixup_cutmix=False,
    )


def demo():
    """A tiny NFNet on the embedded shapes data, with AGC and EMA."""
    return TrainConfig(
        model="nfnet_tiny",
        dataset="shapes",
        train_size=32,
        # The 32 px shapes are evaluated whole: resized to 32, no border cropped.
        eval_transform=weights.EvalTransform(32, keep_aspect=False, antialias=False),
        batch_size=64,
        epochs=12,
        base_lr=3.2,  # peak 0.8 at batch 64: stable with AGC
        warmup_epochs=1,
        weight_decay=2e-5,
        label_smoothing=0.0,
        ema_decay=0.99,
        agc_clipping=0.01,
        mixup_cutmix=False,
        crop_area_range=(0.6, 1.0),
        shuffle_buffer=1024,
        stochastic_depth_rate=0.0,
        checkpoint_every_steps=16,
    )


def override(config, assignments):
    """`config` with fields replaced from ``{"field": "text value"}``.

    Values are Python literals (``0.2``, ``None``, ``(0.5, 1.0)``, ``True``);
    anything else is taken as a string.
    """
    fields = {f.name for f in dataclasses.fields(config)}
    values = {}
    for name, text in assignments.items():
        if name not in fields:
            raise ValueError(
                f"`--config.{name}` is not a recipe field. Expected one of {sorted(fields)}."
            )
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        default = getattr(config, name)
        if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if default is not None and value is not None and not isinstance(value, type(default)):
            raise ValueError(
                f"`--config.{name}` must be a {type(default).__name__}. Received: {text!r}"
            )
        values[name] = value
    return dataclasses.replace(config, **values)


# The paper recipe of each family of DeepMind's architectures.
_RECIPES = {"nfnet": _nfnet, "nf_regnet": _nf_regnet, "nf_resnet": _nf_resnet}


def _recipe_rows():
    return {
        name: row
        for name, row in registry.ARCHITECTURES.items()
        if row.public and row.convention == "deepmind" and row.family in _RECIPES
    }


def get_config(name):
    """The recipe called `name`: ``"demo"`` or a model name of DeepMind's
    architectures (``"nfnet_f0"``, ``"nf_resnet50"``, ``"nf_regnet_b0"``)."""
    if name == "demo":
        return demo()
    rows = _recipe_rows()
    if name not in rows:
        raise ValueError(
            f"Unknown config. Expected one of {['demo'] + sorted(rows)}. Received: config={name!r}"
        )
    return _RECIPES[rows[name].family](rows[name])
