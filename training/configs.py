"""Training recipes as code, derived from the model rows.

`get_config("nfnet_f0")` is the paper's recipe for that variant (reference
doc §8); `get_config("demo")` shrinks everything to a tiny NFNet on the
embedded `shapes` dataset, which trains in about a minute on a CPU:

    python -m training.train --config=demo
    python -m training.train --config=nfnet_f0 --dataset=imagenet2012 --strategy=tpu
"""

import ast
import dataclasses

from nfnet_keras.models import nf_regnet, nf_resnet, nfnet

IMAGENET_TRAIN_EXAMPLES = 1_281_167  # reference doc §8.1


@dataclasses.dataclass
class TrainConfig:
    model: str
    dataset: str = "imagenet2012"
    train_size: int = 224
    test_size: int = 224
    eval_padding: int = 32  # eval: squash-resize to S + 32, centre crop S (§8.1)
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


def _nfnet(variant):
    row = nfnet.VARIANTS[variant]
    # deepmind-research experiment_nfnets.py (reference doc §8.1): batch
    # 4096, 360 epochs, lr 0.1 x bs/256, 5 warm-up epochs, cosine, SGD
    # Nesterov 0.9, wd 2e-5, AGC 0.01, EMA 0.99999, label smoothing 0.1,
    # RandAugment "4xM" from the row, MixUp + CutMix.
    return TrainConfig(
        model=f"nfnet_{variant.lower()}",
        train_size=row.train_size,
        test_size=row.test_size,
        randaugment_layers=int(row.randaugment[0]),
        randaugment_magnitude=int(row.randaugment[1:]),
        stochastic_depth_rate=nfnet.STOCHASTIC_DEPTH_RATE,
    )


def _nf_regnet(variant):
    row = nf_regnet.VARIANTS[variant]
    # experiment_nf_regnets.py (reference doc §8.2): batch 1024, lr 0.4 not
    # batch-scaled, no AGC, wd per row, MixUp + CutMix, no RandAugment.
    return TrainConfig(
        model=f"nf_regnet_{variant.lower()}",
        train_size=row.train_size,
        test_size=row.test_size,
        batch_size=1024,
        base_lr=0.4,
        scale_lr_with_batch=False,
        weight_decay=row.weight_decay,
        agc_clipping=None,
    )


def _nf_resnet(variant):
    # No NF-ResNet experiment config exists in deepmind-research; the base
    # experiment.py recipe (reference doc §8.3): batch 1024, 90 epochs,
    # lr 0.1 x bs/256, wd 1e-4 (gains/biases excluded), no AGC, no EMA.
    return TrainConfig(
        model=f"nf_resnet{variant}",
        train_size=nf_resnet.TRAIN_SIZE,
        test_size=nf_resnet.TEST_SIZE,
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
        test_size=32,
        eval_padding=0,
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


def get_config(name):
    if name == "demo":
        return demo()
    for prefix, rows, make in (
        ("nfnet_", nfnet.VARIANTS, _nfnet),
        ("nf_regnet_", nf_regnet.VARIANTS, _nf_regnet),
        ("nf_resnet", nf_resnet.VARIANTS, _nf_resnet),
    ):
        if name.startswith(prefix):
            variant = name[len(prefix):]
            for key in rows:
                if key.lower() == variant:
                    return make(key)
    choices = ["demo"]
    choices += [f"nfnet_{v.lower()}" for v in nfnet.VARIANTS]
    choices += [f"nf_resnet{v}" for v in nf_resnet.VARIANTS]
    choices += [f"nf_regnet_{v.lower()}" for v in nf_regnet.VARIANTS]
    raise ValueError(f"Unknown config. Expected one of {choices}. Received: config={name!r}")
