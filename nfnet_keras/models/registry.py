"""The model registry: every architecture row, by name, and its constructor.

Names are fields of the rows (`Architecture.name`, `Checkpoint.name`); the
constructors, `get_model`, the trainer's recipes, the weights loader, the
export, the model card and the benchmarks look rows up here and never take
a name apart.
"""

from nfnet_keras.models import builder, nf_regnet, nf_resnet, nfnet
from nfnet_keras.weights import rows as checkpoint_rows

ARCHITECTURES = {row.name: row for row in nfnet.ROWS + nf_resnet.ROWS + nf_regnet.ROWS}
_CONSTRUCTORS = {
    name: builder.make_constructor(
        row, [checkpoint.name for checkpoint in checkpoint_rows.checkpoints(name)]
    )
    for name, row in ARCHITECTURES.items()
}


def list_models(pretrained=False):
    """The public model names, sorted; with `pretrained=True` only those with
    published ImageNet weights. Test rows are not listed."""
    return sorted(
        name
        for name, row in ARCHITECTURES.items()
        if row.public and (not pretrained or checkpoint_rows.checkpoints(name))
    )


def get_architecture(name):
    """The `Architecture` row called `name` (test rows included)."""
    if not isinstance(name, str) or name not in ARCHITECTURES:
        raise ValueError(
            f"Unknown model name {name!r}. Expected one of {list_models()}. "
            f"Received: name={name!r}"
        )
    return ARCHITECTURES[name]


def constructor(name):
    """The keras.applications-style constructor of a model name."""
    return _CONSTRUCTORS[get_architecture(name).name]


def get_model(name, **kwargs):
    """Builds a model by its name (`list_models()`), e.g. ``"nfnet_f0"``,
    ``"nf_resnet50"``, ``"timm_nf_regnet_b1"``; keyword arguments are the
    constructor's (``weights=None`` for random initialisation)."""
    return constructor(name)(**kwargs)


def _family_builder(family, convention, public_name):
    rows = {
        row.variant: row
        for row in ARCHITECTURES.values()
        if row.family == family and row.convention == convention
    }

    def build_family(variant, **kwargs):
        if variant not in rows:
            raise ValueError(
                f"`variant` must be one of {sorted(rows)}. Received: variant={variant!r}"
            )
        return _CONSTRUCTORS[rows[variant].name](**kwargs)

    build_family.__name__ = build_family.__qualname__ = public_name
    build_family.__doc__ = (
        f"Builds a {family} ({convention} convention) by its variant "
        f"({', '.join(map(repr, rows))}); keyword arguments are the constructors'."
    )
    return build_family


NFNet = _family_builder("nfnet", "deepmind", "NFNet")
NFResNet = _family_builder("nf_resnet", "deepmind", "NFResNet")
NFRegNet = _family_builder("nf_regnet", "deepmind", "NFRegNet")
TimmNFResNet = _family_builder("nf_resnet", "timm", "TimmNFResNet")
TimmNFRegNet = _family_builder("nf_regnet", "timm", "TimmNFRegNet")
