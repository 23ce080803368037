#!/usr/bin/env bash
# Install rnd from nothing into ./.venv: the Debian data package, CPU PyTorch, the package itself.
#   scripts/install.sh          runtime only
#   scripts/install.sh dev      plus test, lint, docs and release tools, Ray, the server, PostgreSQL key
#                               stores and ImageNet (all tested in CI; Debian's postgresql server for the tests)
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-}"

debs=()
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] || debs+=(dataset-fashion-mnist)
# the tests of the PostgreSQL key store start a throwaway server of their own (initdb, pg_ctl)
if [ "$extras" = "dev" ] && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then debs+=(postgresql); fi
if [ "${#debs[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${debs[@]}" >/dev/null
fi

[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null 2>&1 || true
# the CPU build first, so the loose torch>=2.3 requirement below installs nothing more
.venv/bin/python -m pip install -q torch==2.13.0
# a checkout installed before the rename to rnd-defense: drop the old distribution (same files)
.venv/bin/python -m pip uninstall -q -y rnd >/dev/null 2>&1 || true
if [ "$extras" = "dev" ]; then
    .venv/bin/python -m pip install -q -e '.[dev,docs,ray,serve,imagenet,postgres]'
else
    .venv/bin/python -m pip install -q -e .
fi
echo "rnd installed in .venv ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
