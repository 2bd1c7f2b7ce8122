"""Published ImageNet checkpoints: one row per file.

A row references its architecture by registry name and carries a tag, as
timm's `pretrained_cfg` does: the checkpoint ``nfnet_f0.dm_in1k`` is
DeepMind's own F0 file, ``nfnet_f0.timm`` timm's copy of the same tensors.
"""

import dataclasses
import os
import urllib.parse

from nfnet_keras.weights.transform import EvalTransform, deepmind_eval, timm_eval


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """One published file of ImageNet-1k weights."""

    architecture: str  # registry name of the network it loads into ("nfnet_f0")
    tag: str  # which of the architecture's checkpoints ("dm_in1k", "timm", "ra2_in1k")
    source: str  # who published it: "deepmind" or "timm"
    url: str  # where it is downloaded from
    file_format: str  # "haiku" (DeepMind pickle) or "timm" (PyTorch state dict)
    file_hash: str  # hex digest, or its leading digits (timm file names carry 8)
    hash_algorithm: str  # "md5" or "sha256"
    hash_verified: bool  # whether the hash was checked against the file by this package
    eval_transform: EvalTransform  # the evaluation the published top-1 used
    top1: float  # published ImageNet-1k top-1 (%) at eval_transform.size
    top1_source: str  # where that number is published
    license: str
    citation: str

    @property
    def name(self):
        """The checkpoint's name, ``<architecture>.<tag>``."""
        return f"{self.architecture}.{self.tag}"

    @property
    def file_name(self):
        return os.path.basename(urllib.parse.urlsplit(self.url).path)


_DM_BASE = "https://storage.googleapis.com/dm-nfnets/"
_TIMM_DNF = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-dnf-weights/"
_TIMM_NF = "https://github.com/rwightman/pytorch-image-models/releases/download/v0.1-weights/"
_NFNET_CITATION = (
    "Brock, De, Smith, Simonyan. High-Performance Large-Scale Image "
    "Recognition Without Normalization. ICML 2021, arXiv:2102.06171."
)
_NF_CITATION = (
    "Brock, De, Smith. Characterizing signal propagation to close the "
    "performance gap in unnormalized ResNets. ICLR 2021, arXiv:2101.08692."
)
_DM_LICENSE = (
    "Apache-2.0 (the deepmind-research repository's licence; its nfnets "
    "README states no separate licence for the weights)"
)
_TIMM_LICENSE = "Apache-2.0 (timm `pretrained_cfg` license field)"

# DeepMind rows: URLs and top-1 from deepmind-research `nfnets/README.md`;
# md5 sums as recorded by ethanluoyc/jam `checkpoints.py` (reference doc
# §9.1), not yet checked against the files by this package.
# timm rows: URLs, test sizes and crop_pct from timm 1.0.31
# `timm/models/nfnet.py` `default_cfgs`; the 8 hex digits in each file name
# are the start of its SHA-256 (timm/torch.hub convention, reference doc
# §9.3); top-1 from timm `results/results-imagenet.csv` (reference doc §2, §6).
_F_ROWS = (
    # (architecture, DM file, test px, DM md5, DM top-1, timm file, timm crop_pct, timm top-1)
    ("nfnet_f0", "F0_haiku.npz", 256, "0a41039da1cb43adf47f1b7d86ddfe0f", 83.6,
     "dm_nfnet_f0-604f9c3a.pth", 0.9, 83.468),
    ("nfnet_f1", "F1_haiku.npz", 320, "c9126bbfaf855f9ddb7ff3b902558781", 84.7,
     "dm_nfnet_f1-fc540f82.pth", 0.91, 84.700),
    ("nfnet_f2", "F2_haiku.npz", 352, "7a018d8d1498020e2f5a8719a1e7f53f", 85.1,
     "dm_nfnet_f2-89875923.pth", 0.92, 85.184),
    ("nfnet_f3", "F3_haiku.npz", 416, "d8e1e78d26db659c486150dbaccbe78a", 85.7,
     "dm_nfnet_f3-d74ab3aa.pth", 0.94, 85.676),
    ("nfnet_f4", "F4_haiku.npz", 512, "f5974a7e3388aa81b91a9f1403e759a4", 85.9,
     "dm_nfnet_f4-0ac5b10b.pth", 0.951, 85.838),
    ("nfnet_f5", "F5_haiku.npz", 544, "8639e925de951030651ac775b9f915c3", 86.0,
     "dm_nfnet_f5-ecb20ab1.pth", 0.954, 86.102),
    ("nfnet_f6", "F6_haiku.npz", 576, "b16cca40ac1ecec2bd5e3273866da0c1", 86.5,
     "dm_nfnet_f6-e0f12116.pth", 0.956, 86.364),
)


def _timm_hash(file_name):
    return file_name.rsplit("-", 1)[1].split(".")[0]


def _timm_row(architecture, base, file_name, size, crop_pct, top1, results, tag, citation,
              keep_aspect=True):
    """A file published by timm at ``base + file_name``, evaluated as timm's
    `default_cfgs` say: test size, crop_pct (``test_crop_pct`` where set),
    crop_mode 'center' (shorter side, ``keep_aspect``) or 'squash'; top-1
    from timm results/results-imagenet.csv, row `results`."""
    return Checkpoint(
        architecture=architecture,
        tag=tag,
        source="timm",
        url=base + file_name,
        file_format="timm",
        file_hash=_timm_hash(file_name),
        hash_algorithm="sha256",
        hash_verified=False,
        eval_transform=timm_eval(size, crop_pct, keep_aspect=keep_aspect),
        top1=top1,
        top1_source=f"timm results/results-imagenet.csv ({results})",
        license=_TIMM_LICENSE,
        citation=citation,
    )


def _f_rows():
    rows = []
    for arch, dm_file, size, md5, dm_top1, timm_file, crop_pct, timm_top1 in _F_ROWS:
        rows.append(
            Checkpoint(
                architecture=arch,
                tag="dm_in1k",
                source="deepmind",
                url=_DM_BASE + dm_file,
                file_format="haiku",
                file_hash=md5,
                hash_algorithm="md5",
                hash_verified=False,
                eval_transform=deepmind_eval(size),
                top1=dm_top1,
                top1_source="deepmind-research nfnets/README.md"
                + (" (F6 trained with SAM)" if arch == "nfnet_f6" else ""),
                license=_DM_LICENSE,
                citation=_NFNET_CITATION,
            )
        )
        # DeepMind's tensors re-laid-out for PyTorch (reference doc §5),
        # evaluated with timm's 'squash' crop mode.
        timm_name = timm_file.split("-")[0]
        rows.append(
            _timm_row(arch, _TIMM_DNF, timm_file, size, crop_pct, timm_top1, f"{timm_name}.dm_in1k",
                      tag="timm", citation=_NFNET_CITATION, keep_aspect=False)
        )
    return rows


def _timm_nf_row(architecture, file_name, crop_pct, top1, timm_tag, size=288, tag="ra2_in1k",
                 citation=_NF_CITATION):
    """timm-trained weights of timm's own NF networks (NF-ResNet / NF-RegNet:
    7x7 + max-pool stem, D-style shortcuts, 8-rounded widths, reference doc
    §6; the light NFNets), which are not DeepMind's networks; top-1 at the
    test size."""
    return _timm_row(architecture, _TIMM_NF, file_name, size, crop_pct, top1, f"{timm_tag} @{size}",
                     tag, citation)


CHECKPOINTS = tuple(
    _f_rows()
    + [
        # crop_pct 0.94 ('nf_resnet50.ra2_in1k'), 0.9 (the `_dcfg` default,
        # 'nf_regnet_b1.ra2_in1k').
        _timm_nf_row("timm_nf_resnet50", "nf_resnet50_ra2-9f236009.pth", 0.94, 80.658,
                     "nf_resnet50.ra2_in1k"),
        _timm_nf_row("timm_nf_regnet_b1", "nf_regnet_b1_256_ra2-ad85cfef.pth", 0.9, 79.368,
                     "nf_regnet_b1.ra2_in1k"),
    ]
    + [
        # timm's light NFNets: `test_crop_pct=1.0` at `test_input_size`.
        _timm_nf_row(arch, file_name, 1.0, top1, f"{arch}.{tag}", size=size, tag=tag,
                     citation=_NFNET_CITATION)
        for arch, file_name, size, top1, tag in (
            ("nfnet_l0", "nfnet_l0_ra2-45c6688d.pth", 288, 82.766, "ra2_in1k"),
            ("eca_nfnet_l0", "ecanfnet_l0_ra2-e3e9ac50.pth", 288, 82.590, "ra2_in1k"),
            ("eca_nfnet_l1", "ecanfnet_l1_ra2-7dce93cd.pth", 320, 84.062, "ra2_in1k"),
            ("eca_nfnet_l2", "ecanfnet_l2_ra3-da781a61.pth", 384, 84.710, "ra3_in1k"),
        )
    ]
)

# Which published file `weights="imagenet"` takes first: DeepMind's own
# (the paper's numbers); timm's copy of the same tensors if that fails to
# download.
SOURCE_PREFERENCE = ("deepmind", "timm")


def checkpoints(architecture):
    """The published checkpoints of an architecture name, preferred first."""
    rows = [row for row in CHECKPOINTS if row.architecture == architecture]
    return sorted(rows, key=lambda row: SOURCE_PREFERENCE.index(row.source))


def checkpoint(name):
    """A checkpoint row by name: ``"nfnet_f0.timm"``, or an architecture
    name (``"nfnet_f0"``) for its preferred checkpoint."""
    for row in CHECKPOINTS:
        if row.name == name:
            return row
    rows = checkpoints(name)
    if not rows:
        raise ValueError(
            f"No published ImageNet weights named {name!r}. Checkpoints: "
            f"{sorted(row.name for row in CHECKPOINTS)}. Use `weights=None` or the "
            "path of your own weights file."
        )
    return rows[0]


def checkpoint_for_url(url):
    for row in CHECKPOINTS:
        if row.url == url:
            return row
    return None
