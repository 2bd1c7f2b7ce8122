"""Adaptive Gradient Clipping and the model class whose `fit` applies it."""

import keras

from nfnet_keras.layers import PACKAGE


@keras.saving.register_keras_serializable(package=PACKAGE)
class NFModel(keras.Model):
    """A functional Keras model of the NF family."""

    def __init__(self, *args, agc_clipping=0.01, **kwargs):
        super().__init__(*args, **kwargs)
        self.agc_clipping = agc_clipping
