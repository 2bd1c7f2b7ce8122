"""Installation of nfnet_keras (see README.md for the supported install commands)."""

from setuptools import find_packages, setup

# Versions measured to install and work together on Python 3.11
# (TensorFlow 2.21 + Keras 3.15). tensorflow-hub and tf-keras are installed
# with --no-deps by install.sh: tf-keras declares the full `tensorflow` wheel,
# which would land on top of tensorflow-cpu.
INSTALL_REQUIRES = [
    "tensorflow-cpu==2.21.0",
    "keras==3.15.1",
    "numpy>=1.26",
    "h5py",
]
EXTRAS = {
    "train": ["tensorflow-datasets==4.9.10", "importlib_resources", "absl-py", "tensorboard==2.21.0"],
    # tensorflow_hub 0.16 imports pkg_resources, removed in setuptools 82.
    "hub": ["setuptools<82"],
    # Signal propagation plots (`nfnet_keras.analysis`, `nfnet-spp`).
    "plot": ["matplotlib"],
    # experiments/agc_miniature.py: scikit-learn ships the `digits` images.
    "experiments": ["matplotlib", "scikit-learn"],
    "test": [
        "pytest",
        "pytest-timeout",
        "safetensors",
        # The parity oracle: CPU torch, timm, and the torchvision that goes
        # with them (see tests/_timm.py for the import shim).
        "torch==2.13.0",
        "torchvision==0.28.0",
        "timm==1.0.31",
        "matplotlib",
        "scikit-learn",
    ],
}

setup(
    name="nfnet_keras",
    version="0.1.0",
    description="Normalizer-Free networks (NFNet, NF-ResNet, NF-RegNet) for Keras 3",
    long_description=open("README.md").read() if __import__("os").path.exists("README.md") else "",
    long_description_content_type="text/markdown",
    packages=find_packages(include=["nfnet_keras", "nfnet_keras.*", "training", "training.*", "export", "export.*"]),
    package_data={"nfnet_keras": ["data/*.json"], "export": ["templates/*.md"]},
    python_requires=">=3.10",
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "nfnet-convert = nfnet_keras.convert.cli:main",
            "nfnet-spp = nfnet_keras.analysis:main",
        ]
    },
    license="Apache-2.0",
)
