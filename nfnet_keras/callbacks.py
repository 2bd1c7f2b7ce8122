"""FreezeOut (Brock, Lim, Ritchie, Weston 2017, arXiv:1706.04983) as a Keras callback.

Each layer group i -- the stem, every residual block, the head -- is trained
until the fraction ``t_i`` of the run, with its own cosine-annealed learning
rate, then frozen and taken out of the backward pass, earliest first. The
schedule is that of ajbrock/FreezeOut (`utils.py`, `densenet.py`, `WRN.py`;
extensions reference §5):

* ``t_i = s(t0 + (1 - t0) * i / L)``, groups ``i = 0 ... L`` (the head has
  ``t_L = 1``), ``s(u) = u``, ``u**2`` or ``u**3`` (``scaling``); t0 is
  "pre-cubed": cubic with ``t0 = 0.8`` freezes the stem at 0.512;
* ``lr_i(t) = lr * m_i(t)`` with ``m_i(t) = c_i * (1 + cos(pi * t / t_i)) / 2``
  for ``t < t_i``, updated every step, where ``c_i = 1 / t_i`` when
  ``scale_lr`` (equal area under every group's curve) and 1 otherwise;
* at ``t >= t_i`` the group's layers get ``trainable = False``: their
  variables leave the gradient tape (so TensorFlow prunes the backward pass
  through the frozen prefix), the optimizer update and weight decay; the
  train function is rebuilt once per freeze.

``lr`` is the compiled optimizer's learning rate: compile with a constant
learning rate (the reference's 0.1) to get the reference schedule; a Keras
schedule multiplies with it. The per-group rate is applied by scaling the
learning rate the optimizer's `update_step` receives, per variable --
exact for optimizers whose update is linear in the learning rate given
their state (`NFSGD`, i.e. PyTorch's SGD as the reference used, Adam, ...),
not for Keras's own `SGD(momentum>0)`, which folds the learning rate into
its momentum. It composes with `NFModel`'s AGC and with loss scaling, which
call that `update_step` (clipping does not depend on the learning rate).
"""

import math
import re

import keras
import numpy as np
from keras import ops

SCALINGS = {"linear": 1, "squared": 2, "cubic": 3}
# ajbrock/FreezeOut `train.py` defaults: t_0 = 0.8, cubic scaling, scaled
# learning rates (extensions reference §5.2).
DEFAULT_T0 = 0.8
_BLOCK = re.compile(r"^stage(\d+)_block(\d+)_")


def freeze_points(num_groups, t0=DEFAULT_T0, scaling="cubic"):
    """``t_i`` for groups ``0 ... num_groups - 1`` (the last is 1)."""
    _check_schedule(t0, scaling)
    if not isinstance(num_groups, int) or num_groups < 2:
        raise ValueError(f"`num_groups` must be an integer >= 2. Received: num_groups={num_groups!r}")
    last = num_groups - 1
    power = SCALINGS[scaling]
    return [(t0 + (1 - t0) * i / last) ** power for i in range(num_groups)]


def lr_multiplier(t, t_i, scale_lr=True):
    """``m_i(t)``: the factor of the learning rate of a group frozen at ``t_i``."""
    if t >= t_i:
        return 0.0
    scale = 1.0 / t_i if scale_lr else 1.0
    return scale * 0.5 * (1.0 + math.cos(math.pi * t / t_i))


def _check_schedule(t0, scaling):
    if isinstance(t0, bool) or not isinstance(t0, (int, float)) or not 0 < t0 <= 1:
        raise ValueError(f"`t0` must be a float in (0, 1]. Received: t0={t0!r}")
    if scaling not in SCALINGS:
        raise ValueError(f"`scaling` must be one of {tuple(SCALINGS)}. Received: scaling={scaling!r}")


def layer_groups(model):
    """The default groups: stem, one per ``stage{s}_block{b}_`` block, head.

    Layers without variables are left out; layers outside the blocks belong
    to the stem before the first block and to the head after it.
    """
    stem, blocks, head = [], {}, []
    for layer in model.layers:
        if not layer.weights:
            continue
        match = _BLOCK.match(layer.name)
        if match:
            blocks.setdefault(match.group(0), []).append(layer)
        elif blocks:
            head.append(layer)
        else:
            stem.append(layer)
    if not blocks:
        raise ValueError(
            f"Model {model.name!r} has no layers named 'stage{{s}}_block{{b}}_*'; pass "
            "`groups=` (lists of layers or layer names, first frozen first)."
        )
    return [g for g in [stem, *blocks.values(), head] if g]


def forward_flops(layers):
    """Multiply-adds x 2 of the convolutions and dense layers among `layers`."""
    total = 0
    for layer in layers:
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin_per_group, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += 2 * h * w * kh * kw * cin_per_group * cout
        elif isinstance(layer, keras.layers.Dense):
            total += 2 * int(np.prod(layer.kernel.shape))
    return total


def _innermost(optimizer):
    """The optimizer that updates the variables, inside loss scaling and
    `AGCOptimizer` (both call its `update_step` per variable)."""
    while getattr(optimizer, "inner_optimizer", None) is not None:
        optimizer = optimizer.inner_optimizer
    return optimizer


class _ScaledUpdateStep:
    """An optimizer's `update_step` with the learning rate times a per-variable factor."""

    def __init__(self, optimizer, update_step, multipliers, index):
        self.optimizer = optimizer
        self.inner = update_step
        self.multipliers = multipliers
        self.index = index  # optimizer var key -> group

    def __call__(self, gradient, variable, learning_rate):
        group = self.index.get(self.optimizer._var_key(variable))
        if group is not None:
            factor = ops.cast(self.multipliers[group], learning_rate.dtype)
            learning_rate = learning_rate * factor
        return self.inner(gradient, variable, learning_rate)


class FreezeOut(keras.callbacks.Callback):
    """Freezes the network group by group with per-group cosine learning rates.

    See the module docstring for the schedule. Use with `model.fit` and a
    known number of steps per epoch. At the end of `fit` the layers'
    `trainable` flags and the optimizer are restored, so the model can be
    saved or trained further as usual.

    Args:
        t0: the stem's freezing point before scaling (0.8, the reference's).
        scaling: ``"linear"``, ``"squared"`` or ``"cubic"`` (default).
        scale_lr: start each group at ``lr / t_i`` (default `True`).
        groups: lists of layers or layer names, frozen in this order; by
            default the stem, each residual block and the head.
        verbose: 1 prints each freeze.

    Attributes:
        freeze_steps: after `fit` starts, the step at which each group
            freezes (a step never reached leaves it trainable).
        frozen_at: the steps at which freezes actually happened.

    Example:
    >>> model.compile(optimizer=nfnet_keras.NFSGD(0.1), loss=...)
    >>> model.fit(dataset, epochs=100, callbacks=[FreezeOut()])
    """

    def __init__(self, t0=DEFAULT_T0, scaling="cubic", scale_lr=True, groups=None, verbose=0):
        super().__init__()
        _check_schedule(t0, scaling)
        self.t0 = float(t0)
        self.scaling = scaling
        self.scale_lr = bool(scale_lr)
        self.groups = groups
        self.verbose = verbose
        self._multipliers = None

    # -- set-up ----------------------------------------------------------------

    def _resolve_groups(self):
        if self.groups is None:
            return layer_groups(self.model)
        resolved = []
        for group in self.groups:
            resolved.append(
                [self.model.get_layer(g) if isinstance(g, str) else g for g in group]
            )
        if len(resolved) < 2:
            raise ValueError(f"`groups` must hold at least 2 groups. Received {len(resolved)}.")
        return resolved

    def predicted_saving(self):
        """The reference's estimate (`utils.calc_speedup`) of the saved compute.

        ``1 - (sum c_i + sum c_i t_i) / (2 sum c_i)``, with ``c_i`` a group's
        forward FLOPs and the backward pass costed as one forward pass. With
        the backward at twice the forward (input and weight gradients) the
        estimate is ``1 - (sum c_i + 2 sum c_i t_i) / (3 sum c_i)``; both are
        returned, in that order.
        """
        groups = self._resolve_groups()
        flops = np.array([forward_flops(g) for g in groups], np.float64)
        t = np.array(freeze_points(len(groups), self.t0, self.scaling))
        total = flops.sum()
        return (
            1 - (total + (flops * t).sum()) / (2 * total),
            1 - (total + 2 * (flops * t).sum()) / (3 * total),
        )

    def on_train_begin(self, logs=None):
        steps, epochs = self.params.get("steps"), self.params.get("epochs")
        if not steps or not epochs:
            raise ValueError(
                "FreezeOut needs the number of steps of the run: give `fit` a dataset of "
                f"known length or `steps_per_epoch`. Received: steps={steps!r}, epochs={epochs!r}"
            )
        if _innermost(self.model.optimizer).use_ema:
            raise ValueError(
                "FreezeOut does not support optimizers with `use_ema=True`: Keras pairs the EMA "
                "slots with the trainable variables by position, which freezing shifts."
            )
        self._groups = self._resolve_groups()
        self._total_steps = steps * epochs
        self._points = freeze_points(len(self._groups), self.t0, self.scaling)
        self.freeze_steps = [math.ceil(t * self._total_steps) for t in self._points]
        self.frozen_at = []
        self._frozen = 0
        self._step = 0
        self._was_trainable = [[layer.trainable for layer in g] for g in self._groups]
        with self.model.distribute_strategy.scope():
            self._multipliers = keras.Variable(
                np.ones(len(self._groups), "float32"), trainable=False,
                name="freezeout_lr_multipliers",
            )
        self._install()

    def _install(self):
        optimizer = _innermost(self.model.optimizer)
        if isinstance(optimizer.update_step, _ScaledUpdateStep):
            return
        index = {
            optimizer._var_key(v): i
            for i, group in enumerate(self._groups)
            for layer in group
            for v in layer.trainable_weights
        }
        optimizer.update_step = _ScaledUpdateStep(
            optimizer, optimizer.update_step, self._multipliers, index
        )

    # -- schedule ----------------------------------------------------------------

    def on_train_batch_begin(self, batch, logs=None):
        t = self._step / self._total_steps
        freeze = self._frozen
        while freeze < len(self._groups) and self._step >= self.freeze_steps[freeze]:
            freeze += 1
        if freeze > self._frozen:
            for group in self._groups[self._frozen : freeze]:
                for layer in group:
                    layer.trainable = False
            if self.verbose:
                print(f"FreezeOut: step {self._step}: groups {self._frozen}..{freeze - 1} frozen")
            self._frozen = freeze
            self.frozen_at.append(self._step)
            self.model.make_train_function(force=True)
        self._multipliers.assign(
            np.array([lr_multiplier(t, t_i, self.scale_lr) for t_i in self._points], "float32")
        )

    def on_train_batch_end(self, batch, logs=None):
        self._step += 1

    def on_train_end(self, logs=None):
        for group, flags in zip(self._groups, self._was_trainable):
            for layer, flag in zip(group, flags):
                layer.trainable = flag
        optimizer = _innermost(self.model.optimizer)
        if isinstance(optimizer.__dict__.get("update_step"), _ScaledUpdateStep):
            del optimizer.update_step  # back to the class's method
        self.model.make_train_function(force=True)
