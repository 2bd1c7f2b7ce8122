"""nfnet_keras: Normalizer-Free networks for Keras 3."""

from nfnet_keras import analysis, baselines, callbacks, layers, optimizers, regularizers
from nfnet_keras.folding import fold_for_inference
from nfnet_keras.agc import NFModel, adaptive_clip, unitwise_norm
from nfnet_keras.imagenet_utils import decode_predictions, preprocess_input
from nfnet_keras.callbacks import FreezeOut
from nfnet_keras.layers import (
    GammaAct,
    PerGroupConv2D,
    ScaledStdConv2D,
    SkipGain,
    SqueezeExcite,
    StdConv2D,
    StochasticDepth,
)
from nfnet_keras.normalization import EvoNormB0, EvoNormS0
from nfnet_keras.regularizers import FilterOrthogonal
from nfnet_keras.optimizers import NFSGD
from nfnet_keras.models.nfnet import (
    NFNet,
    NFNetF0,
    NFNetF1,
    NFNetF2,
    NFNetF3,
    NFNetF4,
    NFNetF5,
    NFNetF6,
    NFNetF7,
)
from nfnet_keras.models.nf_regnet import (
    NFRegNet,
    NFRegNetB0,
    NFRegNetB1,
    NFRegNetB2,
    NFRegNetB3,
    NFRegNetB4,
    NFRegNetB5,
)
from nfnet_keras.models.nf_resnet import (
    NFResNet,
    NFResNet26,
    NFResNet50,
    NFResNet101,
    NFResNet152,
    NFResNet200,
)
from nfnet_keras.models.timm_variants import (
    TimmNFRegNet,
    TimmNFRegNetB0,
    TimmNFRegNetB1,
    TimmNFRegNetB2,
    TimmNFRegNetB3,
    TimmNFRegNetB4,
    TimmNFRegNetB5,
    TimmNFResNet,
    TimmNFResNet26,
    TimmNFResNet50,
    TimmNFResNet101,
)
from nfnet_keras.models import MODELS, get_model

__version__ = "0.1.0"
