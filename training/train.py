"""Train, evaluate, export and reload an NF model — one command.

    python -m training.train --config=demo                      # offline, ~1 min on a CPU
    python -m training.train --config=nfnet_f0 --dataset=imagenet2012 \\
        --data_dir=gs://... --strategy=tpu --out=runs/f0
    python -m training.train --config=nfnet_f0 --weights=imagenet --dataset=folder \\
        --data_dir=my_images --freeze_backbone_epochs=2 --config.epochs=10
    python -m training.train --mode=eval --config=demo --weights=runs/demo/model.keras

Flags override the recipe of `--config` (`training/configs.py`); any recipe
field can also be set as `--config.<field>=<value>` (a Python literal), e.g.
`--config.shuffle_buffer=0` or `--config.crop_area_range=(0.5,1.0)`. The job
itself is `training.trainer`; this module parses the command line before
TensorFlow is imported, so `--help` answers at once.
"""

import dataclasses
import os
import sys

from absl import flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

STRATEGIES = ("default", "one_device", "mirrored", "multi_worker", "tpu")
# Keras dtype policies: bfloat16 compute (TPU, recent CPUs/GPUs) or float16
# with loss scaling (GPUs); variables, weight standardisation, AGC and EMA
# stay float32 (design.md "Scale").
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
_CONFIG_PREFIX = "--config."


class TrainingError(RuntimeError):
    """The run cannot go on (e.g. every step of an epoch was non-finite)."""


def define_flags(fv):
    """Defines the trainer's flags on the `absl.flags.FlagValues` `fv`."""
    f = dict(flag_values=fv)
    flags.DEFINE_enum("mode", "train", ["train", "eval"],
                      "train, or eval: top-1/top-5 of --weights on the dataset's test split", **f)
    flags.DEFINE_string("config", "demo", "'demo' or a model name (nfnet_f0, nf_resnet50, ...)", **f)
    flags.DEFINE_string("dataset", None, "'shapes', 'folder' or a TFDS name (default: the config's)", **f)
    flags.DEFINE_string("data_dir", None, "TFDS data dir, or the image-folder root", **f)
    flags.DEFINE_bool("download", False, "let TFDS download the dataset", **f)
    flags.DEFINE_enum("strategy", "default", list(STRATEGIES),
                      "tf.distribute strategy; multi_worker reads TF_CONFIG", **f)
    flags.DEFINE_string("tpu", None, "TPU address for --strategy=tpu", **f)
    flags.DEFINE_enum("precision", "float32", list(PRECISIONS), "Keras dtype policy", **f)
    flags.DEFINE_string("out", None, "run directory (default runs/<config>)", **f)
    flags.DEFINE_integer("batch_size", None, "global batch size", **f)
    flags.DEFINE_float("epochs", None, "training epochs", **f)
    flags.DEFINE_float("base_lr", None, "learning rate per 256 examples", **f)
    flags.DEFINE_float("weight_decay", None, "coupled L2 weight decay", **f)
    flags.DEFINE_float("agc_clipping", None, "AGC factor; 0 turns AGC off", **f)
    flags.DEFINE_float("ema_decay", None, "EMA decay; 0 turns EMA off", **f)
    flags.DEFINE_integer("steps_per_epoch", None, "default: training examples / batch", **f)
    flags.DEFINE_integer("checkpoint_every_steps", None, "steps between checkpoints", **f)
    flags.DEFINE_integer("seed", 0, "seed of the initialisation and of every random op", **f)
    flags.DEFINE_bool("remat", False,
                      "recompute each NF block in the backward pass (less memory, more time)", **f)
    flags.DEFINE_bool("deterministic", False,
                      "enable TensorFlow op determinism (as TF_DETERMINISTIC_OPS=1)", **f)
    flags.DEFINE_string("weights", None,
                        "initial weights: 'imagenet', a .weights.h5, a DeepMind .npz, a timm "
                        ".pth/.safetensors or a URL; with --mode=eval also a .keras file", **f)
    flags.DEFINE_float("freeze_backbone_epochs", None,
                       "with --weights: epochs that train the classifier alone", **f)
    flags.DEFINE_bool("overwrite", False, "replace the run in --out instead of resuming it", **f)
    flags.DEFINE_bool("allow_empty_classes", False, "image folders: keep empty class folders", **f)
    flags.DEFINE_bool("skip_bad_images", False,
                      "image folders: leave out files that do not decode (and count them)", **f)
    flags.DEFINE_bool("no_export", False, "skip the SavedModel export and reload", **f)
    flags.DEFINE_integer("verbose", None,
                         "0 silent, 1 progress bar, 2 one line per epoch (default: 1 on a "
                         "terminal, else 2)", **f)


@dataclasses.dataclass
class Options:
    """The parsed command line: flag values and the resolved recipe."""

    flag_values: dict
    train_config: object = None

    def __getattr__(self, name):
        try:
            return self.__dict__["flag_values"][name]
        except KeyError:
            raise AttributeError(name) from None


def parse(argv):
    """(Options, help text or None) from `argv` (without the program name).

    Raises ValueError with a one-line message for unknown or bad flags.
    """
    assignments, rest = {}, []
    for arg in argv:
        if arg.startswith(_CONFIG_PREFIX):
            name, sep, value = arg[len(_CONFIG_PREFIX):].partition("=")
            if not sep:
                raise ValueError(f"`{arg}` needs a value: {_CONFIG_PREFIX}{name}=VALUE")
            assignments[name] = value
        else:
            rest.append(arg)
    fv = flags.FlagValues()
    define_flags(fv)
    if any(arg in ("--help", "-h", "--helpfull") for arg in rest):
        return None, f"{sys.modules[__name__].__doc__}\n{fv.get_help()}"
    try:
        fv(["train", *rest])
    except flags.Error as error:
        raise ValueError(str(error).splitlines()[0]) from None
    values = fv.flag_values_dict()
    values["config_overrides"] = assignments
    return Options(values), None


def resolve_config(options):
    """The recipe of `--config` with the flags' and `--config.*` overrides."""
    from . import configs

    config = configs.get_config(options.config)
    named = {
        "dataset": options.dataset,
        "batch_size": options.batch_size,
        "epochs": options.epochs,
        "base_lr": options.base_lr,
        "weight_decay": options.weight_decay,
        "checkpoint_every_steps": options.checkpoint_every_steps,
        "freeze_backbone_epochs": options.freeze_backbone_epochs,
    }
    config = dataclasses.replace(config, **{k: v for k, v in named.items() if v is not None})
    if options.agc_clipping is not None:
        config.agc_clipping = options.agc_clipping or None
    if options.ema_decay is not None:
        config.ema_decay = options.ema_decay or None
    config = configs.override(config, options.config_overrides)
    for name in ("batch_size", "checkpoint_every_steps"):
        if getattr(config, name) < 1:
            raise ValueError(f"`--{name}` must be a positive integer. Received: {getattr(config, name)}")
    if options.steps_per_epoch is not None and options.steps_per_epoch < 1:
        raise ValueError(
            f"`--steps_per_epoch` must be a positive integer. Received: {options.steps_per_epoch}"
        )
    if not config.epochs > 0:
        raise ValueError(f"`--epochs` must be positive. Received: {config.epochs}")
    if not (0 <= config.freeze_backbone_epochs < config.epochs):
        raise ValueError(
            "`--freeze_backbone_epochs` must be in [0, epochs). "
            f"Received: {config.freeze_backbone_epochs} with epochs={config.epochs}"
        )
    for name in ("base_lr", "weight_decay"):
        value = getattr(config, name)
        if not (value >= 0 and value < float("inf")):
            raise ValueError(f"`--{name}` must be a finite number >= 0. Received: {value}")
    return config


def _check_weights(options):
    weights = options.weights
    if options.mode == "eval" and not weights:
        raise ValueError("`--mode=eval` needs `--weights` (a .keras or weights file).")
    if weights and weights != "imagenet" and "://" not in weights and not os.path.exists(weights):
        raise ValueError(
            "`--weights` must be 'imagenet', a URL or an existing weights file. "
            f"Received: weights={weights!r} (no such file)"
        )


def run(argv):
    """Parses `argv` and runs the job; returns its summary (None for --help).

    Raises ValueError / FileNotFoundError for bad input, before training.
    """
    options, help_text = parse(argv)
    if help_text is not None:
        print(help_text)
        return None
    _check_weights(options)
    options.flag_values["out"] = options.out or os.path.join("runs", options.config)
    options.train_config = resolve_config(options)
    from . import trainer  # imports TensorFlow

    return trainer.run(options, argv)


def main(argv=None):
    """The command line; returns the exit code (2: bad input, 1: failed run)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        run(argv)
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except TrainingError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
