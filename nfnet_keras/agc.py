"""Adaptive Gradient Clipping (AGC) and the model class whose `fit` applies it.

AGC (Brock, De, Smith, Simonyan 2021, arXiv:2102.06171, §4; reference doc
§7) clips each *unit* of a gradient -- one output unit of a kernel, or a
whole bias, gain or scalar -- so that its norm is at most ``clipping`` times
the norm of the matching unit of the weights:

    ||W_i||* = max(||W_i||, eps)
    G_i <- G_i * clipping * ||W_i||* / ||G_i||   if ||G_i|| > clipping * ||W_i||*

The pure functions `unitwise_norm` and `adaptive_clip` hold the maths;
`NFModel` is a functional `keras.Model` whose `fit` (and `train_on_batch`)
applies it on Keras's TensorFlow and JAX backends: on TensorFlow to the
gradient of the *global* batch under any `tf.distribute` strategy, with or
without loss scaling; on JAX on one device or under
`keras.distribution.DataParallel`, in float32 or mixed_bfloat16.

Where the clipping sits (TensorFlow backend). Keras 3 sums gradients across
replicas inside `optimizer.apply()` (`TFOptimizer._backend_update_step` ->
`_all_reduce_sum_gradients` -> `update_step` per variable), after
un-scaling them (`LossScaleOptimizer`, `loss_scale_factor`) and after
averaging accumulated micro-batches (`gradient_accumulation_steps`). A
transform applied in `train_step`, before `apply()`, therefore sees one
replica's gradient, still multiplied by the loss scale; an explicit
all-reduce there would be summed a second time by `apply()`. The one place
that sees the cross-replica, unscaled, accumulated gradient exactly once is
the per-variable `update_step`: `NFModel.compile` wraps whatever optimizer
it is given in an `AGCOptimizer` (inside a `LossScaleOptimizer`, as Keras
wraps one for mixed precision) whose `update_step` applies AGC and then the
given optimizer's own update (momentum, weight decay, ...) -- the order of
deepmind-research `nfnets/optim.py` `SGD_AGC` (reference doc §7.4).

JAX backend. Keras's JAX trainer runs a stateless, jitted step: the
gradient of the whole batch (one global array, also when a `DataParallel`
distribution shards the batch over devices), then
`optimizer.stateless_apply`, which runs the same `AGCOptimizer.apply`
pipeline inside a `keras.StatelessScope` and returns the new values of the
optimizer's `variables`. The per-variable
AGC statistics are therefore among those variables on JAX (not saved with
the optimizer's state), and the optimizer's conditional updates (gradient
accumulation, EMA overwrite) select values instead of branching
(`_assign_cond`). `NFModel`'s JAX step adds the non-finite guard and the
metrics of the TensorFlow step. Two settings are refused on JAX with an
error: loss scaling (`mixed_float16`), since Keras's `LossScaleOptimizer`
saves the wrapped optimizer's `variables` whole, AGC statistics included,
and its saved state would not load back into a new model; and the
distributions other than `DataParallel` (untested).
"""

import contextlib
import inspect
import math
import sys
import threading
import warnings

import keras
import numpy as np
from keras import ops

from nfnet_keras.imagenet_utils import IMAGENET_MEAN, IMAGENET_STD, RESIZED_PIXEL_RANGE
from nfnet_keras.layers import PACKAGE

# The paper's clipping factor lambda and the weight-norm floor eps
# (deepmind-research `nfnets/experiment_nfnets.py`, `optim.SGD_AGC`
# defaults; reference doc §7.1, §7.5).
DEFAULT_CLIPPING = 0.01
DEFAULT_EPS = 1e-3
# Guards the division by the gradient norm only (`optim.SGD_AGC`,
# `agc_optax.py`; reference doc §7.1).
_GRAD_NORM_FLOOR = 1e-6
# The classifier kernel is not clipped (paper §4.1 "we find it is beneficial
# not to clip the final linear layer"); the reference still clips the
# classifier bias (`experiment_nfnets.py` `_make_opt`, reference doc §7.3).
# The classifier is found by structure (`classifier_layers`).
# Layers without weights that may sit between the classifier and the output.
_PASS_THROUGH = (
    keras.layers.Activation,
    keras.layers.Dropout,
    keras.layers.Softmax,
    keras.layers.Identity,
    keras.layers.Rescaling,
)
# Kernels of Keras Dense (in, out), Conv1D (w, in, out), Conv2D (h, w, in,
# out) and Conv3D (d, h, w, in, out): the output unit is the last axis.
_MAX_RANK = 5

_LOW_PRECISION = ("float16", "bfloat16")
# The values that `preprocess_input` gives for [0, 1] pixels after a bicubic
# resize, over the three channels ([-3.35, 3.89]).
_NORMALISED_RANGE = (
    min((RESIZED_PIXEL_RANGE[0] - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)),
    max((RESIZED_PIXEL_RANGE[1] - m) / s for m, s in zip(IMAGENET_MEAN, IMAGENET_STD)),
)
# `NFModel.predict` reads input above twice the top of that range (7.78) as
# [0, 255] pixels: they exceed it unless the whole image is darker than
# 8 / 255, while normalised images, even contrast-stretched, and Gaussian
# test input (P(z > 7.78) < 1e-14) stay below it.
_PIXELS_THRESHOLD = 2 * _NORMALISED_RANGE[1]
# Keras walks functional graphs recursively (building, saving, loading);
# NFNet-F6/F7 are ~1,300 layers deep, past Python's default limit of 1,000.
_RECURSION_LIMIT = 20_000


@contextlib.contextmanager
def deep_graph():
    """Raises Python's recursion limit for the enclosed graph walk only."""
    previous = sys.getrecursionlimit()
    sys.setrecursionlimit(max(previous, _RECURSION_LIMIT))
    try:
        yield
    finally:
        sys.setrecursionlimit(previous)


def unitwise_norm(x):
    """The L2 norm of each unit of a weight or gradient tensor.

    Rule of deepmind-research `nfnets/agc_optax.py` `unitwise_norm` for the
    HWIO / (in, out) layouts Keras shares with Haiku (reference doc §7.2):

    * a tensor with at most one dimension larger than 1 (scalar, bias,
      gain, or a kernel such as (1, n)) is one unit: the norm of the whole
      tensor, returned as a scalar;
    * otherwise (ranks 2 to 5) each index of the *last* axis -- the output
      unit of a Keras kernel -- is a unit: the norm over every other axis,
      kept with `keepdims=True` so that it broadcasts against `x`.

    PyTorch keeps the output unit on axis 0 (OIHW, (out, in)); compare with
    timm's `unitwise_norm` only after moving that axis last. For rank 3
    this follows the Keras Conv1D layout (w, in, out); deepmind-research
    reduces rank-3 "multihead linear" kernels over axis 0 only.

    Args:
        x: a tensor with a fully known shape.

    Returns:
        A scalar, or a tensor of shape ``(1, ..., 1, units)``.
    """
    shape = tuple(x.shape)
    if any(d is None for d in shape):
        raise ValueError(
            f"`unitwise_norm` needs a fully known shape. Received a tensor of shape {shape}."
        )
    if sum(1 for d in shape if d != 1) <= 1:
        return ops.sqrt(ops.sum(ops.square(x)))
    if len(shape) > _MAX_RANK:
        raise ValueError(
            "`unitwise_norm` handles scalars, vectors and kernels of rank 2 to "
            f"{_MAX_RANK} with the output unit last. Received a tensor of shape {shape} "
            f"(rank {len(shape)})."
        )
    return ops.sqrt(ops.sum(ops.square(x), axis=tuple(range(len(shape) - 1)), keepdims=True))


def num_units(shape):
    """How many AGC units a variable of this shape has (see `unitwise_norm`)."""
    shape = tuple(shape)
    if sum(1 for d in shape if d != 1) <= 1:
        return 1
    return int(shape[-1])


def _check_clip_arguments(clipping, eps, allow_none):
    if clipping is None and allow_none:
        pass
    elif isinstance(clipping, bool) or not isinstance(clipping, (int, float)) or not (
        clipping > 0 and math.isfinite(clipping)
    ):
        expected = "a positive float or None" if allow_none else "a positive float"
        raise ValueError(f"`clipping` must be {expected}. Received: clipping={clipping!r}")
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not eps > 0:
        raise ValueError(f"`eps` must be a positive float. Received: eps={eps!r}")


def _clip_one(gradient, variable, clipping, eps):
    """AGC of one tensor; returns (clipped gradient, clipped-unit mask, |g|^2).

    The norms are taken in float32 at least, whatever the gradient's dtype
    (float16/bfloat16 gradients are clipped in float32 and cast back).
    """
    dtype = keras.backend.standardize_dtype(gradient.dtype)
    compute_dtype = "float32" if dtype in _LOW_PRECISION else dtype
    g = ops.cast(gradient, compute_dtype)
    w = ops.cast(variable, compute_dtype)
    max_norm = ops.maximum(unitwise_norm(w), eps) * clipping
    g_norm = unitwise_norm(g)
    clip = g_norm > max_norm
    clipped = g * (max_norm / ops.maximum(g_norm, _GRAD_NORM_FLOOR))
    out = ops.where(clip, clipped, g)
    return ops.cast(out, dtype), clip, ops.sum(ops.square(g))


def adaptive_clip(gradients, variables, clipping=DEFAULT_CLIPPING, eps=DEFAULT_EPS):
    """Adaptive gradient clipping (reference doc §7.1).

    Args:
        gradients: a gradient tensor, or a list of them (`None` entries are
            passed through, as for variables that got no gradient).
        variables: the matching weight tensor(s) or variable(s).
        clipping: the clipping factor lambda (paper default 0.01).
        eps: the floor of the weight norm (paper default 1e-3), so that
            zero-initialised weights can still move.

    Returns:
        The clipped gradient(s), in the structure of `gradients`.
    """
    _check_clip_arguments(clipping, eps, allow_none=False)
    if isinstance(gradients, (list, tuple)):
        if not isinstance(variables, (list, tuple)) or len(variables) != len(gradients):
            raise ValueError(
                "`gradients` and `variables` must be lists of the same length. "
                f"Received {len(gradients)} gradients and "
                f"{len(variables) if isinstance(variables, (list, tuple)) else 'a non-list'} variables."
            )
        return [
            None if g is None else _clip_one(g, v, clipping, eps)[0]
            for g, v in zip(gradients, variables)
        ]
    if tuple(gradients.shape) != tuple(variables.shape):
        raise ValueError(
            "A gradient and its variable must have the same shape. Received "
            f"gradient shape {tuple(gradients.shape)} and variable shape {tuple(variables.shape)}."
        )
    return _clip_one(gradients, variables, clipping, eps)[0]


# ---------------------------------------------------------------------------
# Training with AGC (TensorFlow and JAX backends).
# ---------------------------------------------------------------------------


@keras.saving.register_keras_serializable(package=PACKAGE)
class AGCOptimizer(keras.optimizers.Optimizer):
    """Applies an optimizer's update to adaptively clipped gradients.

    `NFModel.compile` wraps the optimizer it is given in this class, as
    Keras wraps one in `LossScaleOptimizer` for mixed precision; the given
    optimizer is not modified, and its variables (slots, iterations, EMA
    averages, accumulators) are the ones that train. Each step runs Keras's
    `apply` pipeline -- gradient accumulation, clipping and weight decay of
    the inner optimizer, the cross-replica sum -- and then, per variable,
    AGC of the model followed by the inner optimizer's `update_step` (the
    order of deepmind-research `nfnets/optim.py` `SGD_AGC`, reference doc
    §7.4). That per-variable step is the one place that sees the
    cross-replica, unscaled, accumulated gradient exactly once (module
    docstring).

    It records per variable the number of clipped units and the squared norm
    of the (unclipped) global gradient in the model's `stats`, from which
    `NFModel.train_step` computes its metrics.

    Args:
        inner_optimizer: the optimizer (instance, name or config) to wrap.
    """

    def __init__(self, inner_optimizer, name=None):
        inner = keras.optimizers.get(inner_optimizer)
        if isinstance(inner, (AGCOptimizer, keras.optimizers.LossScaleOptimizer)):
            raise ValueError(
                "`inner_optimizer` must be a plain Keras optimizer (loss scaling wraps "
                f"AGC, not the reverse). Received: {type(inner).__name__}"
            )
        # The loss scale factor moves here: `NFModel.train_step` scales the
        # loss with this optimizer and `apply` unscales the gradients.
        super().__init__(
            learning_rate=0.0,
            name=name or "agc_optimizer",
            loss_scale_factor=inner.loss_scale_factor,
        )
        self.inner_optimizer = inner
        self._agc = None  # set by `NFModel` before training (`install`)

    def __getattr__(self, name):
        # The inner optimizer's slots and settings (`momentums`,
        # `_model_variables_moving_average`, ...), as `LossScaleOptimizer`
        # users expect to reach them.
        inner = self.__dict__.get("inner_optimizer")
        if inner is None or name.startswith("__"):
            raise AttributeError(name)
        return getattr(inner, name)

    def install(self, model, stats, variables, excluded):
        """Connects the model whose AGC settings and `stats` are used."""
        inner = self.inner_optimizer
        self._agc = _Hook(
            model,
            stats,
            {inner._var_key(v): i for i, v in enumerate(variables)},
            {inner._var_key(v) for v in excluded},
        )

    @property
    def variables(self):
        # On JAX the step's AGC stats are optimizer state as well: the JAX
        # trainer's `stateless_apply` returns the new values of `variables`
        # only. They are not saved (`save_own_variables`).
        step_variables = [] if self._agc is None else self._agc.step_variables
        return self._saved_variables() + step_variables

    def _saved_variables(self):
        return self._variables + self.inner_optimizer.variables

    def save_own_variables(self, store):
        for i, variable in enumerate(self._saved_variables()):
            store[str(i)] = variable.numpy()

    def load_own_variables(self, store):
        saved = self._saved_variables()
        if len(store.keys()) != len(saved):
            return super().load_own_variables(store)  # Keras's warning
        for i, variable in enumerate(saved):
            variable.assign(store[str(i)])

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    def build(self, var_list):
        self.inner_optimizer.build(var_list)
        super().build(var_list)

    def apply(self, grads, trainable_variables=None):
        super().apply(grads, trainable_variables)
        # The inner optimizer counts its steps as if it had applied them
        # (its learning-rate schedule, Adam's bias correction, EMA warm-up).
        self.inner_optimizer._iterations.assign_add(1)

    def _backend_apply_gradients(self, grads, trainable_variables):
        inner = self.inner_optimizer
        steps = inner.gradient_accumulation_steps
        if not steps:
            self._apply_clipped(grads, trainable_variables)
        else:
            # Keras's accumulation (`BaseOptimizer._backend_apply_gradients`),
            # in the inner optimizer's accumulators: AGC then sees the mean.
            accumulated = [
                inner._accumulated_gradients[inner._get_variable_index(v)]
                for v in trainable_variables
            ]

            def update():
                mean = [(g + a) / steps for g, a in zip(grads, accumulated)]
                self._apply_clipped(mean, trainable_variables)
                inner._backend_reset_gradient_accumulators()

            _assign_cond(
                (inner._iterations + 1) % steps == 0,  # counts micro-batches
                update,
                lambda: inner._backend_increment_gradient_accumulators(grads, accumulated),
                list(trainable_variables) + self.variables,
            )
        if inner.use_ema:
            inner._update_model_variables_moving_average(inner._trainable_variables)
            if inner.ema_overwrite_frequency:
                _assign_cond(
                    (inner.iterations + 1) % inner.ema_overwrite_frequency == 0,
                    lambda: inner._overwrite_model_variables_with_average_value(
                        inner._trainable_variables
                    ),
                    lambda: None,
                    inner._trainable_variables,
                )

    def _apply_clipped(self, grads, trainable_variables):
        inner = self.inner_optimizer
        grads = inner._clip_gradients(grads)
        inner._apply_weight_decay(trainable_variables)
        # This class's TF `_backend_update_step`: the cross-replica sum, then
        # `update_step` per variable.
        self._backend_update_step(grads, trainable_variables, self.learning_rate)

    def update_step(self, gradient, variable, learning_rate):
        inner = self.inner_optimizer
        if self._agc is None:
            return inner.update_step(gradient, variable, learning_rate)
        model, stats, index, excluded = self._agc.parts()
        key = inner._var_key(variable)
        row = index.get(key)
        if row is None:  # not one of the model's variables
            return inner.update_step(gradient, variable, learning_rate)
        gradient = ops.convert_to_tensor(gradient)
        if model.agc_clipping is None or key in excluded:
            dtype = keras.backend.standardize_dtype(gradient.dtype)
            g32 = ops.cast(gradient, "float32" if dtype in _LOW_PRECISION else dtype)
            n_clipped, sq_norm = 0.0, ops.sum(ops.square(g32))
        else:
            gradient, clip, sq_norm = _clip_one(gradient, variable, model.agc_clipping, model.agc_eps)
            n_clipped = ops.sum(ops.cast(clip, "float32"))
        _record(stats, row, n_clipped, sq_norm)
        return inner.update_step(gradient, variable, learning_rate)

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": keras.optimizers.serialize(self.inner_optimizer),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        inner = keras.optimizers.deserialize(
            config.pop("inner_optimizer"), custom_objects=custom_objects
        )
        return cls(inner, **config)


class _Hook:
    """The model an `AGCOptimizer` clips for, and where it records.

    A plain object, not a tuple: Keras's weight saving walks an optimizer's
    containers and would follow the model back to the optimizer.
    """

    def __init__(self, model, stats, index, excluded):
        self.model = model
        self.stats = stats
        self.index = index  # optimizer var key -> row of `stats`
        self.excluded = excluded  # optimizer var keys left unclipped
        # JAX: `stats` travels with the optimizer's state (`AGCOptimizer.variables`).
        self.step_variables = [] if keras.backend.backend() == "tensorflow" else [stats]

    def parts(self):
        return self.model, self.stats, self.index, self.excluded


def _record(stats, row, n_clipped, sq_norm):
    value = ops.stack([ops.cast(n_clipped, "float32"), ops.cast(sq_norm, "float32")])
    if keras.backend.backend() != "tensorflow":
        stats.assign(ops.slice_update(stats.value, (row, 0), value[None]))
        return
    import tensorflow as tf

    stats.scatter_update(tf.IndexedSlices(value[None], [row]))


def _assign_cond(condition, true_fn, false_fn, variables):
    """`ops.cond(condition, true_fn, false_fn)` for branches that assign variables.

    TensorFlow runs one branch. A JAX step is traced statelessly, and a
    variable assigned inside `lax.cond` would leak its traced value out of
    the branch; so both branches run, and each keeps its assignments to
    `variables` only where it is taken (as Keras's `JaxOptimizer` does for
    gradient accumulation and EMA).
    """
    if keras.backend.backend() == "tensorflow":
        ops.cond(condition, true_fn, false_fn)
        return
    for taken, branch in ((condition, true_fn), (ops.logical_not(condition), false_fn)):
        before = [variable.value for variable in variables]
        branch()
        for variable, value in zip(variables, before):
            variable.assign(ops.where(taken, variable.value, value))


def with_agc(optimizer):
    """`optimizer` wrapped in `AGCOptimizer` (inside its loss scaling, if any)."""
    optimizer = keras.optimizers.get(optimizer)
    if isinstance(optimizer, AGCOptimizer):
        return optimizer
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        inner = optimizer.inner_optimizer
        if isinstance(inner, AGCOptimizer):
            return optimizer
        return keras.optimizers.LossScaleOptimizer(
            AGCOptimizer(inner),
            initial_scale=optimizer.initial_scale,
            dynamic_growth_steps=optimizer.dynamic_growth_steps,
        )
    return AGCOptimizer(optimizer)


def _agc_optimizer(optimizer):
    """The `AGCOptimizer` of a compiled model's optimizer (under loss scaling)."""
    while not isinstance(optimizer, AGCOptimizer):
        optimizer = getattr(optimizer, "inner_optimizer", None)
        if optimizer is None:
            return None
    return optimizer


class _AGCState:
    """Training-only state of an `NFModel`, kept out of saved weights."""

    def __init__(self, model):
        n = len(model.trainable_variables)
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            self.stats = tf.Variable(
                tf.zeros((n, 2)), trainable=False, name="agc_stats",
                aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
            )
        else:
            self.stats = keras.Variable(
                np.zeros((n, 2), "float32"), trainable=False, name="agc_stats"
            )
        self.clip_fraction = keras.metrics.Mean(name="agc_clip_fraction")
        self.grad_norm = keras.metrics.Mean(name="grad_norm")
        self.skipped_steps = keras.metrics.Sum(name="skipped_steps")
        self.variables = list(model.trainable_variables)
        self.units = [num_units(v.shape) for v in self.variables]
        self.clipped_mask = None  # set by `install`

    @property
    def metrics(self):
        return [self.clip_fraction, self.grad_norm, self.skipped_steps]

    def matches(self, model):
        return [id(v) for v in model.trainable_variables] == [id(v) for v in self.variables]

    def install(self, model):
        """Connects the model's `AGCOptimizer` to this state."""
        excluded_vars = model._agc_excluded_variables()
        excluded_ids = {id(v) for v in excluded_vars}
        self.clipped_mask = [id(v) not in excluded_ids for v in self.variables]
        optimizer = _agc_optimizer(model.optimizer)
        if optimizer is None:
            raise ValueError(
                f"The optimizer of NFModel '{model.name}' was not installed by "
                "`NFModel.compile`; compile the model to train it with AGC."
            )
        optimizer.install(model, self.stats, self.variables, excluded_vars)

    def update_metrics(self, model, applied):
        """Updates the metrics from the step's stats (weight 0 when skipped)."""
        stats = ops.convert_to_tensor(self.stats)
        weight = ops.cast(applied, "float32")
        self.grad_norm.update_state(ops.sqrt(ops.sum(stats[:, 1])), sample_weight=weight)
        if model.agc_clipping is not None:
            total = max(sum(u for u, c in zip(self.units, self.clipped_mask) if c), 1)
            self.clip_fraction.update_state(ops.sum(stats[:, 0]) / total, sample_weight=weight)
        self.skipped_steps.update_state(1.0 - weight)


def _producer(tensor):
    """The layer that computed a symbolic tensor of a functional graph.

    `_keras_history` is the KerasTensor's record of its producer; Keras has
    no public graph-walking API for it.
    """
    history = getattr(tensor, "_keras_history", None)
    return None if history is None else history.operation


def classifier_layers(model):
    """The classifier of each output: the last `Dense` layer feeding it.

    Walks back from each output through layers without weights (activation,
    dropout, rescaling) and into nested functional models; an output whose
    last weighted layer is not a `Dense` (a feature extractor) has none.
    """
    found = []
    pending = list(model.outputs)
    while pending:
        layer = _producer(pending.pop())
        if isinstance(layer, keras.layers.Dense):
            if all(layer is not f for f in found):
                found.append(layer)
        elif isinstance(layer, keras.Model) and hasattr(layer, "outputs"):
            found.extend(f for f in classifier_layers(layer) if all(f is not g for g in found))
        elif isinstance(layer, _PASS_THROUGH):
            pending.append(layer.input)
    return found


_STEP = threading.local()


@contextlib.contextmanager
def _agc_step():
    """Marks the (trace of the) forward pass of an `NFModel` training step."""
    previous = getattr(_STEP, "active", False)
    _STEP.active = True
    try:
        yield
    finally:
        _STEP.active = previous


@keras.saving.register_keras_serializable(package=PACKAGE)
class NFModel(keras.Model):
    """A functional Keras model whose `fit` applies Adaptive Gradient Clipping.

    Built like any functional model, ``NFModel(inputs, outputs)``; every NF
    constructor of this package returns one. `compile` takes any Keras
    optimizer; `fit` then clips the cross-replica mean gradient of every
    variable but the classifier kernel before the optimizer sees it
    (paper §4, reference doc §7). The settings below are part of
    `get_config`, so a saved `.keras` model trains the same way after
    `keras.models.load_model`; they can also be passed to `compile`.

    `fit` and `train_on_batch` train with AGC on Keras's TensorFlow backend
    (any `tf.distribute` strategy, any dtype policy) and on its JAX backend
    (one device or `keras.distribution.DataParallel`; dtype policy float32
    or mixed_bfloat16: loss scaling and other distributions are refused
    there with an error). The training step also

    * skips the update when any gradient of any replica is not finite: the
      optimizer is not called, so weights, optimizer state, iterations and
      EMA are unchanged (with a `LossScaleOptimizer` the scale is halved, as
      usual), and the step is counted in the `skipped_steps` metric. This
      decision is taken on all replicas together: Keras's
      `LossScaleOptimizer` alone looks only at the first replica's
      gradients under `MirroredStrategy` and would apply an overflow of
      another replica to the weights;
    * reports `grad_norm` (L2 norm of the whole global gradient, before
      clipping) and `agc_clip_fraction` (fraction of the clipped variables'
      units that were clipped), averaged over the epoch like every `fit`
      metric, in the `fit` logs and so in `keras.callbacks.TensorBoard`.

    Args:
        *args: `inputs`, `outputs` (and `name`) of a functional model.
        agc_clipping: the clipping factor lambda; `None` turns AGC off (the
            step then still guards against non-finite gradients and reports
            `grad_norm`). Default 0.01 (the paper's).
        agc_eps: floor of the weight norm (default 1e-3, the paper's).
        pretrained_cfg: metadata of the architecture and checkpoint (input
            size, mean/std, crop and interpolation, source, top-1), as
            timm's `pretrained_cfg`; set by the constructors, kept by
            `get_config`.
        agc_exclude: variables that are not clipped, as variable objects or
            strings; a string names a variable path (``"predictions/kernel"``)
            or a layer (``"predictions"`` = all its variables). `None` means
            the kernel of the classifier -- the last `Dense` layer feeding
            each output, whatever its name -- is not clipped, its bias is
            (deepmind-research `experiment_nfnets.py`; reference doc §7.3). A given list replaces that default, and each entry
            must match some trainable variable.
        pyramid_layers: a dict ``{"P1": layer name, ...}`` naming the layers
            whose outputs are `pyramid_outputs`; set by the constructors,
            kept by `get_config`. Default: no pyramid.
        remat: `True` recomputes each NF block in the backward pass of
            training calls (gradient checkpointing: only block inputs are
            kept; `nfnet_keras.models.remat`). Default `False`.
        **kwargs: other `keras.Model` arguments.
    """

    def __init__(
        self,
        *args,
        agc_clipping=DEFAULT_CLIPPING,
        agc_eps=DEFAULT_EPS,
        agc_exclude=None,
        pretrained_cfg=None,
        pyramid_layers=None,
        remat=False,
        **kwargs,
    ):
        with deep_graph():
            super().__init__(*args, **kwargs)
        _check_clip_arguments(agc_clipping, agc_eps, allow_none=True)
        if not isinstance(remat, bool):
            raise ValueError(f"`remat` must be True or False. Received: remat={remat!r}")
        self.remat = remat
        # Untracked: a plan over this model's own layers, not new state.
        object.__setattr__(self, "_remat_plan", None)
        if remat:
            from nfnet_keras.models.remat import BlockRemat

            object.__setattr__(self, "_remat_plan", BlockRemat(self))
        object.__setattr__(self, "pyramid_layers", dict(pyramid_layers or {}))
        self.agc_clipping = None if agc_clipping is None else float(agc_clipping)
        self.agc_eps = float(agc_eps)
        self.agc_exclude = self._normalize_exclude(agc_exclude)
        # Training-only state (metrics, per-variable stats), set by
        # `make_train_function`; bypasses attribute tracking so that it is
        # neither saved nor checkpointed.
        object.__setattr__(self, "_agc_state_obj", None)
        # A plain dict (not tracked): metadata, not state.
        object.__setattr__(self, "pretrained_cfg", dict(pretrained_cfg or {}))
        # The `predict` call sites that warned about their input's range.
        object.__setattr__(self, "_range_warned_sites", set())

    # -- configuration -----------------------------------------------------

    def _normalize_exclude(self, agc_exclude):
        if agc_exclude is None:
            return None
        if isinstance(agc_exclude, (str, keras.Variable)):
            agc_exclude = [agc_exclude]
        if not isinstance(agc_exclude, (list, tuple)):
            raise TypeError(
                "`agc_exclude` must be None or a list of variables or variable/layer "
                f"names. Received: agc_exclude={agc_exclude!r}"
            )
        names = []
        for entry in agc_exclude:
            if isinstance(entry, str):
                names.append(entry)
            elif isinstance(entry, keras.Variable):
                names.append(entry.path)
            else:
                raise TypeError(
                    "Each `agc_exclude` entry must be a variable or a string (a "
                    f"variable path or a layer name). Received: {entry!r}"
                )
        return tuple(names)

    def _agc_excluded_variables(self):
        variables = self.trainable_variables
        if self.agc_exclude is None:
            return [layer.kernel for layer in classifier_layers(self)]
        patterns, strict = self.agc_exclude, True
        excluded = []
        for pattern in patterns:
            matched = [v for v in variables if v.path == pattern or v.path.startswith(pattern + "/")]
            if strict and not matched:
                raise ValueError(
                    f"`agc_exclude` entry {pattern!r} matches no trainable variable of "
                    f"model '{self.name}'. Use a variable path such as "
                    f"{variables[-1].path!r} or a layer name."
                )
            excluded.extend(v for v in matched if all(v is not e for e in excluded))
        return excluded

    def get_config(self):
        with deep_graph():
            config = super().get_config()
        config.update(
            {
                "pretrained_cfg": self.pretrained_cfg or None,
                "agc_clipping": self.agc_clipping,
                "agc_eps": self.agc_eps,
                "agc_exclude": None if self.agc_exclude is None else list(self.agc_exclude),
                "pyramid_layers": self.pyramid_layers or None,
                "remat": self.remat,
            }
        )
        return config

    @property
    def pyramid_outputs(self):
        """The feature pyramid: ``{"P1": KerasTensor, ...}`` (KerasHub's
        `Backbone.pyramid_outputs`), from `pyramid_layers`."""
        return {key: self.get_layer(name).output for key, name in self.pyramid_layers.items()}

    def call(self, inputs, training=None, mask=None, **kwargs):
        if training and self.agc_clipping is not None and not getattr(_STEP, "active", False):
            # Keras's call context names the outermost layer being called
            # (no public accessor): another model is training this one.
            from keras.src.backend.common import global_state

            context = global_state.get_global_attribute("current_call_ctx")
            if context is not None and context.entry_layer is not self:
                self._warn_without_agc()
        if training and self._remat_plan is not None:
            return self._remat_plan(inputs, training=training)
        return super().call(inputs, training=training, mask=mask, **kwargs)

    def _warn_without_agc(self):
        if getattr(self, "_warned_without_agc", False):
            return
        object.__setattr__(self, "_warned_without_agc", True)
        warnings.warn(
            f"The NF model '{self.name}' is being trained inside a model that does not "
            "apply Adaptive Gradient Clipping (only `NFModel.fit` does). To keep AGC, "
            "build the whole network as one NFModel: "
            "`nfnet_keras.NFModel(backbone.input, head(backbone.output))`, or use "
            "`nfnet_keras.from_preset(name, num_classes=...)`.",
            stacklevel=2,
        )

    # -- saving ------------------------------------------------------------

    def save(self, filepath, *args, **kwargs):
        """`keras.Model.save`. A legacy `.h5` file of a compiled model is
        refused unless ``include_optimizer=False``: Keras 3 does not restore
        the optimizer state from `.h5` (it builds the optimizer over no
        variables, then fails to set the saved state), and Keras 3.15's
        `.h5` writer also drops the optimizer from the model's compile
        configuration (keras-team/keras#23475)."""
        if (
            str(filepath).endswith((".h5", ".hdf5"))
            and not str(filepath).endswith(".weights.h5")
            and self.compiled
            and kwargs.get("include_optimizer", True)
        ):
            raise ValueError(
                f"A legacy `.h5` file cannot keep the optimizer state of the compiled model "
                f"'{self.name}'. Save it as `.keras` (all state), or pass "
                f"`include_optimizer=False` to save the model alone. Received: filepath={filepath!r}"
            )
        return super().save(filepath, *args, **kwargs)

    # -- inference ---------------------------------------------------------

    def predict(self, x, *args, **kwargs):
        """`keras.Model.predict`; warns, once per call site, when the model
        takes mean/std-normalised images (``include_preprocessing=False``)
        and `x`, an array or tensor, holds [0, 255] pixels instead (values
        above `_PIXELS_THRESHOLD`). The check reads `x` once, before batching."""
        self._check_normalised(x, inspect.currentframe().f_back)
        return super().predict(x, *args, **kwargs)

    def _takes_normalised_images(self):
        """Whether the single input feeds the stem convolution directly."""
        if len(self.inputs) != 1 or len(self.layers) < 2:
            return False
        first = self.layers[1]
        return isinstance(first, keras.layers.Conv2D) and first.input is self.inputs[0]

    def _check_normalised(self, x, caller):
        site = (caller.f_code.co_filename, caller.f_lineno)
        if (
            site in self._range_warned_sites
            or not (isinstance(x, np.ndarray) or ops.is_tensor(x))
            or 0 in x.shape
            or not self._takes_normalised_images()
        ):
            return
        high = float(ops.max(x))
        if high <= _PIXELS_THRESHOLD:
            return
        self._range_warned_sites.add(site)
        warnings.warn(
            f"NFModel '{self.name}' takes mean/std-normalised images (it was built with "
            f"include_preprocessing=False; normalised pixels lie within "
            f"[{_NORMALISED_RANGE[0]:.2f}, {_NORMALISED_RANGE[1]:.2f}]), but the `x` given to "
            f"`predict` holds values up to {high:.4g}, as [0, 255] pixels do. Pass "
            "nfnet_keras.preprocess_input(x), or build the model with "
            "include_preprocessing=True.",
            stacklevel=3,  # the caller of `predict`
        )

    # -- compile -----------------------------------------------------------

    def compile(self, *args, agc_clipping="keep", agc_eps="keep", agc_exclude="keep", **kwargs):
        """`keras.Model.compile`, optionally changing the AGC settings.

        `agc_clipping`, `agc_eps`, `agc_exclude`: as in the constructor;
        left out, the model's current settings are kept.
        """
        new_clipping = self.agc_clipping if agc_clipping == "keep" else agc_clipping
        new_eps = self.agc_eps if agc_eps == "keep" else agc_eps
        _check_clip_arguments(new_clipping, new_eps, allow_none=True)
        self.agc_clipping = None if new_clipping is None else float(new_clipping)
        self.agc_eps = float(new_eps)
        if not (isinstance(agc_exclude, str) and agc_exclude == "keep"):
            self.agc_exclude = self._normalize_exclude(agc_exclude)
        with self._strategy_scope():  # the wrapper's variables too
            if args:  # `optimizer` is the first positional argument of `compile`
                args = (with_agc(args[0]),) + args[1:]
            else:
                kwargs["optimizer"] = with_agc(kwargs.get("optimizer", "rmsprop"))
        super().compile(*args, **kwargs)

    def compile_from_config(self, config):
        # Keras skips compiling on load when `compile` is overridden; this
        # `compile` only adds keyword options, so do what Keras does.
        config = keras.saving.deserialize_keras_object(config)
        self.compile(**config)
        if getattr(self, "optimizer", None) is not None and self.built:
            self.optimizer.build(self.trainable_variables)

    # -- training ----------------------------------------------------------

    @property
    def _agc_state(self):
        return getattr(self, "_agc_state_obj", None)

    def make_train_function(self, force=False):
        backend = keras.backend.backend()
        if backend == "jax":
            self._check_jax_training()
        elif backend != "tensorflow":
            raise NotImplementedError(
                "NFModel's AGC training step is implemented for the TensorFlow and JAX "
                f"backends; the current backend is {backend!r}."
            )
        with self._strategy_scope():
            if self._agc_state is None or not self._agc_state.matches(self):
                object.__setattr__(self, "_agc_state_obj", _AGCState(self))
            if self.optimizer is not None:
                if not self.optimizer.built:
                    self.optimizer.build(self.trainable_variables)
                self._agc_state.install(self)
        return super().make_train_function(force=force)

    def _strategy_scope(self):
        """The model's `tf.distribute` scope on TensorFlow; nothing on JAX,
        whose `keras.distribution` needs no scope."""
        if keras.backend.backend() == "tensorflow":
            return self.distribute_strategy.scope()
        return contextlib.nullcontext()

    def _check_jax_training(self):
        if isinstance(self.optimizer, keras.optimizers.LossScaleOptimizer):
            raise ValueError(
                f"NFModel '{self.name}' cannot train with loss scaling on the JAX backend "
                f"(dtype policy {self.dtype_policy.name!r}, or a LossScaleOptimizer): use the "
                "dtype policy 'float32' or 'mixed_bfloat16' there, or the TensorFlow backend."
            )
        distribution = keras.distribution.distribution()
        if distribution is not None and not isinstance(
            distribution, keras.distribution.DataParallel
        ):
            raise ValueError(
                f"NFModel '{self.name}' trains on the JAX backend on one device or under "
                "`keras.distribution.DataParallel`, not under the distribution "
                f"{type(distribution).__name__}."
            )

    @property
    def metrics_variables(self):
        variables = super().metrics_variables
        if keras.backend.backend() == "jax" and self._agc_state is not None:
            # The JAX trainer carries these variables, and no others, through
            # its stateless step (`_jax_train_step`); the AGC metrics stay out
            # of `metrics`, so that `evaluate` does not report them.
            for metric in self._agc_state.metrics:
                variables.extend(metric.variables)
        return variables

    def reset_metrics(self):
        super().reset_metrics()
        if self._agc_state is not None:
            for metric in self._agc_state.metrics:
                metric.reset_state()

    def train_step(self, *args):
        """The stock Keras step (of the TensorFlow or JAX backend) with a
        global non-finite guard and AGC metrics."""
        if keras.backend.backend() == "jax":
            return self._jax_train_step(*args)
        return self._tf_train_step(*args)

    def _tf_train_step(self, data):
        import tensorflow as tf
        from keras.src.losses.loss import unscale_loss_for_distribution

        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with tf.GradientTape() as tape, _agc_step():
            y_pred = self(x, training=True)
            loss = self.compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight)
            self._loss_tracker.update_state(
                unscale_loss_for_distribution(loss),
                sample_weight=tf.shape(tf.nest.flatten(x)[0])[0],
            )
            loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_variables
        gradients = tape.gradient(loss, variables)
        finite = _finite_on_all_replicas(gradients)
        _apply_if_finite(self.optimizer, gradients, variables, finite)
        logs = self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        state = self._agc_state
        if state is not None:  # None only if train_step is driven by hand
            state.update_metrics(self, finite)
            logs.update({m.name: m.result() for m in state.metrics})
        return logs

    def _jax_train_step(self, state, data):
        """Keras's JAX step (`JAXTrainer.train_step`, stateless) with the
        non-finite guard and the AGC metrics of the TensorFlow step."""
        import jax

        trainable, non_trainable, optimizer_values, metrics_values = state
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        with _agc_step():
            (_, aux), gradients = jax.value_and_grad(self.compute_loss_and_updates, has_aux=True)(
                trainable, non_trainable, metrics_values, x, y, sample_weight,
                training=True, optimizer_variables=optimizer_values,
            )
        unscaled_loss, y_pred, non_trainable, metrics_values = aux
        # The whole batch's gradient, also under `DataParallel` (no replicas to agree).
        finite = ops.all(ops.stack([ops.all(ops.isfinite(g)) for g in gradients]))
        new_trainable, new_optimizer = self.optimizer.stateless_apply(
            optimizer_values, gradients, trainable
        )
        # Skipped unless finite: the old values are kept, optimizer state included.
        trainable = [ops.where(finite, new, old) for new, old in zip(new_trainable, trainable)]
        optimizer_values = [
            ops.where(finite, new, old) for new, old in zip(new_optimizer, optimizer_values)
        ]
        logs, metrics_values = self._update_metrics_variables(
            metrics_values, unscaled_loss, x, y, y_pred, sample_weight
        )
        agc_state = self._agc_state
        if agc_state is None:  # only if train_step is driven by hand
            return logs, (trainable, non_trainable, optimizer_values, metrics_values)
        stats = next(
            value for variable, value in zip(self.optimizer.variables, optimizer_values)
            if variable is agc_state.stats
        )
        mapping = list(zip(self.metrics_variables, metrics_values)) + [(agc_state.stats, stats)]
        with keras.StatelessScope(state_mapping=mapping) as scope:
            agc_state.update_metrics(self, finite)
            logs.update({m.name: m.result() for m in agc_state.metrics})
        metrics_values = [scope.get_current_value(v) for v in self.metrics_variables]
        return logs, (trainable, non_trainable, optimizer_values, metrics_values)


# Legacy `.h5` files name the model class by its bare `__name__` (Keras's
# `legacy/saving/saving_utils.model_metadata`), not by the registered
# "nfnet_keras>NFModel" that the layers inside carry: register that name too,
# so that `keras.models.load_model("m.h5")` needs no `custom_objects`.
keras.saving.get_custom_objects().setdefault(NFModel.__name__, NFModel)


def _finite_on_all_replicas(gradients):
    """True when every gradient of every replica is finite (one all-reduce)."""
    import tensorflow as tf

    local = [tf.reduce_all(tf.math.is_finite(g)) for g in gradients if g is not None]
    bad = tf.cast(tf.logical_not(tf.reduce_all(tf.stack(local))), tf.float32)
    context = tf.distribute.get_replica_context()
    if context is not None and context.num_replicas_in_sync > 1:
        bad = context.all_reduce(tf.distribute.ReduceOp.SUM, bad)
    return tf.equal(bad, 0.0)


def _apply_if_finite(optimizer, gradients, variables, finite):
    """`optimizer.apply`, skipped on every replica alike unless `finite`."""
    import tensorflow as tf

    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        # Keep the optimizer's own overflow handling (skip + halve the scale)
        # but make the first replica, whose gradients it checks, see a
        # non-finite value whenever any replica has one.
        first = next(i for i, g in enumerate(gradients) if g is not None)
        poison = tf.where(finite, 0.0, float("nan"))
        gradients = list(gradients)
        gradients[first] = gradients[first] + tf.cast(poison, gradients[first].dtype)
        optimizer.apply(gradients, variables)
        return

    def apply(grads):
        optimizer.apply(grads, variables)

    if tf.__internal__.distribute.strategy_supports_no_merge_call():
        tf.cond(finite, lambda: apply(gradients), lambda: None)
        return

    # The branch calls `merge_call` (inside `apply`), which is not allowed
    # under a replica-context `cond`: branch in cross-replica context, as
    # Keras's LossScaleOptimizer does.
    def cross_replica(distribution, grads, finite):
        finite = distribution.experimental_local_results(finite)[0]
        tf.cond(
            finite,
            lambda: distribution.extended.call_for_each_replica(apply, args=(grads,)),
            lambda: None,
        )

    tf.distribute.get_replica_context().merge_call(cross_replica, args=(gradients, finite))
