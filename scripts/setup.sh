#!/usr/bin/env bash
# Installs everything adaptive-sched needs for development on Debian/Ubuntu with Python >= 3.10:
# the PoCL OpenCL driver (so the OpenCL executor runs for real on the CPU) and the package with
# all its extras into .venv. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! dpkg -s pocl-opencl-icd >/dev/null 2>&1 || ! dpkg -s ocl-icd-libopencl1 >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    $SUDO apt-get update -qq
    # PyPI's pyopencl wheels carry a PoCL that cannot compile kernels on some CPUs;
    # Debian's PoCL works everywhere we tried.
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq pocl-opencl-icd ocl-icd-libopencl1 >/dev/null
fi

PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
# export: the tests of `export --format parquet` need pyarrow
.venv/bin/python -m pip install -q -e ".[dev,opencl,rknn,plots,metrics,export]"
# the second line says whether the latency model was compiled (it needs a C compiler; see README)
.venv/bin/adaptive-sched --version
echo "adaptive-sched installed in .venv: run the tests with .venv/bin/python -m pytest"
