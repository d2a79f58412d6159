#!/usr/bin/env bash
# Creates rknn-toolkit2's own virtual environment: the RKNN converter and x86 simulator that
# scripts/build_rknn_models.py needs (see docs/rknn.md). x86_64 Linux (or an aarch64 board, which
# converts but was not checked here with the simulator), Python 3.8 to 3.12.
#
#   bash scripts/rknn-toolkit-env.sh [VENV]      # default: $RKNN_VENV, else .rknn-venv in this checkout
#
# The toolkit pins numpy<=1.26.4, onnx<=1.18 and torch<=2.4, so it cannot share the project's
# environment. It is installed with --no-deps plus its other requirements; torch (about 2 GB,
# imported but never called on the ONNX path) is replaced by the stand-in in
# scripts/rknn-toolkit/torch. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

TOOLKIT_VERSION="${RKNN_TOOLKIT_VERSION:-2.5.0}"
VENV="${1:-${RKNN_VENV:-.rknn-venv}}"
PYTHON="${PYTHON:-python3}"

machine="$(uname -m)"
if [ "$machine" != "x86_64" ] && [ "$machine" != "aarch64" ]; then
    echo "rknn-toolkit-env: rknn-toolkit2 $TOOLKIT_VERSION has wheels for x86_64 and aarch64 Linux; this host is" \
         "$machine." >&2
    exit 2
fi
pyver="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
case "$pyver" in
    3.8|3.9|3.10|3.11|3.12) ;;
    *) echo "rknn-toolkit-env: rknn-toolkit2 $TOOLKIT_VERSION has wheels for Python 3.8 to 3.12; $PYTHON is $pyver" \
            "(set PYTHON=python3.11 or similar)" >&2
       exit 2 ;;
esac

if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip
"${PIP[@]}" --no-deps "rknn-toolkit2==$TOOLKIT_VERSION"
# Its requirements but torch, with opencv-python replaced by the headless build (same cv2 module,
# no X libraries); pip picks the versions that satisfy numpy<=1.26.4 together.
"${PIP[@]}" "numpy<=1.26.4" "onnx>=1.16.1,<=1.18.0" "onnxruntime>=1.17" "protobuf>=4.21.6,<=4.25.4" \
    "psutil>=5.9.0" "ruamel.yaml>=0.17.21" "scipy>=1.9.3" "tqdm>=4.64.1" "opencv-python-headless>=4.5.5.64" \
    "fast-histogram>=0.11" "pyyaml>=6.0"

site="$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ -e "$site/torch" ] && ! grep -q ADAPTIVE_SCHED_STAND_IN "$site/torch/__init__.py" 2>/dev/null; then
    echo "rknn-toolkit-env: $site/torch is a real torch; leaving it (the stand-in is not needed)" >&2
else
    rm -rf "$site/torch"
    cp -r scripts/rknn-toolkit/torch "$site/torch"
fi

if ! out="$("$VENV/bin/python" -c 'from rknn.api import RKNN; print(RKNN.__name__)' 2>&1)"; then
    echo "rknn-toolkit-env: 'from rknn.api import RKNN' fails in $VENV:" >&2
    echo "$out" >&2
    exit 1
fi
version="$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("rknn-toolkit2"))')"
echo "rknn-toolkit2 $version ready in $VENV: build models with"
echo "  $VENV/bin/python scripts/build_rknn_models.py models/ --config rk3588 --check"
