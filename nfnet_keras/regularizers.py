"""Filter orthogonality regularizers (BigGAN; Neural Photo Editor).

Keras's own `keras.regularizers.OrthogonalRegularizer` is a different
penalty: it takes rank-2 kernels only (a `Conv2D` kernel raises), L2-normalises
the rows or columns and returns ``factor`` times the mean absolute cosine
similarity over pairs -- an angular, scale-free decorrelation of `Dense`
units (extensions reference §6.3). Use it for that; use `FilterOrthogonal`
for the papers' penalties on convolution and dense kernels.
"""

import keras
from keras import ops

from nfnet_keras.layers import PACKAGE

MODES = ("biggan", "npe")
# BigGAN's coefficient ("1e-4 is default for BigGAN", ajbrock/BigGAN-PyTorch
# `utils.py`; paper §3.1 as recalled, extensions reference §6.2).
BIGGAN_BETA = 1e-4


@keras.saving.register_keras_serializable(package=PACKAGE)
class FilterOrthogonal(keras.regularizers.Regularizer):
    """Penalises non-orthogonal filters of a convolution or dense kernel.

    The kernel is reshaped to a matrix ``W`` of shape ``(fan_in, filters)``
    (Keras layouts put the output unit last: ``(in, units)``, ``(kh, kw,
    in, out)``, ...), so that its columns are the filters, and
    ``G = W^T W`` is their Gram matrix:

    * ``mode="biggan"``: ``beta * ||G ⊙ (1 - I)||_F^2`` -- BigGAN's modified
      orthogonal regularization (Brock, Donahue, Simonyan 2019, §3.1): only
      the pairwise inner products of distinct filters are penalised, their
      norms are free. Its gradient, ``4 beta W (G ⊙ (1 - I))`` in this
      layout, is twice the one BigGAN-PyTorch adds to ``.grad`` by hand
      (`utils.ortho`, which differentiates half the penalty).
    * ``mode="npe"``: ``beta * sum |G - I|`` -- the L1 penalty printed in
      the Neural Photo Editor paper (Brock et al. 2017, §3.4), which also
      pulls every filter to unit norm. The paper's reference code
      (`train_IAN.py`, ``ortho_res``) applies it per filter to the kernel's
      rows instead (a kh x kh Gram per output filter); this class
      implements the printed form over filters.

    Both are 0 for orthonormal filters. Attach with
    ``Conv2D(..., kernel_regularizer=FilterOrthogonal(1e-4))``.

    Args:
        beta: the coefficient (1e-4, BigGAN's default; NPE used 1e-3).
        mode: ``"biggan"`` or ``"npe"``.
    """

    def __init__(self, beta=BIGGAN_BETA, mode="biggan"):
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not beta >= 0:
            raise ValueError(f"`beta` must be a non-negative float. Received: beta={beta!r}")
        if mode not in MODES:
            raise ValueError(f"`mode` must be one of {MODES}. Received: mode={mode!r}")
        self.beta = float(beta)
        self.mode = mode

    def __call__(self, kernel):
        shape = tuple(kernel.shape)
        if len(shape) < 2:
            raise ValueError(
                "FilterOrthogonal regularizes kernels of rank >= 2 with the filters on the "
                f"last axis. Received a tensor of shape {shape}."
            )
        w = ops.reshape(ops.cast(kernel, "float32"), (-1, shape[-1]))
        gram = ops.matmul(ops.transpose(w), w)
        eye = ops.eye(shape[-1], dtype="float32")
        if self.mode == "biggan":
            penalty = ops.sum(ops.square(gram * (1.0 - eye)))
        else:
            penalty = ops.sum(ops.abs(gram - eye))
        return self.beta * penalty

    def get_config(self):
        return {"beta": self.beta, "mode": self.mode}
