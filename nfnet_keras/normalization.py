"""EvoNorm normalisation-activation layers (Liu, Brock, Simonyan, Le 2020, arXiv:2004.02967).

Batch-independent (S0) and batch-dependent (B0) alternatives to BN-ReLU, for
the normalised baselines next to the NF models (`nfnet_keras.baselines`).
Formulas, defaults and variable names are those of the authors' TensorFlow
reference, tensorflow/tpu `models/official/resnet/resnet_model.py`
(`evonorm`, `_batch_std`, `_instance_std`, `_group_std`; extensions
reference §4). Inputs are NHWC; every variance is the population variance
(ddof 0), ``eps`` sits inside every square root; float16 and bfloat16
inputs are normalised in float32.

Differences from timm's `EvoNorm2dB0` / `EvoNorm2dS0` (NCHW, same formulas):

* timm's B0 default epsilon is 1e-3; the reference's (and ours) is 1e-5;
* timm updates B0's moving variance with the *unbiased* batch variance
  (times n / (n - 1), n = N·H·W) while the reference, Keras's
  `BatchNormalization` and this layer use the biased one; the normalisation
  itself uses the biased variance everywhere, so training outputs agree;
* timm refuses a group count that does not divide the channels; the
  reference silently decrements it until it does; `EvoNormS0` raises.
"""

import keras
from keras import ops

from nfnet_keras.layers import PACKAGE

_LOW_PRECISION = ("float16", "bfloat16")

# tensorflow/tpu `resnet_model.py`: EPSILON = 1e-5, MOVING_AVERAGE_DECAY =
# 0.9, `evonorm(num_groups=32)` (extensions reference §4.3).
EPSILON = 1e-5
MOMENTUM = 0.9
GROUPS = 32


class _EvoNorm(keras.layers.Layer):
    """Shared parts: the per-channel gamma, beta and v, checks, config."""

    def __init__(self, epsilon, apply_act, gamma_initializer, **kwargs):
        super().__init__(**kwargs)
        if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not epsilon > 0:
            raise ValueError(f"`epsilon` must be a positive float. Received: epsilon={epsilon!r}")
        self.epsilon = float(epsilon)
        self.apply_act = bool(apply_act)
        self.gamma_initializer = keras.initializers.get(gamma_initializer)
        self.supports_masking = True

    def build(self, input_shape):
        if len(input_shape) != 4 or input_shape[-1] is None:
            raise ValueError(
                f"{type(self).__name__} expects NHWC inputs of rank 4 with a known channel "
                f"count. Received: input_shape={tuple(input_shape)}"
            )
        channels = int(input_shape[-1])
        self.gamma = self.add_weight(
            name="gamma", shape=(channels,), initializer=self.gamma_initializer
        )
        self.beta = self.add_weight(name="beta", shape=(channels,), initializer="zeros")
        if self.apply_act:
            self.v = self.add_weight(name="v", shape=(channels,), initializer="ones")

    @staticmethod
    def _upcast(inputs):
        """(inputs in the dtype of the statistics, the output dtype)."""
        dtype = keras.backend.standardize_dtype(inputs.dtype)
        return ops.cast(inputs, "float32" if dtype in _LOW_PRECISION else dtype), dtype

    def _affine(self, x, dtype):
        return ops.cast(x * ops.cast(self.gamma, x.dtype) + ops.cast(self.beta, x.dtype), dtype)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "epsilon": self.epsilon,
                "apply_act": self.apply_act,
                "gamma_initializer": keras.initializers.serialize(self.gamma_initializer),
            }
        )
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class EvoNormB0(_EvoNorm):
    """EvoNorm-B0: ``x / max(sqrt(s2_NHW + eps), v*x + sqrt(s2_HW + eps)) * gamma + beta``.

    ``s2_NHW`` is the per-channel batch variance in training and the
    non-trainable ``moving_variance`` at inference; ``s2_HW`` is each
    sample's per-channel variance. Training updates
    ``moving_variance <- moving_variance - (moving_variance - s2_NHW) * (1 - momentum)``
    with the biased batch variance (tensorflow/tpu `_batch_std`). As in the
    reference, statistics are those of each replica (no cross-replica sum).

    Args:
        momentum: decay of the moving variance (0.9, the reference's
            `MOVING_AVERAGE_DECAY`; Keras `BatchNormalization` semantics).
        epsilon: added to every variance (1e-5, the reference's).
        apply_act: `False` gives the reference's ``nonlinearity=False``:
            ``x * gamma + beta`` only, no statistics.
        gamma_initializer: ``"ones"``, or ``"zeros"`` for the reference's
            ``init_zero`` (last layer of a residual branch).
    """

    def __init__(
        self,
        momentum=MOMENTUM,
        epsilon=EPSILON,
        apply_act=True,
        gamma_initializer="ones",
        **kwargs,
    ):
        super().__init__(epsilon, apply_act, gamma_initializer, **kwargs)
        if isinstance(momentum, bool) or not isinstance(momentum, (int, float)) or not (
            0.0 <= momentum < 1.0
        ):
            raise ValueError(f"`momentum` must be a float in [0, 1). Received: momentum={momentum!r}")
        self.momentum = float(momentum)

    def build(self, input_shape):
        super().build(input_shape)
        if self.apply_act:
            self.moving_variance = self.add_weight(
                name="moving_variance",
                shape=(int(input_shape[-1]),),
                initializer="ones",
                trainable=False,
                autocast=False,
            )

    def call(self, inputs, training=False):
        x, dtype = self._upcast(inputs)
        if not self.apply_act:
            return self._affine(x, dtype)
        if training:
            batch_var = ops.var(x, axis=(0, 1, 2))
            moving = ops.convert_to_tensor(self.moving_variance)
            self.moving_variance.assign(
                moving - (moving - ops.cast(batch_var, moving.dtype)) * (1.0 - self.momentum)
            )
        else:
            batch_var = ops.cast(self.moving_variance, x.dtype)
        left = ops.sqrt(batch_var + self.epsilon)
        instance_std = ops.sqrt(ops.var(x, axis=(1, 2), keepdims=True) + self.epsilon)
        right = ops.cast(self.v, x.dtype) * x + instance_std
        return self._affine(x / ops.maximum(left, right), dtype)

    def get_config(self):
        config = super().get_config()
        config["momentum"] = self.momentum
        return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class EvoNormS0(_EvoNorm):
    """EvoNorm-S0: ``x * sigmoid(v*x) / sqrt(s2_group + eps) * gamma + beta``.

    ``s2_group`` is each sample's variance over (H, W, and the C/groups
    channels of its group); groups are contiguous channel blocks. No batch
    statistics and no moving averages: each example's output depends on that
    example alone.

    Args:
        groups: number of channel groups (32, the reference's). It must
            divide the channel count.
        group_size: channels per group instead of `groups` (timm's option).
        epsilon: added to the variance (1e-5, the reference's).
        apply_act: `False` gives ``x * gamma + beta`` only (reference
            ``nonlinearity=False``).
        gamma_initializer: ``"ones"``, or ``"zeros"`` for ``init_zero``.
    """

    def __init__(
        self,
        groups=GROUPS,
        group_size=None,
        epsilon=EPSILON,
        apply_act=True,
        gamma_initializer="ones",
        **kwargs,
    ):
        super().__init__(epsilon, apply_act, gamma_initializer, **kwargs)
        for name, value in (("groups", groups), ("group_size", group_size)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"`{name}` must be a positive integer. Received: {name}={value!r}")
        self.groups = groups
        self.group_size = group_size

    def build(self, input_shape):
        super().build(input_shape)
        channels = int(input_shape[-1])
        if self.group_size is not None:
            if channels % self.group_size:
                raise ValueError(
                    f"`group_size` must divide the channel count {channels}. "
                    f"Received: group_size={self.group_size}"
                )
            self._num_groups = channels // self.group_size
        else:
            if channels % self.groups:
                raise ValueError(
                    f"`groups` must divide the channel count {channels}. "
                    f"Received: groups={self.groups}"
                )
            self._num_groups = self.groups

    def call(self, inputs):
        x, dtype = self._upcast(inputs)
        if not self.apply_act:
            return self._affine(x, dtype)
        shape = ops.shape(x)
        grouped = (shape[0], shape[1], shape[2], self._num_groups, shape[3] // self._num_groups)
        group_var = ops.var(ops.reshape(x, grouped), axis=(1, 2, 4), keepdims=True)
        y = x * ops.sigmoid(ops.cast(self.v, x.dtype) * x)
        y = ops.reshape(ops.reshape(y, grouped) / ops.sqrt(group_var + self.epsilon), shape)
        return self._affine(y, dtype)

    def get_config(self):
        config = super().get_config()
        config.update({"groups": self.groups, "group_size": self.group_size})
        return config
