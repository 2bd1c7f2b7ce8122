"""`from_preset`: a pretrained NF model, with a fresh head, ready to fine-tune.

KerasHub's `ImageClassifier.from_preset(name, num_classes=...)` and timm's
`create_model(name, pretrained=True, num_classes=...)` in one call.
"""

from nfnet_keras.agc import NFModel
from nfnet_keras.models import builder, registry
from nfnet_keras.weights import rows as checkpoint_rows

# The classes of every published checkpoint: ImageNet-1k.
PRETRAINED_CLASSES = 1000
_RESERVED = ("include_top", "classes", "pooling", "weights", "input_tensor")


def from_preset(name, num_classes=None, weights="imagenet", **kwargs):
    """Builds a pretrained NF model for fine-tuning.

    Args:
        name: a model name (`list_models()`, e.g. ``"nfnet_f0"``) or a
            checkpoint name (``"nfnet_f0.timm"``, ``"timm_nf_resnet50.ra2_in1k"``).
        num_classes: `None` keeps the checkpoint's 1000-class ImageNet head;
            another number replaces it by a fresh `predictions` layer of that
            width (the row's classifier initialisation), after the row's
            dropout.
        weights: ``"imagenet"`` (the named checkpoint, or the architecture's
            preferred one, downloaded once), the path or URL of a 1000-class
            weights file in any supported format (works offline), or `None`
            (random initialisation).
        **kwargs: other constructor arguments (`input_shape`, `dropout_rate`,
            `stochastic_depth_rate`, `convention`, `agc_clipping`,
            `classifier_activation` (default `None`: logits), `name`,
            `remat`, ...).

    Returns:
        An `NFModel` taking RGB images with pixels in [0, 255] (the
        normalisation is inside), returning logits; `compile` and `fit` it.
        `model.pretrained_cfg` holds the checkpoint's metadata.
    """
    if not isinstance(name, str):
        raise ValueError(f"`name` must be a model or checkpoint name. Received: name={name!r}")
    named = [row for row in checkpoint_rows.CHECKPOINTS if row.name == name]
    arch = registry.get_architecture(named[0].architecture if named else name)
    for key in _RESERVED:
        if key in kwargs:
            raise ValueError(
                f"`from_preset` sets `{key}` itself; use `num_classes` and `weights`. "
                f"Received: {key}={kwargs[key]!r}"
            )
    if num_classes is not None and (
        not isinstance(num_classes, int) or isinstance(num_classes, bool) or num_classes < 1
    ):
        raise ValueError(
            f"`num_classes` must be None or a positive integer. Received: num_classes={num_classes!r}"
        )
    if named and weights == "imagenet":
        weights = named[0].name
    kwargs.setdefault("classifier_activation", None)
    kwargs.setdefault("include_preprocessing", True)
    model = registry.constructor(arch.name)(
        include_top=True, classes=PRETRAINED_CLASSES, weights=weights, **kwargs
    )
    if num_classes in (None, PRETRAINED_CLASSES):
        return model
    head = model.get_layer("predictions")
    outputs = builder.classifier(
        num_classes,
        kwargs["classifier_activation"],
        builder.CLASSIFIER_INITIALIZERS[arch.classifier_initializer](),
    )(head.input)
    cfg = dict(model.pretrained_cfg, num_classes=num_classes)
    return NFModel(
        model.input,
        outputs,
        name=model.name,
        agc_clipping=model.agc_clipping,
        agc_eps=model.agc_eps,
        pretrained_cfg=cfg,
        pyramid_layers=model.pyramid_layers,
        remat=model.remat,
    )
