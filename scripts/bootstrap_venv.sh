#!/usr/bin/env bash
# Create .venv with a Python >= 3.11 found on this machine.
#
# Debian and Ubuntu ship python3 without the venv module (package python3.X-venv); when it is
# missing and we may run apt-get (root, or passwordless sudo), it is installed here so that
# `make up` needs no manual step.
set -euo pipefail

VENV="${1:-.venv}"
if [[ -x "$VENV/bin/python" ]]; then
  exit 0
fi

PYTHON=""
for candidate in "${PYTHON_BIN:-}" python3.13 python3.12 python3.11 python3; do
  [[ -n "$candidate" ]] || continue
  if command -v "$candidate" >/dev/null 2>&1 &&
    "$candidate" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    PYTHON="$candidate"
    break
  fi
done
if [[ -z "$PYTHON" ]]; then
  echo "error: Python 3.11 or newer is needed (tried python3.13, python3.12, python3.11, python3)" >&2
  exit 1
fi

if ! "$PYTHON" -m venv "$VENV" 2>/dev/null; then
  rm -rf "$VENV"
  version="$("$PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')"
  package="python${version}-venv"
  if command -v apt-get >/dev/null 2>&1; then
    if [[ "$(id -u)" == 0 ]]; then
      echo "installing $package (the venv module Debian ships separately)" >&2
      apt-get install -y -q "$package" >&2
    elif sudo -n true 2>/dev/null; then
      echo "installing $package with sudo (the venv module Debian ships separately)" >&2
      sudo -n apt-get install -y -q "$package" >&2
    else
      echo "error: $PYTHON has no venv module; run: sudo apt-get install $package" >&2
      exit 1
    fi
    "$PYTHON" -m venv "$VENV"
  else
    echo "error: $PYTHON cannot create a virtual environment (no venv module)" >&2
    exit 1
  fi
fi
echo "created $VENV with $("$VENV/bin/python" --version)" >&2
