"""The NF model families and a name -> constructor lookup."""

from nfnet_keras.models import nf_regnet, nf_resnet, nfnet, timm_variants


def _table():
    table = {}
    for variant in nfnet.VARIANTS:
        table[f"nfnet_{variant.lower()}"] = _bind(
            nfnet.NFNet, variant, nfnet.VARIANTS[variant].test_size
        )
    for variant in nf_resnet.VARIANTS:
        table[f"nf_resnet{variant}"] = _bind(nf_resnet.NFResNet, variant, nf_resnet.TEST_SIZE)
    for variant in nf_regnet.VARIANTS:
        table[f"nf_regnet_{variant.lower()}"] = _bind(
            nf_regnet.NFRegNet, variant, nf_regnet.VARIANTS[variant].test_size
        )
    # timm's own NF-ResNet / NF-RegNet architectures (timm-trained weights).
    for variant, row in timm_variants.RESNET_VARIANTS.items():
        table[f"timm_nf_resnet{variant}"] = _bind(
            timm_variants.TimmNFResNet, variant, row.test_size
        )
    for variant, row in timm_variants.REGNET_VARIANTS.items():
        table[f"timm_nf_regnet_{variant.lower()}"] = _bind(
            timm_variants.TimmNFRegNet, variant, row.test_size
        )
    return table


def _bind(builder, variant, default_size):
    def constructor(**kwargs):
        return builder(variant, **kwargs)

    constructor.__name__ = f"{builder.__name__}_{variant}"
    constructor.default_size = default_size  # the row's test resolution
    return constructor


MODELS = _table()


def get_model(name, **kwargs):
    """Builds a model by its name: ``"nfnet_f0"``, ``"nf_resnet50"``,
    ``"nf_regnet_b0"``, ``"timm_nf_resnet50"``, ``"timm_nf_regnet_b1"``, ...
    (``"nfnet_tiny"`` etc. are the test rows)."""
    if name not in MODELS:
        raise ValueError(
            f"Unknown model name. Expected one of {sorted(MODELS)}. "
            f"Received: name={name!r}"
        )
    return MODELS[name](**kwargs)


def default_size(name):
    """The default input side of a model name (its row's test resolution)."""
    if name not in MODELS:
        raise ValueError(
            f"Unknown model name. Expected one of {sorted(MODELS)}. "
            f"Received: name={name!r}"
        )
    return MODELS[name].default_size
