#!/usr/bin/env bash
# Creates .venv and installs nfnet_keras into it, with the tested versions
# of constraints.txt.
#   bash install.sh         library (CPU TensorFlow) + trainer + export (hub) dependencies
#   bash install.sh test    the same, plus the test-only oracle (CPU torch + timm) and,
#                           in .venv/jax-backend, JAX (CPU) for the JAX-backend tests
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=".venv/bin/pip"
export PIP_DISABLE_PIP_VERSION_CHECK=1
EXTRAS="cpu,train,hub,convert"
[ "${1:-}" = "test" ] && EXTRAS="$EXTRAS,test"
"$PIP" install -q -c constraints.txt -e ".[${EXTRAS}]" 2>&1 | grep -v "^WARNING: Location" || true
# tf-keras declares the full `tensorflow` wheel and tensorflow-hub declares
# tf-keras; installed with their dependencies they would put a second
# TensorFlow on top of tensorflow-cpu. Both work without them.
"$PIP" install -q -c constraints.txt --no-deps tf-keras tensorflow-hub 2>&1 | grep -v "^WARNING: Location" || true
# JAX, for the tests that run Keras's JAX backend, in a folder of its own
# that only their subprocesses put on PYTHONPATH: TensorFlow imports JAX
# whenever it can (tensorflow/lite/python/util.py), which adds ~120 MB of
# memory and ~1 s of start-up to every TensorFlow process.
if [ "${1:-}" = "test" ]; then
  "$PIP" install -q -c constraints.txt --no-deps --upgrade --target .venv/jax-backend \
    jax jaxlib 2>&1 | grep -v "^WARNING: Location" || true
fi
.venv/bin/python -c "import nfnet_keras, keras; print('nfnet_keras', nfnet_keras.__version__, 'keras', keras.__version__)"
