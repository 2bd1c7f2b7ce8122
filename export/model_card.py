"""Model cards (TF Hub documentation style) and Kaggle Models metadata."""

import dataclasses
import os
import string

from nfnet_keras.imagenet_utils import RESIZED_PIXEL_RANGE
from nfnet_keras.models import registry
from nfnet_keras.weights import rows as checkpoint_rows

_TEMPLATE = os.path.join(os.path.dirname(__file__), "templates", "model_card.md")

_NFNET_CITATION = """@article{brock2021high,
  author={Andrew Brock and Soham De and Samuel L. Smith and Karen Simonyan},
  title={High-Performance Large-Scale Image Recognition Without Normalization},
  journal={arXiv preprint arXiv:2102.06171},
  year={2021}
}"""
_NF_CITATION = """@inproceedings{brock2021characterizing,
  author={Andrew Brock and Soham De and Samuel L. Smith},
  title={Characterizing signal propagation to close the performance gap in
  unnormalized ResNets},
  booktitle={9th International Conference on Learning Representations, {ICLR}},
  year={2021}
}"""
_LICENSE_IDS = {"apache 2.0": "apache-2.0", "cc by 4.0": "cc-by-4.0", "mit": "mit"}


@dataclasses.dataclass
class ModelInfo:
    """What the card and the metadata say about one export."""

    model: str
    output: str
    image_size: int
    classes: int
    num_features: int
    params: int
    transform: object = None  # the `serving_bytes` EvalTransform
    weights: str = None  # weights file name, None for random initialisation
    ema: bool = False
    folded: bool = False
    handle: str = "OWNER/nfnet/tensorFlow2/variation"
    license_name: str = "Apache 2.0"


def _published(model):
    """(architecture row, preferred checkpoint row or None) of a model name."""
    arch = registry.get_architecture(model)
    rows = checkpoint_rows.checkpoints(arch.name)
    return arch, (rows[0] if rows else None)


def render(info):
    """The model card (Markdown) of an export."""
    arch, published = _published(info.model)
    title = arch.title
    is_nfnet = arch.family == "nfnet"
    classification = info.output == "classification"
    publisher, _, rest = info.handle.partition("/")
    slug = rest.split("/")[0] + "/" + rest.split("/")[-1] if rest else info.model
    if info.weights is None:
        weights_note = "random initialisation (structure only; not for inference)"
        metrics = "None: this export holds randomly initialised weights."
        training_data = "None: this export holds randomly initialised weights."
    else:
        weights_note = f"`{info.weights}`" + (
            " (exponential moving average of the parameters)" if info.ema else ""
        )
        training_data = (
            "ImageNet ILSVRC-2012 (1,281,167 training images, 1000 classes) for the "
            "published checkpoints; for other weights, see their provenance."
        )
        if published:
            size = published.eval_transform.size
            metrics = (
                f"The published {title} checkpoint `{published.name}` reports "
                f"{published.top1}% ImageNet top-1 at {size}x{size} ({published.top1_source}). "
                "This export reproduces the checkpoint's outputs; accuracy was not "
                "re-measured here."
            )
        else:
            metrics = "Not published for these weights."
    if info.folded:
        export_note = (
            "inference export: weight standardisation and constant scales folded into "
            "plain convolutions; no trainable variables."
        )
        fine_tuning = (
            "This is the folded inference export: it has no trainable variables. "
            "Fine-tune the unfolded export of the same weights instead."
        )
    else:
        export_note = "fine-tunable export holding the raw training parameters."
        fine_tuning = (
            "`hub.KerasLayer(..., trainable=True)` (tf_keras) and "
            "`TFSMLayer(..., trainable=True)` (Keras 3) train the raw parameters "
            "(kernels, gains, biases, skip gains); `training=True` enables "
            "stochastic depth" + (" and dropout" if classification else "") + ". "
            "NF networks expect Adaptive Gradient Clipping while fine-tuning "
            "(`nfnet_keras` models apply it in `fit`; with these layers, clip "
            "gradients unit-wise, lambda 0.01, excluding the classifier). Use SGD "
            "with momentum and a small learning rate; Adam has been reported to "
            "diverge on NFNets. The model has no batch normalisation, so "
            "fine-tuning with small batches is safe."
        )
    if classification:
        output_doc = (
            f"`logits`, float32 `[batch, {info.classes}]`: unnormalised scores of the "
            "ImageNet classes (no softmax, no background class; index i is class i of "
            "`nfnet_keras.decode_predictions`)."
            if info.classes == 1000
            else f"`logits`, float32 `[batch, {info.classes}]`, no softmax."
        )
        width = info.classes
    else:
        output_doc = (
            f"`feature_vector`, float32 `[batch, {info.num_features}]`: the global "
            "average of the final activations (no dropout)."
        )
        width = info.num_features
    references = (
        "* Brock, De, Smith, Simonyan. High-Performance Large-Scale Image Recognition "
        "Without Normalization. ICML 2021, arXiv:2102.06171.\n"
        if is_nfnet
        else ""
    ) + (
        "* Brock, De, Smith. Characterizing signal propagation to close the performance "
        "gap in unnormalized ResNets. ICLR 2021, arXiv:2101.08692."
    )
    values = dict(
        publisher=publisher or "OWNER",
        slug=slug,
        title=title,
        summary=(
            ("ImageNet classifier" if info.classes == 1000 else f"{info.classes}-class classifier")
            if classification
            else "image feature vector"
        )
        + " (Normalizer-Free network).",
        asset_path=f"https://www.kaggle.com/models/{info.handle}",
        task="image-classification" if classification else "image-feature-vector",
        architecture=arch.family.replace("_", "-"),
        architecture_note=(
            f"{title}, timm conventions (exact GELU, timm weight standardisation)"
            if arch.convention == "timm"
            else f"{title}, deepmind-research `nfnets` conventions (tanh-GELU, "
            "DeepMind weight standardisation, TensorFlow SAME padding)"
        ),
        fine_tunable="false" if info.folded else "true",
        license_id=_LICENSE_IDS.get(info.license_name.lower(), info.license_name.lower()),
        license_name=info.license_name,
        image_size=info.image_size,
        pixel_range="[{:g}, {:g}]".format(*RESIZED_PIXEL_RANGE),
        resize=info.transform.resize,
        resize_doc=(
            "the shorter side (aspect ratio kept)"
            if info.transform.keep_aspect
            else "the whole image (aspect ratio not kept)"
        )
        + (", antialiased" if info.transform.antialias else ""),
        params=f"{info.params:,}",
        weights_note=weights_note,
        export_note=export_note,
        references=references,
        output_doc=output_doc,
        output_key="logits" if classification else "feature_vector",
        width=width,
        asset_dir="path/to/saved_model",
        trainable_py="False" if info.folded else "True",
        fine_tuning=fine_tuning,
        training_data=training_data,
        metrics=metrics,
        citation=(_NFNET_CITATION + "\n\n" if is_nfnet else "") + _NF_CITATION,
    )
    with open(_TEMPLATE) as f:
        return string.Template(f.read()).substitute(values)


def kaggle_metadata(info):
    """Kaggle Models metadata files (`kaggle models create/instances create -p`)."""
    parts = info.handle.split("/")
    if len(parts) != 4:
        raise ValueError(
            "`handle` must be 'owner/model/framework/variation'. "
            f"Received: handle={info.handle!r}"
        )
    owner, model_slug, framework, variation = parts
    title = registry.get_architecture(info.model).title
    return {
        "model-metadata.json": {
            "ownerSlug": owner,
            "slug": model_slug,
            "title": "Normalizer-Free networks",
            "subtitle": "NFNet, NF-ResNet and NF-RegNet image models",
            "isPrivate": True,
            "description": render(info),
            "publishTime": "",
            "provenanceSources": "",
        },
        "model-instance-metadata.json": {
            "ownerSlug": owner,
            "modelSlug": model_slug,
            "instanceSlug": variation,
            "framework": framework,
            "overview": f"{title} {info.output.replace('_', ' ')}, "
            f"{info.image_size}x{info.image_size}.",
            "usage": "See the model card (README.md).",
            "licenseName": info.license_name,
            "fineTunable": not info.folded,
            "trainingData": ["imagenet-ilsvrc-2012"] if info.weights else [],
            "modelInstanceType": "Unspecified",
            "baseModelInstanceId": 0,
            "externalBaseModelUrl": "",
        },
    }
