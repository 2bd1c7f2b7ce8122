#!/usr/bin/env bash
# Creates .venv and installs nfnet_keras into it, with the tested versions
# of constraints.txt.
#   bash install.sh         library (CPU TensorFlow) + trainer + export (hub) dependencies
#   bash install.sh test    the same, plus the test-only oracle (CPU torch + timm)
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
.venv/bin/python -c "import nfnet_keras, keras; print('nfnet_keras', nfnet_keras.__version__, 'keras', keras.__version__)"
