"""The NF model families and a name -> constructor lookup."""

from nfnet_keras.models import nf_regnet, nf_resnet, nfnet


def _table():
    table = {}
    for variant in nfnet.VARIANTS:
        table[f"nfnet_{variant.lower()}"] = _bind(nfnet.NFNet, variant)
    for variant in nf_resnet.VARIANTS:
        table[f"nf_resnet{variant}"] = _bind(nf_resnet.NFResNet, variant)
    for variant in nf_regnet.VARIANTS:
        table[f"nf_regnet_{variant.lower()}"] = _bind(nf_regnet.NFRegNet, variant)
    return table


def _bind(builder, variant):
    def constructor(**kwargs):
        return builder(variant, **kwargs)

    constructor.__name__ = f"{builder.__name__}_{variant}"
    return constructor


MODELS = _table()


def get_model(name, **kwargs):
    """Builds a model by its name: ``"nfnet_f0"``, ``"nf_resnet50"``,
    ``"nf_regnet_b0"``, ... (``"nfnet_tiny"`` etc. are the test rows)."""
    if name not in MODELS:
        raise ValueError(
            f"Unknown model name. Expected one of {sorted(MODELS)}. "
            f"Received: name={name!r}"
        )
    return MODELS[name](**kwargs)
