"""`nfnet-convert`: any supported checkpoint -> a Keras `.weights.h5` file.

Examples:
    nfnet-convert F0_haiku.npz --model nfnet_f0 --out F0.weights.h5
    nfnet-convert dm_nfnet_f0-604f9c3a.pth --model nfnet_f0
    nfnet-convert imagenet --model nfnet_f1 --out F1.weights.h5

The source may be a DeepMind Haiku ``.npz``, a timm ``.pth``/``.safetensors``
state dict, a Keras ``.weights.h5``, a URL of one of these, or ``imagenet``
(the variant's published checkpoint, downloaded and hash-checked). The
output loads with ``NFNetF0(weights="F0.weights.h5")`` or
``model.load_weights(...)``.
"""

import argparse
import os
import re
import sys
import time


def convert(source, model_name, out=None, include_top=True, classes=1000, convention=None):
    """Converts `source` for `model_name`, writes `out`; returns a report dict."""
    from nfnet_keras import weights as weights_lib
    from nfnet_keras.models import get_architecture, get_model

    arch = get_architecture(model_name)
    kwargs = dict(
        weights=None, include_top=include_top, convention=convention, include_preprocessing=False
    )
    if include_top:
        kwargs["classes"] = classes
    model = get_model(arch.name, **kwargs)
    if out is None:
        base = "imagenet" if source == "imagenet" else os.path.basename(source.rstrip("/"))
        base = re.sub(r"(\.weights)?\.(npz|pkl|pickle|pth|pt|bin|ckpt|safetensors|h5)$", "", base)
        out = f"{base or model_name}.weights.h5"
    if not out.endswith(".weights.h5"):
        raise ValueError(f"`--out` must end with `.weights.h5`. Received: {out!r}")
    start = time.perf_counter()
    weights_lib.load_weights(model, source, arch, include_top=include_top)
    seconds = time.perf_counter() - start
    model.save_weights(out)
    return {
        "source": source,
        "model": model.name,
        "convention": convention,
        "arrays": len(model.weights),
        "parameters": model.count_params(),
        "seconds": seconds,
        "out": out,
        "bytes": os.path.getsize(out),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="nfnet-convert",
        description="Convert a DeepMind Haiku or timm NFNet checkpoint to a Keras .weights.h5 file.",
    )
    parser.add_argument("source", help="checkpoint path or URL, or 'imagenet'")
    parser.add_argument("--model", required=True, help="model variant, e.g. nfnet_f0")
    parser.add_argument("--out", help="output file (.weights.h5); default from the source name")
    parser.add_argument("--no-top", action="store_true", help="convert everything but the classifier")
    parser.add_argument("--classes", type=int, default=1000, help="classifier width (default 1000)")
    parser.add_argument(
        "--convention", choices=("deepmind", "timm"), default=None,
        help="numerical convention of the model built for the conversion (weights are the same; "
        "default: the architecture's)",
    )
    args = parser.parse_args(argv)
    try:
        report = convert(
            args.source, args.model, args.out, include_top=not args.no_top,
            classes=args.classes, convention=args.convention,
        )
    except (ValueError, TypeError, ImportError, OSError) as e:
        print(f"nfnet-convert: error: {e}", file=sys.stderr)
        return 1
    print(
        f"Loaded {report['source']} into {report['model']} "
        f"({report['arrays']} arrays, {report['parameters']:,} parameters) "
        f"in {report['seconds']:.1f} s.\n"
        f"Wrote {report['out']} ({report['bytes'] / 2**20:.1f} MiB)."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
