"""Signal Propagation Plots (Brock, De, Smith 2021, arXiv:2101.08692, §4).

`signal_propagation(model)` runs one batch through a model and returns, under
deepmind-research's names (`nfnets/base.py` `signal_metrics` and the blocks'
``return_metrics``; extensions reference §1.2):

* ``avg_sq_mean_i``: mean over channels of the squared per-channel mean,
* ``avg_var_i``: mean over channels of the per-channel (population) variance,

of the stem output (``i = 0``) and of the output of block ``i - 1``
(``i = 1 ... B``), and

* ``res_avg_var_i``: the same variance of block ``i``'s residual branch
  (``i = 0 ... B - 1``), taken after its last convolution (and squeeze-excite)
  but before stochastic depth, the skip gain and alpha,

each statistic reduced over the batch and spatial axes (N, H, W) as DeepMind
does. The tensors are read from the model's layer graph, by the layer names
every model of this package (and `nfnet_keras.baselines`) shares: blocks are
the layers named ``stage{s}_block{b}_*``; a block's output is the output of
its last layer, its input the tensor entering it from outside, its branch
the input of its ``add`` layer that is neither the block input nor a
``*shortcut*`` layer's output, followed back through ``drop_path``,
``skip_gain`` and ``alpha``. Nothing in the model changes.

`plot_signal_propagation` draws the paper's three panels (matplotlib, the
``plot`` extra); ``nfnet-spp`` (`main`) writes them for model names.
"""

import re

import keras
import numpy as np
from keras import ops

from nfnet_keras import layers as nf_layers

_BLOCK = re.compile(r"^stage(\d+)_block(\d+)_")
# Layers that scale the residual branch after DeepMind measures it.
_AFTER_BRANCH = ("drop_path", "skip_gain", "alpha")


class SignalStats(dict):
    """A dict of floats (DeepMind's keys) plus `transitions`: the indices of
    the blocks with a projection shortcut, where the variance resets."""

    def __init__(self, values, transitions=()):
        super().__init__(values)
        self.transitions = tuple(transitions)

    @property
    def num_blocks(self):
        return sum(1 for key in self if key.startswith("res_avg_var_"))


def _blocks(model):
    """Ordered {prefix: [layers]} of the ``stage{s}_block{b}_`` layers."""
    blocks = {}
    for layer in model.layers:
        match = _BLOCK.match(layer.name)
        if match:
            blocks.setdefault(match.group(0), []).append(layer)
    order = sorted(blocks, key=lambda p: tuple(int(g) for g in _BLOCK.match(p).groups()))
    return {prefix: blocks[prefix] for prefix in order}


def _inputs_of(layer):
    tensors = layer.input
    return list(tensors) if isinstance(tensors, (list, tuple)) else [tensors]


def _probe_tensors(model):
    """([(key, tensor)] of the stem, block outputs and residual branches,
    [indices of the blocks with a projection shortcut])."""
    blocks = _blocks(model)
    if not blocks:
        raise ValueError(
            "`model` has no residual blocks named 'stage{s}_block{b}_*', the layer names "
            f"of the package's models. Received a model named {model.name!r}."
        )
    producer = {}
    for layer in model.layers:
        try:
            producer[id(layer.output)] = layer
        except (AttributeError, ValueError):  # unused or multi-node layers
            continue
    tensors = []
    for i, (prefix, block_layers) in enumerate(blocks.items()):
        own = {id(layer.output) for layer in block_layers}
        entering = {
            id(t): t for layer in block_layers for t in _inputs_of(layer) if id(t) not in own
        }
        if len(entering) != 1:
            raise ValueError(
                f"Block {prefix!r} of model {model.name!r} has {len(entering)} input tensors; "
                "the probe expects one."
            )
        block_input = next(iter(entering.values()))
        if i == 0:
            tensors.append(("0", block_input))
        try:
            add = model.get_layer(prefix + "add")
        except ValueError:
            raise ValueError(
                f"Block {prefix!r} of model {model.name!r} has no '{prefix}add' layer."
            ) from None
        branches = [
            t
            for t in _inputs_of(add)
            if t is not block_input and "shortcut" not in getattr(producer.get(id(t)), "name", "")
        ]
        if len(branches) != 1:
            raise ValueError(f"Cannot tell the residual branch of block {prefix!r} from its shortcut.")
        branch = branches[0]
        while producer.get(id(branch)) is not None and any(
            producer[id(branch)].name == prefix + suffix for suffix in _AFTER_BRANCH
        ):
            branch = producer[id(branch)].input
        tensors.append((f"res_{i}", branch))
        tensors.append((str(i + 1), block_layers[-1].output))
    return tensors, [
        i
        for i, prefix in enumerate(blocks)
        if any("shortcut" in layer.name for layer in blocks[prefix])
    ]


def _metrics(x):
    """(avg_sq_mean, avg_var) of an NHWC tensor, in float32 (base.signal_metrics)."""
    x = ops.cast(x, "float32")
    return (
        ops.mean(ops.square(ops.mean(x, axis=(0, 1, 2)))),
        ops.mean(ops.var(x, axis=(0, 1, 2))),
    )


def _has_batch_statistics(model):
    from nfnet_keras.normalization import EvoNormB0

    return any(
        isinstance(layer, (keras.layers.BatchNormalization, EvoNormB0)) for layer in model.layers
    )


def signal_propagation(
    model,
    images=None,
    *,
    batch_size=8,
    image_size=None,
    seed=0,
    skip_gain=None,
    training=None,
):
    """The signal-propagation statistics of `model` on one batch.

    Args:
        model: a model of this package or of `nfnet_keras.baselines` (any
            functional model whose residual blocks are named
            ``stage{s}_block{b}_*`` with an ``add`` layer).
        images: an NHWC batch, fed to the model as it is; `None` draws
            unit-Gaussian noise, the paper's input, as the input of the
            network after any in-model preprocessing.
        batch_size: batch of the noise (default 8).
        image_size: side of the noise images; defaults to the model's input
            size.
        seed: seed of the noise.
        skip_gain: if given, every `SkipGain` scalar is set to this value
            for the probe and restored afterwards. NF blocks start with a
            gain of 0 (SkipInit), which makes them the identity; 1 shows the
            designed growth of the variance by alpha**2 per block.
        training: the mode of the forward pass. `None` (default) uses
            batch statistics (training mode) when the model has
            `BatchNormalization` or `EvoNormB0` layers, as the paper does
            for BN baselines at initialisation, and inference mode
            otherwise. Moving statistics are restored afterwards.

    Returns:
        A `SignalStats` dict of floats: ``avg_sq_mean_i``, ``avg_var_i``
        (``i = 0 ... B``) and ``res_avg_var_i`` (``i = 0 ... B - 1``), and
        the block indices of the transitions in ``.transitions``.
    """
    if not isinstance(model, keras.Model) or not hasattr(model, "inputs") or not model.inputs:
        raise ValueError(
            "`model` must be a functional Keras model (such as the package's constructors "
            f"return). Received: model={model!r}"
        )
    if len(model.inputs) != 1:
        raise ValueError(f"`model` must have one input. Received a model with {len(model.inputs)}.")
    input_shape = tuple(model.inputs[0].shape[1:])
    if images is None:
        images = _gaussian_images(input_shape, batch_size, image_size, seed)
        # The noise is the input of the network proper: through in-model
        # preprocessing (`include_preprocessing=True`) it is fed as the pixels
        # that the normalisation maps onto it.
        for layer in model.layers:
            if isinstance(layer, nf_layers.Normalize) and layer.input is model.inputs[0]:
                images = images * np.float32(layer.std) + np.float32(layer.mean)
    else:
        images = np.asarray(images, dtype="float32")
        if images.ndim != 4 or images.shape[-1] != input_shape[-1]:
            raise ValueError(
                f"`images` must be an NHWC batch with {input_shape[-1]} channels. "
                f"Received an array of shape {images.shape}"
            )
    tensors, transitions = _probe_tensors(model)
    outputs = {}
    for key, tensor in tensors:
        if key.startswith("res_"):
            outputs["res_avg_var_" + key[4:]] = _metrics(tensor)[1]
        else:
            outputs["avg_sq_mean_" + key], outputs["avg_var_" + key] = _metrics(tensor)
    probe = keras.Model(model.inputs[0], outputs, name=model.name + "_signal_probe")
    if training is None:
        training = _has_batch_statistics(model)
    gains = [layer.skip_gain for layer in model.layers if isinstance(layer, nf_layers.SkipGain)]
    if skip_gain is not None and not gains:
        raise ValueError(
            f"`skip_gain` was given but model {model.name!r} has no SkipGain layers. "
            f"Received: skip_gain={skip_gain!r}"
        )
    saved_gains = [g.numpy() for g in gains]
    saved_state = [v.numpy() for v in model.non_trainable_variables]
    try:
        if skip_gain is not None:
            for gain in gains:
                gain.assign(ops.full(gain.shape, float(skip_gain), gain.dtype))
        values = probe(images, training=bool(training))
    finally:
        for gain, value in zip(gains, saved_gains):
            gain.assign(value)
        for variable, value in zip(model.non_trainable_variables, saved_state):
            variable.assign(value)
    ordered = sorted(values, key=_key_order)
    return SignalStats({k: float(values[k]) for k in ordered}, transitions)


def _key_order(key):
    name, index = key.rsplit("_", 1)
    return (("avg_sq_mean", "avg_var", "res_avg_var").index(name), int(index))


def _gaussian_images(input_shape, batch_size, image_size, seed):
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"`batch_size` must be a positive integer. Received: batch_size={batch_size!r}")
    if image_size is None:
        if None in input_shape[:2]:
            raise ValueError(
                "The model's input size is not fixed: pass `image_size` or `images`. "
                f"Received: image_size=None for input shape {input_shape}"
            )
        size = input_shape[:2]
    elif isinstance(image_size, int) and not isinstance(image_size, bool) and image_size > 0:
        size = (image_size, image_size)
    else:
        raise ValueError(f"`image_size` must be a positive integer. Received: image_size={image_size!r}")
    rng = np.random.default_rng(seed)
    return rng.standard_normal((batch_size, *size, input_shape[-1])).astype("float32")


def without_weight_standardization(model, kernel_initializer="he_normal", seed=0):
    """A copy of an NF model with plain convolutions: the paper's ablation.

    Every `ScaledStdConv2D` becomes a `keras.layers.Conv2D` with the same
    shape and a fresh `kernel_initializer` (He init by default), and every
    `GammaAct` loses its gain gamma (He init already gives the ReLU branch
    unit variance); beta, alpha and the skip gains stay. The names stay, so
    `signal_propagation` probes the copy like the original (extensions
    reference §1.4, §1.5 (c)).
    """
    initializer = keras.initializers.get(kernel_initializer)
    converted = []

    def clone(layer):
        config = layer.get_config()
        if isinstance(layer, nf_layers.ScaledStdConv2D):
            for key in ("convention", "eps", "gamma", "gain_initializer"):
                config.pop(key)
            # One seed per convolution: a seeded Keras initializer repeats its values.
            init_config = initializer.get_config()
            if "seed" in init_config:
                init_config["seed"] = seed + len(converted)
            config["kernel_initializer"] = keras.initializers.serialize(
                initializer.__class__.from_config(init_config)
            )
            converted.append(layer.name)
            return keras.layers.Conv2D.from_config(config)
        if isinstance(layer, nf_layers.GammaAct):
            config["gamma"] = 1.0
        return layer.__class__.from_config(config)

    return keras.models.clone_model(model, clone_function=clone)


def plot_signal_propagation(stats, labels=None, axes=None, transitions=None):
    """The paper's three panels: squared mean, variance, residual variance.

    Args:
        stats: a `signal_propagation` result, or a list of them (overlaid).
        labels: a legend label per result.
        axes: three matplotlib axes to draw on; `None` makes a figure.
        transitions: block indices to mark with vertical lines; defaults to
            the first result's `.transitions`.

    Returns:
        The matplotlib figure.
    """
    try:
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError(
            "plot_signal_propagation needs matplotlib: pip install 'nfnet_keras[plot]'"
        ) from error
    stats_list = [stats] if isinstance(stats, dict) else list(stats)
    if not stats_list or not all(isinstance(s, dict) for s in stats_list):
        raise ValueError(
            "`stats` must be a signal_propagation result or a list of them. "
            f"Received: {type(stats).__name__}"
        )
    if labels is None:
        labels = [None] * len(stats_list)
    elif isinstance(labels, str) or len(labels) != len(stats_list):
        raise ValueError(
            f"`labels` must be a list of {len(stats_list)} strings, one per result. "
            f"Received: labels={labels!r}"
        )
    if transitions is None:
        transitions = getattr(stats_list[0], "transitions", ())
    if axes is None:
        figure, axes = plt.subplots(1, 3, figsize=(15, 4))
    else:
        figure = axes[0].figure
    panels = (
        ("avg_sq_mean", "Average channel squared mean", 0),
        ("avg_var", "Average channel variance", 0),
        ("res_avg_var", "Residual average channel variance", 1),
    )
    for ax, (key, title, offset) in zip(axes, panels):
        for result, label in zip(stats_list, labels):
            values = _series(result, key)
            ax.plot(np.arange(len(values)) + offset, values, marker=".", label=label)
        for block in transitions:
            ax.axvline(block + 1, color="grey", linestyle=":", linewidth=0.8)
        ax.set_title(title)
        ax.set_xlabel("block (0 = stem)" if offset == 0 else "block")
    if any(label is not None for label in labels):
        axes[0].legend()
    figure.tight_layout()
    return figure


def _series(result, key):
    values = []
    while f"{key}_{len(values)}" in result:
        values.append(result[f"{key}_{len(values)}"])
    if not values:
        raise ValueError(f"`stats` has no '{key}_0' entry; pass signal_propagation results.")
    return values


def main(argv=None):
    """``nfnet-spp``: writes the signal-propagation plot of models at init."""
    import argparse

    from nfnet_keras import baselines
    from nfnet_keras.models import get_architecture, get_model, list_models

    names = list_models() + sorted(baselines.MODELS)
    parser = argparse.ArgumentParser(
        prog="nfnet-spp", description="Signal Propagation Plot of models at initialisation."
    )
    parser.add_argument("models", nargs="+", metavar="MODEL", help=f"one of {names}")
    parser.add_argument("--out", default="spp.png", help="PNG to write (default spp.png)")
    parser.add_argument("--image-size", type=int, default=256, help="side of the Gaussian input")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--skip-gain",
        type=float,
        default=1.0,
        help="value of the NF skip gains during the probe (default 1; SkipInit's 0 "
        "makes NF blocks the identity at init)",
    )
    parser.add_argument("--weights", default=None, help="weights of the NF models (default: init)")
    args = parser.parse_args(argv)
    results = []
    for name in args.models:
        shape = (args.image_size, args.image_size, 3)
        if name in baselines.MODELS:
            model = baselines.MODELS[name](include_top=False, input_shape=shape)
            gain = None
        else:
            try:
                get_architecture(name)
            except ValueError:
                parser.error(f"unknown model {name!r}; expected one of {names}")
            model = get_model(name, include_top=False, input_shape=shape, weights=args.weights)
            has_gains = any(isinstance(layer, nf_layers.SkipGain) for layer in model.layers)
            gain = args.skip_gain if args.weights is None and has_gains else None
        results.append(
            signal_propagation(model, batch_size=args.batch_size, seed=args.seed, skip_gain=gain)
        )
        print(f"{name}: {results[-1].num_blocks} blocks")
    figure = plot_signal_propagation(results, labels=args.models)
    figure.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
