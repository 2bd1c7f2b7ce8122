"""The NF model families: rows (`nfnet`, `nf_resnet`, `nf_regnet`), the one
builder (`builder`) and the registry (`registry`)."""

from nfnet_keras.models.registry import (
    NFNet,
    NFRegNet,
    NFResNet,
    TimmNFRegNet,
    TimmNFResNet,
    constructor,
    get_architecture,
    get_model,
    list_models,
)

NFNetF0 = constructor("nfnet_f0")
NFNetF1 = constructor("nfnet_f1")
NFNetF2 = constructor("nfnet_f2")
NFNetF3 = constructor("nfnet_f3")
NFNetF4 = constructor("nfnet_f4")
NFNetF5 = constructor("nfnet_f5")
NFNetF6 = constructor("nfnet_f6")
NFNetF7 = constructor("nfnet_f7")
NFResNet26 = constructor("nf_resnet26")
NFResNet50 = constructor("nf_resnet50")
NFResNet101 = constructor("nf_resnet101")
NFResNet152 = constructor("nf_resnet152")
NFResNet200 = constructor("nf_resnet200")
NFRegNetB0 = constructor("nf_regnet_b0")
NFRegNetB1 = constructor("nf_regnet_b1")
NFRegNetB2 = constructor("nf_regnet_b2")
NFRegNetB3 = constructor("nf_regnet_b3")
NFRegNetB4 = constructor("nf_regnet_b4")
NFRegNetB5 = constructor("nf_regnet_b5")
TimmNFResNet26 = constructor("timm_nf_resnet26")
TimmNFResNet50 = constructor("timm_nf_resnet50")
TimmNFResNet101 = constructor("timm_nf_resnet101")
TimmNFRegNetB0 = constructor("timm_nf_regnet_b0")
TimmNFRegNetB1 = constructor("timm_nf_regnet_b1")
TimmNFRegNetB2 = constructor("timm_nf_regnet_b2")
TimmNFRegNetB3 = constructor("timm_nf_regnet_b3")
TimmNFRegNetB4 = constructor("timm_nf_regnet_b4")
TimmNFRegNetB5 = constructor("timm_nf_regnet_b5")
NFNetL0 = constructor("nfnet_l0")
ECANFNetL0 = constructor("eca_nfnet_l0")
ECANFNetL1 = constructor("eca_nfnet_l1")
ECANFNetL2 = constructor("eca_nfnet_l2")
ECANFNetL3 = constructor("eca_nfnet_l3")
NFSEResNet26 = constructor("nf_seresnet26")
NFSEResNet50 = constructor("nf_seresnet50")
NFSEResNet101 = constructor("nf_seresnet101")
NFECAResNet26 = constructor("nf_ecaresnet26")
NFECAResNet50 = constructor("nf_ecaresnet50")
NFECAResNet101 = constructor("nf_ecaresnet101")

__all__ = [
    "NFNet", "NFNetF0", "NFNetF1", "NFNetF2", "NFNetF3", "NFNetF4", "NFNetF5", "NFNetF6",
    "NFNetF7", "NFResNet", "NFResNet26", "NFResNet50", "NFResNet101", "NFResNet152",
    "NFResNet200", "NFRegNet", "NFRegNetB0", "NFRegNetB1", "NFRegNetB2", "NFRegNetB3",
    "NFRegNetB4", "NFRegNetB5", "TimmNFResNet", "TimmNFResNet26", "TimmNFResNet50",
    "TimmNFResNet101", "TimmNFRegNet", "TimmNFRegNetB0", "TimmNFRegNetB1", "TimmNFRegNetB2",
    "TimmNFRegNetB3", "TimmNFRegNetB4", "TimmNFRegNetB5", "get_architecture", "get_model",
    "list_models",
    # timm's light NFNets and attention NF-ResNets
    "NFNetL0", "ECANFNetL0", "ECANFNetL1", "ECANFNetL2", "ECANFNetL3", "NFSEResNet26",
    "NFSEResNet50", "NFSEResNet101", "NFECAResNet26", "NFECAResNet50", "NFECAResNet101",
]
