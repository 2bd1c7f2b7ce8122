"""Exports NF models as SavedModels for TF Serving, TF Hub and Kaggle Models.

Library: `export(...)` builds the model, writes the SavedModel, the
`.tar.gz`, the model card and the Kaggle metadata, then reloads the
SavedModel and compares it with the Keras model. Command line:

    python -m export.export --model nfnet_f0 --weights f0.weights.h5 --out DIR \\
        [--output classification|feature_vector] [--image_size 256] [--fold]

The SavedModel follows the TF Hub image conventions: input float32
``[batch, height, width, 3]`` RGB in [0, 1], normalised inside; output
``[batch, classes]`` logits (no softmax, no background class) or
``[batch, features]`` pooled features (no dropout). It is a TF2 Reusable
SavedModel (callable ``obj(images, training=False)``, ``variables``,
``trainable_variables``, ``regularization_losses``) with these entries:

* signature ``serving_default``: input ``images`` float32
  ``[batch, height, width, 3]`` (height, width >= 32); output ``logits`` or
  ``feature_vector``. Values outside `RESIZED_PIXEL_RANGE` print a warning
  to stderr, once per loaded model (a flag variable of the SavedModel). The
  functions below do not check: Keras and TF Hub layers compose them into
  graphs that they may compile with XLA, which cannot print.
* signature ``serving_bytes``: input ``image_bytes`` string ``[batch]``
  (JPEG/PNG/GIF/BMP files; the ``_bytes`` suffix lets TF Serving's REST API
  take base64); applies the architecture's evaluation transform
  (`nfnet_keras.weights.eval_transform`: DeepMind's resize_crop_32, or
  timm's crop_pct) at the export resolution; same output. An entry that
  does not decode fails the call with its batch index.
* functions ``serve`` / ``serve_train`` (images -> tensor, inference and
  training mode) for ``keras.layers.TFSMLayer``.
"""

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tarfile

import keras
import numpy as np
import tensorflow as tf

import nfnet_keras
from nfnet_keras import weights as weights_lib
from nfnet_keras.imagenet_utils import IMAGENET_MEAN, IMAGENET_STD, RESIZED_PIXEL_RANGE
from nfnet_keras.layers import Normalize
from nfnet_keras.models import registry

from . import model_card, preprocessing

OUTPUTS = ("classification", "feature_vector")
OUTPUT_KEYS = {"classification": "logits", "feature_vector": "feature_vector"}
# The smallest input side NF models accept (keras.applications `min_size`
# in `nfnet_keras.models.builder`).
MIN_IMAGE_SIZE = 32
# Verification tolerance: max |SavedModel - Keras| <= VERIFY_TOLERANCE *
# max(1, max |Keras|), float32 rounding with margin for deep models.
VERIFY_TOLERANCE = 1e-4

# Image dtypes callers commonly pass by mistake; `__call__` names them.
_WRONG_DTYPES = (tf.uint8, tf.int32, tf.float16, tf.float64)

# --------------------------------------------------------------------------
# Model lookup and construction.


def model_eval_transform(name, image_size=None):
    """The `serving_bytes` transform of a model name at `image_size`
    (default: the row's evaluation resolution)."""
    transform = weights_lib.eval_transform(registry.get_architecture(name))
    return transform if image_size is None else transform.at_size(image_size)


def build_keras_model(name, *, output="classification", weights=None, classes=1000):
    """Builds the model to export: float [0, 1] RGB in, logits/features out.

    The graph is ``images -> Normalize(ImageNet mean, std) -> NF model``
    with dynamic height and width; logits come without softmax
    (``classifier_activation=None``); features are the global average
    pool (``include_top=False, pooling="avg"``). `weights` goes to the
    constructor (a local `.weights.h5` or anything
    `nfnet_keras.weights.load_weights` reads).
    """
    if output not in OUTPUTS:
        raise ValueError(f"`output` must be one of {OUTPUTS}. Received: output={output!r}")
    constructor = registry.constructor(name)
    images = keras.Input((None, None, 3), name="images")
    # [0, 1] pixels: (x - mean) / std equals the reference's
    # (255 x - 255 mean) / (255 std) (reference doc §3.1).
    normalized = Normalize(IMAGENET_MEAN, IMAGENET_STD, name="normalization")(images)
    kwargs = dict(weights=weights, input_tensor=normalized, include_preprocessing=False)
    if output == "classification":
        kwargs.update(include_top=True, classes=classes, classifier_activation=None)
    else:
        kwargs.update(include_top=False, pooling="avg")
    return constructor(**kwargs)


# --------------------------------------------------------------------------
# The Reusable SavedModel.


def _checked_images(images):
    """Asserts the TF Hub image contract on a float32 batch, with messages."""
    shape = tf.shape(images)
    # The rank first: the other checks read axes that a wrong rank moves.
    rank_checks = [
        tf.debugging.Assert(
            tf.not_equal(tf.rank(images), 3),
            ["`images` has no batch axis: received shape", shape, "; expected [batch, height, "
             "width, 3] (one image: tf.expand_dims(image, 0))"],
        ),
        tf.debugging.assert_rank(
            images,
            4,
            message="`images` must be a float32 tensor [batch, height, width, 3]",
        ),
    ]
    with tf.control_dependencies(rank_checks):
        checks = [
            tf.debugging.assert_equal(
                shape[-1],
                3,
                message="`images` must have 3 channels (RGB) on the last axis, "
                "shape [batch, height, width, 3]",
            ),
            tf.debugging.assert_greater_equal(
                tf.reduce_min(shape[1:3]),
                MIN_IMAGE_SIZE,
                message=f"`images` height and width must be at least {MIN_IMAGE_SIZE} pixels",
            ),
        ]
    with tf.control_dependencies(checks):
        # A gather (not `tf.ensure_shape`) gives the static channel count
        # without a shape-inference error that would pre-empt the messages.
        return tf.gather(images, [0, 1, 2], axis=3)


def _warn_once_if_out_of_range(images, warned):
    """Prints a warning to stderr, the first time only (`warned`, a bool
    variable), when `images` are not [0, 1] pixels (they leave
    `RESIZED_PIXEL_RANGE`, which allows for a bicubic resize); returns
    `images`."""
    low, high = tf.reduce_min(images), tf.reduce_max(images)
    outside = tf.logical_or(low < RESIZED_PIXEL_RANGE[0], high > RESIZED_PIXEL_RANGE[1])

    def warn():
        printed = tf.print(
            tf.strings.format(
                "WARNING: the SavedModel's serving_default received `images` with values in "
                "[{}, {}]; expected [0, 1]: float32 RGB scaled to [0, 1], which the model "
                "normalises itself. "
                "Divide [0, 255] pixels by 255 (tf.image.convert_image_dtype does it for "
                "uint8) and do not subtract the mean or divide by the std beforehand. "
                "(Printed once per loaded model.)",
                (low, high),
            )
        )
        with tf.control_dependencies([printed, warned.assign(True)]):
            return tf.constant(True)

    check = tf.cond(tf.logical_and(outside, tf.logical_not(warned)), warn, lambda: tf.constant(False))
    with tf.control_dependencies([check]):
        return tf.identity(images)


class ReusableSavedModel(tf.__internal__.tracking.AutoTrackable):
    """A TF2 Reusable SavedModel around a Keras model (TF Hub's API).

    A `tf.Module` cannot be used: its `variables` property has no setter.
    """

    def __init__(self, model, *, output, transform, trainable=True):
        super().__init__()
        # Not tracked: the SavedModel holds the model's tf.Variables once,
        # through `variables` (tracking the Keras model too would save every
        # Keras variable wrapper a second time, doubling the files).
        object.__setattr__(self, "_model", model)
        self.variables = [v.value for v in model.variables]
        self.trainable_variables = (
            [v.value for v in model.trainable_variables] if trainable else []
        )
        self.non_trainable_variables = (
            [v.value for v in model.non_trainable_variables] if trainable else self.variables
        )
        self.regularization_losses = (
            [
                tf.function(
                    lambda: tf.add_n([tf.cast(loss, tf.float32) for loss in model.losses]),
                    input_signature=[],
                )
            ]
            if model.losses
            else []
        )
        # Whether `serving_default`'s range warning was printed: saved with
        # the model (not among `variables`, which are the model's), reset by
        # each load.
        self.images_range_warned = tf.Variable(False, trainable=False, name="images_range_warned")
        key = OUTPUT_KEYS[output]
        spec = tf.TensorSpec([None, None, None, None], tf.float32, name="images")
        bytes_spec = tf.TensorSpec([None], tf.string, name="image_bytes")

        def forward(images, training):
            return self._model(_checked_images(images), training=training)

        self.serve = tf.function(lambda images: forward(images, False), input_signature=[spec])
        self.serve_train = tf.function(
            lambda images: forward(images, True), input_signature=[spec]
        )
        self.serving_default = tf.function(
            lambda images: {
                key: self.serve(_warn_once_if_out_of_range(images, self.images_range_warned))
            },
            input_signature=[spec],
        )

        def serving_bytes(image_bytes):
            images = preprocessing.eval_transform_batch(image_bytes, transform)
            return {key: self._model(images, training=False)}

        self.serving_bytes = tf.function(serving_bytes, input_signature=[bytes_spec])

    @tf.function
    def __call__(self, images, training=False):
        if images.dtype != tf.float32:
            # Traced for common wrong dtypes (see `trace`), so that calling
            # with them fails with this message instead of a signature mismatch.
            message = (
                "`images` must be float32 RGB in [0, 1], shape [batch, height, "
                f"width, 3]. Received dtype {images.dtype.name}; convert with "
                "tf.image.convert_image_dtype(images, tf.float32)."
            )
            with tf.control_dependencies([tf.debugging.Assert(tf.constant(False), [message])]):
                return tf.zeros([0])
        # Through the input_signature functions, so that shape errors come
        # from `_checked_images` rather than from static shape inference.
        return self.serve_train(images) if training else self.serve(images)

    def signatures(self):
        return {
            "serving_default": self.serving_default.get_concrete_function(),
            "serving_bytes": self.serving_bytes.get_concrete_function(),
        }

    def trace(self):
        spec = tf.TensorSpec([None, None, None, None], tf.float32)
        # Both Python values of `training`, and the default (TF Hub API).
        self.__call__.get_concrete_function(spec, training=True)
        self.__call__.get_concrete_function(spec, training=False)
        self.__call__.get_concrete_function(spec)
        for dtype in _WRONG_DTYPES:
            self.__call__.get_concrete_function(tf.TensorSpec([None, None, None, None], dtype))


def save(model, export_dir, *, output, transform, fold=False):
    """Writes `model` (from `build_keras_model`) as a Reusable SavedModel.

    Args:
        model: the Keras model.
        export_dir: the SavedModel directory (replaced if it exists).
        output: ``"classification"`` or ``"feature_vector"`` (names the
            signatures' output).
        transform: the `serving_bytes` evaluation transform (`EvalTransform`).
        fold: write the inference export: weight standardisation and
            constant scales folded (`nfnet_keras.fold_for_inference`), no trainable
            variables. Otherwise the raw, fine-tunable parameters.

    Returns:
        The Keras model that was saved (the folded copy when `fold`).
    """
    if output not in OUTPUTS:
        raise ValueError(f"`output` must be one of {OUTPUTS}. Received: output={output!r}")
    _check_image_size(transform.size)
    saved = nfnet_keras.fold_for_inference(model) if fold else model
    root = ReusableSavedModel(saved, output=output, transform=transform, trainable=not fold)
    root.trace()
    if os.path.exists(export_dir):
        shutil.rmtree(export_dir)
    tf.saved_model.save(root, export_dir, signatures=root.signatures())
    return saved


# --------------------------------------------------------------------------
# Verification, tarball, bundle.


def _sample_png(image_size, seed=0):
    """A smooth synthetic RGB image as PNG bytes (no files, no network)."""
    rng = np.random.default_rng(seed)
    height, width = image_size + 21, image_size + 47
    yy, xx = np.mgrid[0:height, 0:width].astype("float32")
    phase = rng.uniform(0, 2 * np.pi, 3)
    image = np.stack(
        [127.5 + 120 * np.sin(xx / 9.0 + yy / 13.0 + p) for p in phase], axis=-1
    )
    return tf.io.encode_png(tf.constant(image.round().astype("uint8"))).numpy()


def verify(export_dir, model, *, output, transform, batch_size=2, seed=0):
    """Reloads a SavedModel and compares every entry with the Keras model.

    Returns a dict of max absolute differences; raises `RuntimeError` when
    one exceeds the float32 tolerance.
    """
    key = OUTPUT_KEYS[output]
    image_size = transform.size
    loaded = tf.saved_model.load(export_dir)
    images = np.random.default_rng(seed).random(
        (batch_size, image_size, image_size, 3), dtype="float32"
    )
    expected = keras.ops.convert_to_numpy(model(images, training=False))
    png = _sample_png(image_size, seed)
    expected_bytes = keras.ops.convert_to_numpy(
        model(preprocessing.eval_transform_batch(tf.constant([png]), transform))
    )
    results = {
        "__call__": loaded(tf.constant(images)),
        "serve": loaded.serve(tf.constant(images)),
        "serving_default": loaded.signatures["serving_default"](images=tf.constant(images))[key],
    }
    diffs = {name: float(np.max(np.abs(value.numpy() - expected))) for name, value in results.items()}
    bytes_out = loaded.signatures["serving_bytes"](image_bytes=tf.constant([png]))[key]
    diffs["serving_bytes"] = float(np.max(np.abs(bytes_out.numpy() - expected_bytes)))
    scale = max(1.0, float(np.max(np.abs(expected))), float(np.max(np.abs(expected_bytes))))
    bad = {name: d for name, d in diffs.items() if not d <= VERIFY_TOLERANCE * scale}
    if bad:
        raise RuntimeError(
            f"The SavedModel at {export_dir} does not reproduce the Keras model: "
            f"max |difference| {bad} above {VERIFY_TOLERANCE * scale:.2e}."
        )
    return diffs


def make_tarball(export_dir, tar_path):
    """Packs a SavedModel as TF Hub / Kaggle expect: files at the archive root.

    Holds `saved_model.pb`, `variables/` (and `assets/`, `fingerprint.pb` when
    present); no dot-files.
    """
    # Level 1: float weights barely compress, and level 6 triples the time.
    with tarfile.open(tar_path, "w:gz", compresslevel=1) as tar:
        for entry in sorted(os.listdir(export_dir)):
            if entry.startswith("."):
                continue
            tar.add(
                os.path.join(export_dir, entry),
                arcname=entry,
                filter=lambda info: None
                if os.path.basename(info.name).startswith(".")
                else info,
            )
    return tar_path


@dataclasses.dataclass
class ExportResult:
    saved_model_dir: str
    tarball: str
    model_card: str
    kaggle_metadata: list
    verification: dict
    keras_model: object = dataclasses.field(repr=False, default=None)


def _check_image_size(image_size):
    if (
        not isinstance(image_size, (int, np.integer))
        or isinstance(image_size, bool)
        or image_size < MIN_IMAGE_SIZE
    ):
        raise ValueError(
            f"`image_size` must be an integer >= {MIN_IMAGE_SIZE}. "
            f"Received: image_size={image_size!r}"
        )


def _check_weights_file(weights, argument):
    if weights is None:
        return
    if not isinstance(weights, str):
        raise ValueError(f"`{argument}` must be a file path. Received: {argument}={weights!r}")
    if weights != "imagenet" and "://" not in weights and not os.path.isfile(weights):
        raise FileNotFoundError(
            f"`{argument}` file not found: {weights!r}. Pass an existing "
            "`.weights.h5` (or another format `nfnet_keras.weights` reads)."
        )


def export(
    model,
    out_dir,
    *,
    weights=None,
    ema_weights=None,
    output="classification",
    image_size=None,
    eval_transform=None,
    classes=1000,
    fold=False,
    verify_export=True,
    handle=None,
    license_name="Apache 2.0",
    log=print,
):
    """Builds, writes, packages and verifies one export.

    Writes into `out_dir`:

    * ``saved_model/`` — the SavedModel;
    * ``<model>_<output>.tar.gz`` — its TF Hub / Kaggle archive;
    * ``README.md`` — the model card;
    * ``model-metadata.json``, ``model-instance-metadata.json`` — Kaggle
      Models metadata (see `upload_to_kaggle`).

    Args:
        model: a model name (`nfnet_keras.list_models()`).
        out_dir: the output directory (created; its `saved_model/` is replaced).
        weights: weights for the constructor (`.weights.h5` path, ...).
        ema_weights: like `weights`, for a file holding the exponential moving
            average of the parameters (the reference evaluates the EMA;
            reference doc §8.1); recorded in the model card. Exclusive with
            `weights`.
        output: ``"classification"`` (logits) or ``"feature_vector"``.
        image_size: the evaluation resolution (bytes signature, card,
            verification); defaults to the variant's test resolution.
        eval_transform: the `serving_bytes` transform (an `EvalTransform`,
            e.g. a training config's); default: the architecture's
            (`nfnet_keras.weights.eval_transform`) at `image_size`.
        classes: classifier width (must match `weights`).
        fold: write the folded inference export (see `save`).
        verify_export: reload and compare after writing.
        handle: the Kaggle Models handle ``owner/model/tensorFlow2/variation``
            used in the card and metadata.
        license_name: the license named in the card and metadata.
        log: where progress lines go (`None` for silence).

    Returns:
        An `ExportResult`.
    """
    log = log or (lambda *args: None)
    # Every check before anything is built or written.
    registry.get_architecture(model)
    if output not in OUTPUTS:
        raise ValueError(f"`output` must be one of {OUTPUTS}. Received: output={output!r}")
    if weights is not None and ema_weights is not None:
        raise ValueError("Pass either `weights` or `ema_weights`, not both.")
    _check_weights_file(weights, "weights")
    _check_weights_file(ema_weights, "ema_weights")
    if image_size is not None:
        _check_image_size(image_size)
    transform = eval_transform or model_eval_transform(model, image_size)
    if image_size is not None:
        transform = transform.at_size(image_size)
    image_size = transform.size
    _check_image_size(image_size)

    keras_model = build_keras_model(
        model, output=output, weights=weights or ema_weights, classes=classes
    )
    os.makedirs(out_dir, exist_ok=True)
    saved_model_dir = os.path.join(out_dir, "saved_model")
    log(f"Writing {'folded inference' if fold else 'fine-tunable'} SavedModel to {saved_model_dir}")
    save(keras_model, saved_model_dir, output=output, transform=transform, fold=fold)

    diffs = {}
    if verify_export:
        diffs = verify(saved_model_dir, keras_model, output=output, transform=transform)
        log(
            "Verified: reloaded SavedModel matches the Keras model, max |difference| "
            + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items())
        )

    tarball = make_tarball(saved_model_dir, os.path.join(out_dir, f"{model}_{output}.tar.gz"))
    info = model_card.ModelInfo(
        model=model,
        output=output,
        image_size=image_size,
        classes=classes,
        num_features=int(keras_model.output.shape[-1]),
        params=int(keras_model.count_params()),
        transform=transform,
        weights=os.path.basename(weights or ema_weights) if (weights or ema_weights) else None,
        ema=ema_weights is not None,
        folded=fold,
        handle=handle or f"OWNER/nfnet/tensorFlow2/{model}-{output.replace('_', '-')}",
        license_name=license_name,
    )
    card_path = os.path.join(out_dir, "README.md")
    with open(card_path, "w") as f:
        f.write(model_card.render(info))
    metadata = []
    for filename, content in model_card.kaggle_metadata(info).items():
        path = os.path.join(out_dir, filename)
        with open(path, "w") as f:
            json.dump(content, f, indent=2)
        metadata.append(path)
    log(f"Wrote {tarball}, {card_path} and Kaggle metadata")
    return ExportResult(saved_model_dir, tarball, card_path, metadata, diffs, keras_model)


def upload_to_kaggle(out_dir, handle, *, license_name="Apache 2.0", version_notes=""):
    """Uploads an export's SavedModel to Kaggle Models (needs credentials).

    Uses `kagglehub.model_upload`; `kagglehub` must be installed and
    credentials configured (``KAGGLE_USERNAME``/``KAGGLE_KEY`` or
    ``~/.kaggle/kaggle.json``).
    """
    try:
        import kagglehub
    except ImportError as error:
        raise ImportError(
            "Uploading needs `kagglehub` (pip install kagglehub) and Kaggle credentials."
        ) from error
    return kagglehub.model_upload(
        handle,
        os.path.join(out_dir, "saved_model"),
        license_name=license_name,
        version_notes=version_notes,
    )


# --------------------------------------------------------------------------
# Command line.


def _parser():
    parser = argparse.ArgumentParser(
        prog="python -m export.export",
        description="Export an NF model as a SavedModel for TF Serving, TF Hub and Kaggle Models.",
    )
    parser.add_argument("--model", required=True, help="model name, e.g. nfnet_f0")
    parser.add_argument("--out", required=True, help="output directory")
    weights = parser.add_mutually_exclusive_group()
    weights.add_argument("--weights", help="weights file (.weights.h5, ...); default random")
    weights.add_argument("--ema_weights", help="weights file holding the EMA of the parameters")
    parser.add_argument("--output", choices=OUTPUTS, default="classification")
    parser.add_argument("--image_size", type=int, default=None, help="evaluation resolution")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument(
        "--fold",
        action="store_true",
        help="inference export: weight standardisation folded, not fine-tunable",
    )
    parser.add_argument("--no_verify", action="store_true", help="skip the reload check")
    parser.add_argument("--handle", default=None, help="Kaggle handle owner/model/tensorFlow2/variation")
    parser.add_argument("--license", default="Apache 2.0")
    parser.add_argument(
        "--upload", action="store_true", help="upload to Kaggle Models (needs credentials)"
    )
    return parser


def main(argv=None):
    parser = _parser()
    args = parser.parse_args(argv)
    if args.upload and not args.handle:
        parser.error("--upload needs --handle")
    try:
        result = export(
            args.model,
            args.out,
            weights=args.weights,
            ema_weights=args.ema_weights,
            output=args.output,
            image_size=args.image_size,
            classes=args.classes,
            fold=args.fold,
            verify_export=not args.no_verify,
            handle=args.handle,
            license_name=args.license,
        )
    except (ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.upload:
        upload_to_kaggle(args.out, args.handle, license_name=args.license)
    print(result.saved_model_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
