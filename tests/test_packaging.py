"""The distribution: version ranges, no TensorFlow wheel forced, no top-level
`training`/`export` packages, console scripts (pyproject.toml, constraints.txt)."""

import os
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _pyproject():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)


def test_requirements_are_ranges_and_name_no_tensorflow_wheel():
    project = _pyproject()["project"]
    for requirement in project["dependencies"]:
        assert "==" not in requirement, requirement
        # Any TensorFlow build (GPU `tensorflow`, `tensorflow-cpu`, TPU) may
        # already be installed: requiring one would add a second.
        assert not requirement.startswith("tensorflow"), requirement
    assert any(r.startswith("keras>=3") and "<4" in r for r in project["dependencies"])
    extras = project["optional-dependencies"]
    assert extras["cpu"] == ["tensorflow-cpu>=2.16,<3"]
    assert extras["tensorflow"] == ["tensorflow>=2.16,<3"]
    for requirements in extras.values():
        assert all("==" not in r for r in requirements)


def test_exact_pins_live_in_the_constraints_file_used_by_install_sh():
    with open(os.path.join(ROOT, "constraints.txt")) as f:
        pins = [line.split("#")[0].strip() for line in f]
    pins = [p for p in pins if p]
    assert all("==" in p for p in pins) and "keras==3.15.1" in pins
    with open(os.path.join(ROOT, "install.sh")) as f:
        script = f.read()
    installs = script.count('"$PIP" install')  # the package, tf-keras/tensorflow-hub, JAX
    assert installs == 3 and script.count("-c constraints.txt") == installs


def test_training_and_export_install_under_the_package():
    setuptools = _pyproject()["tool"]["setuptools"]
    assert all(p == "nfnet_keras" or p.startswith("nfnet_keras.") for p in setuptools["packages"])
    assert setuptools["package-dir"] == {
        "nfnet_keras.training": "training",
        "nfnet_keras.export": "export",
    }
    # Every package directory of the library is listed.
    library = {
        "nfnet_keras." + d
        for d in os.listdir(os.path.join(ROOT, "nfnet_keras"))
        if os.path.isfile(os.path.join(ROOT, "nfnet_keras", d, "__init__.py"))
    }
    assert library <= set(setuptools["packages"])
    scripts = _pyproject()["project"]["scripts"]
    assert scripts == {
        "nfnet-convert": "nfnet_keras.convert.cli:main",
        "nfnet-train": "nfnet_keras.training.train:main",
        "nfnet-export": "nfnet_keras.export.export:main",
        "nfnet-spp": "nfnet_keras.analysis:main",
    }
