"""The NFNet paper's optimizer: SGD with PyTorch/DeepMind momentum, L2 decay, EMA.

Keras's `SGD(nesterov=True)` and its `weight_decay` are different algorithms
from the reference's (reference doc §8.4):

* Keras keeps ``v <- mu v - lr g`` and steps ``w <- w + mu v - lr g``;
  deepmind-research `nfnets/optim.py` `SGD` (= `torch.optim.SGD`) keeps
  ``m <- mu m + g`` and steps ``w <- w - lr (g + mu m)``. They agree only
  while the learning rate is constant, and the recipe changes it every step.
* Keras's `weight_decay` is decoupled (``w <- w - lr wd w``, before the
  update, on every variable unless excluded); the reference's is coupled L2
  (``g <- g + wd w`` inside momentum) and skips gains and biases.
* Keras's EMA has no warm-up; the reference's (deepmind-research
  `nfnets/utils.py` `tf1_ema`) uses ``decay_t = min(decay, (1+t)/(10+t))``.

`NFSGD` is the reference's optimizer as a Keras optimizer. With
`NFModel.fit` the AGC of the model runs before its update, as in the
reference's `SGD_AGC` (reference doc §7.4).
"""

import keras
from keras import ops

from nfnet_keras.layers import PACKAGE

# Recipe of deepmind-research `nfnets/experiment_nfnets.py` (reference doc
# §8.1): base learning rate 0.1 (scaled by batch / 256 there), momentum 0.9,
# Nesterov, weight decay 2e-5, EMA decay 0.99999.
DEFAULT_LEARNING_RATE = 0.1
DEFAULT_MOMENTUM = 0.9
DEFAULT_WEIGHT_DECAY = 2e-5
DEFAULT_EMA_DECAY = 0.99999
# Variables without weight decay: names containing "gain" or "bias" (WS
# gains, skip gains, conv and Dense biases), the reference's `gains_biases`
# group (`experiment_nfnets.py` `_make_opt`; reference doc §7.3).
NO_DECAY_NAMES = ("gain", "bias")


def ema_decay(step, decay=DEFAULT_EMA_DECAY, warmup=True):
    """The EMA decay at (0-based) step `step`.

    ``min(decay, (1 + t) / (10 + t))`` with warm-up (deepmind-research
    `nfnets/utils.py` `tf1_ema`, TF1 `ExponentialMovingAverage` with
    `num_updates`), else `decay`.
    """
    decay = ops.convert_to_tensor(decay, "float32")
    if not warmup:
        return decay
    t = ops.cast(step, "float32")
    return ops.minimum(decay, (1.0 + t) / (10.0 + t))


@keras.saving.register_keras_serializable(package=PACKAGE)
class NFSGD(keras.optimizers.Optimizer):
    """SGD with PyTorch/DeepMind momentum, coupled L2 decay and warm-up EMA.

    Update of deepmind-research `nfnets/optim.py` `SGD` (reference doc §8.1),
    per variable, with ``g`` the (clipped) gradient and ``lr`` the learning
    rate of this step::

        g <- g + weight_decay * w          (unless excluded, see below)
        m <- momentum * m + g              (m starts at 0, no dampening)
        w <- w - lr * (g + momentum * m)   (nesterov=True)
        w <- w - lr * m                    (nesterov=False)

    Weight decay skips variables whose name contains "gain" or "bias"
    (the reference's rule); `exclude_from_weight_decay(var_list=...,
    var_names=...)` replaces that rule (include "gain" and "bias" in
    `var_names` to keep it).

    With ``use_ema=True`` the optimizer keeps an exponential moving average
    of the trainable variables, starting from their values when the
    optimizer is built (the reference initialises its EMA copy with the
    initial parameters), updated after every applied step ``t = 0, 1, ...``
    as ``ema <- d * ema + (1 - d) * w`` with
    ``d = min(ema_momentum, (1 + t) / (10 + t))`` (``ema_warmup=True``) or
    ``d = ema_momentum``. Keras's conventions apply: evaluate with the EMA
    through `keras.callbacks.SwapEMAWeights`, write it into the model with
    `optimizer.finalize_variable_values(model.trainable_variables)` before
    saving or exporting (`fit` does this itself at its end when
    `use_ema=True`), and read it in `optimizer._model_variables_moving_average`.

    Args:
        learning_rate: a float or a `keras.optimizers.schedules` schedule
            (called with the 0-based step, as the reference's schedule is).
            Default 0.1.
        momentum: float in [0, 1). Default 0.9.
        nesterov: whether to use Nesterov momentum. Default `True`.
        weight_decay: coupled L2 factor, or `None`. Default 2e-5.
        use_ema: keep the EMA of the weights. Default `False` (Keras's
            default; the paper's recipe evaluates the EMA).
        ema_momentum: the EMA decay. Default 0.99999 (the paper's).
        ema_warmup: use the reference's warm-up of the decay. Default `True`.
        **kwargs: other `keras.optimizers.Optimizer` arguments (`clipnorm`,
            `gradient_accumulation_steps`, `loss_scale_factor`, `name`, ...).
    """

    def __init__(
        self,
        learning_rate=DEFAULT_LEARNING_RATE,
        momentum=DEFAULT_MOMENTUM,
        nesterov=True,
        weight_decay=DEFAULT_WEIGHT_DECAY,
        use_ema=False,
        ema_momentum=DEFAULT_EMA_DECAY,
        ema_warmup=True,
        name="nfsgd",
        **kwargs,
    ):
        super().__init__(
            learning_rate=learning_rate,
            weight_decay=weight_decay,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            name=name,
            **kwargs,
        )
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not (
            0 <= momentum < 1
        ):
            raise ValueError(f"`momentum` must be a float in [0, 1). Received: momentum={momentum!r}")
        if weight_decay is not None and (
            isinstance(weight_decay, bool)
            or not isinstance(weight_decay, (int, float))
            or weight_decay < 0
        ):
            raise ValueError(
                "`weight_decay` must be None or a non-negative float. "
                f"Received: weight_decay={weight_decay!r}"
            )
        self.momentum = float(momentum)
        self.nesterov = bool(nesterov)
        self.ema_warmup = bool(ema_warmup)
        self.exclude_from_weight_decay(var_names=list(NO_DECAY_NAMES))

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = []
        if self.momentum != 0:
            self.momentums = self.add_optimizer_variables(variables, "momentum")
        # Decided once, on the Keras variables (short names such as "bias");
        # `update_step` receives backend variables.
        self._decay_flags = [
            bool(self.weight_decay) and self._use_weight_decay(v) for v in variables
        ]
        if self.use_ema:
            for variable, average in zip(variables, self._model_variables_moving_average):
                average.assign(variable)

    def _apply_weight_decay(self, variables):
        # Keras's decoupled decay is replaced by the coupled L2 term of
        # `update_step`.
        return

    def update_step(self, gradient, variable, learning_rate):
        dtype = variable.dtype
        lr = ops.cast(learning_rate, dtype)
        g = ops.cast(gradient, dtype)
        index = self._get_variable_index(variable)
        if self._decay_flags[index]:
            g = ops.add(g, ops.multiply(ops.cast(self.weight_decay, dtype), variable))
        if self.momentum != 0:
            mu = ops.cast(self.momentum, dtype)
            m = self.momentums[index]
            m_new = ops.add(ops.multiply(mu, m), g)
            self.assign(m, m_new)
            step = ops.add(g, ops.multiply(mu, m_new)) if self.nesterov else m_new
        else:
            step = g
        self.assign_sub(variable, ops.multiply(lr, step))

    def _update_model_variables_moving_average(self, trainable_variables):
        if not self.use_ema:
            return
        decay = ema_decay(self.iterations, self.ema_momentum, self.ema_warmup)
        for variable, average in zip(trainable_variables, self._model_variables_moving_average):
            if average is None:
                continue
            d = ops.cast(decay, average.dtype)
            average.assign(ops.add(ops.multiply(d, average), ops.multiply(1.0 - d, variable)))

    def get_config(self):
        config = super().get_config()
        config.update(
            {"momentum": self.momentum, "nesterov": self.nesterov, "ema_warmup": self.ema_warmup}
        )
        return config
