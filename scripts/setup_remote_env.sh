#!/usr/bin/env bash
# Prepare a GPU server for the training platform; run ON that server.
#
#   scripts/setup_remote_env.sh --venv DIR [--set gpu-verl|train-cpu] [--source DIR] [--check]
#
# Without --check: create DIR as a virtual environment with python3.11 (or $PYTHON; older than
# 3.11 is refused), install the pinned set environments/<set>.txt (default gpu-verl) from the
# source directory (default: the one holding scripts/), torch held to the set's pin by a
# constraints file, then the platform itself from the source directory (`pip install --no-deps`,
# not editable). Rerunning is cheap: pip skips what is installed.
#
# Always (and only, with --check): print ONE line of JSON to stdout describing the environment:
#   {"python", "venv", "platform", "torch", "torch_cuda", "cuda_available", "verl", "driver",
#    "gpus", "ok", "problems"}
# ok is false, with problems listed, when the platform or torch is missing. Progress and pip's
# output go to stderr. Exit status: 0 when ok, 1 when not (or the install failed), 2 on bad usage.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: setup_remote_env.sh --venv DIR [--set gpu-verl|train-cpu] [--source DIR] [--check]

  --venv DIR     the virtual environment to create or describe (required)
  --set NAME     pinned set to install from environments/: gpu-verl (default) or train-cpu
  --source DIR   the platform's source directory (default: the parent of scripts/)
  --check        only describe DIR as one line of JSON (no install)

PYTHON=python3.X picks the interpreter for a new venv (default python3.11; 3.11 or newer).
EOF
}

bad_usage() {
  echo "error: $1" >&2
  usage
  exit 2
}

log() {
  echo "setup_remote_env: $*" >&2
}

VENV=""
SET="gpu-verl"
SOURCE=""
CHECK=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --venv | --set | --source)
      [[ $# -ge 2 && -n "$2" ]] || bad_usage "$1 needs a value"
      case "$1" in
        --venv) VENV="$2" ;;
        --set) SET="$2" ;;
        --source) SOURCE="$2" ;;
      esac
      shift 2
      ;;
    --venv=?*) VENV="${1#--venv=}" && shift ;;
    --set=?*) SET="${1#--set=}" && shift ;;
    --source=?*) SOURCE="${1#--source=}" && shift ;;
    --check) CHECK=1 && shift ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) bad_usage "unknown argument: $1" ;;
  esac
done
[[ -n "$VENV" ]] || bad_usage "--venv DIR is required"
case "$SET" in
  gpu-verl | train-cpu) ;;
  *) bad_usage "--set must be gpu-verl or train-cpu, not '$SET'" ;;
esac
if [[ -z "$SOURCE" ]]; then
  SOURCE="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
fi

# --- describing the environment ------------------------------------------------------------

# A JSON string literal for $1.
json_string() {
  local text="$1" out="" char i code
  for ((i = 0; i < ${#text}; i++)); do
    char="${text:i:1}"
    case "$char" in
      '"') out+='\"' ;;
      '\') out+='\\' ;;
      $'\n') out+='\n' ;;
      $'\r') out+='\r' ;;
      $'\t') out+='\t' ;;
      *)
        printf -v code '%d' "'$char" 2>/dev/null || code=32
        if ((code >= 0 && code < 32)); then
          printf -v char '\\u%04x' "$code"
        fi
        out+="$char"
        ;;
    esac
  done
  printf '"%s"' "$out"
}

# The NVIDIA driver version and GPU count, from nvidia-smi (none: empty and 0).
DRIVER=""
GPUS=0
probe_gpus() {
  local lines
  if ! command -v nvidia-smi >/dev/null 2>&1; then
    return 0
  fi
  if ! lines="$(nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null)"; then
    log "nvidia-smi failed; counting no GPUs"
    return 0
  fi
  lines="$(printf '%s\n' "$lines" | sed -e 's/[[:space:]]*$//' -e '/^$/d')"
  if [[ -n "$lines" ]]; then
    GPUS="$(printf '%s\n' "$lines" | wc -l | tr -d ' ')"
    DRIVER="$(printf '%s\n' "$lines" | head -n 1)"
  fi
}

# Print the JSON line; returns 0 when ok, 1 when not.
describe() {
  local venv_python="$VENV/bin/python" venv_shown="$VENV"
  probe_gpus
  if [[ -d "$VENV" ]]; then
    venv_shown="$(cd "$VENV" && pwd)"
  fi
  if [[ -x "$venv_python" ]] && "$venv_python" -I -c 'pass' >/dev/null 2>&1; then
    TP_VENV="$venv_shown" TP_DRIVER="$DRIVER" TP_GPUS="$GPUS" "$venv_python" -I - <<'PY'
import contextlib
import json
import os
import platform
import sys
from importlib import metadata


def version(name):
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


problems = []
info = {
    "python": platform.python_version(),
    "venv": os.environ["TP_VENV"],
    "platform": version("training-platform"),
    "torch": None,
    "torch_cuda": None,
    "cuda_available": None,
    "verl": version("verl"),
    "driver": os.environ["TP_DRIVER"] or None,
    "gpus": int(os.environ["TP_GPUS"]),
}
# Whatever the imports print goes to stderr: stdout carries the JSON line only.
with contextlib.redirect_stdout(sys.stderr):
    if info["platform"] is None:
        problems.append("the platform (training-platform) is not installed")
    else:
        try:
            import training_platform  # noqa: F401
        except Exception as error:
            problems.append(f"training_platform does not import: {error!r}")
    if version("torch") is None:
        problems.append("torch is not installed")
    else:
        try:
            import torch

            info["torch"] = torch.__version__
            info["torch_cuda"] = torch.version.cuda
            info["cuda_available"] = bool(torch.cuda.is_available())
        except Exception as error:
            info["torch"] = version("torch")
            problems.append(f"torch does not import: {error!r}")
info["ok"] = not problems
info["problems"] = problems
print(json.dumps(info))
sys.exit(0 if info["ok"] else 1)
PY
    return $?
  fi

  local problem
  if [[ -e "$venv_python" ]]; then
    problem="$venv_python does not run"
  else
    problem="no virtual environment at $VENV (no bin/python)"
  fi
  printf '{"python": null, "venv": %s, "platform": null, "torch": null, "torch_cuda": null, ' \
    "$(json_string "$venv_shown")"
  printf '"cuda_available": null, "verl": null, "driver": %s, "gpus": %s, "ok": false, ' \
    "$([[ -n "$DRIVER" ]] && json_string "$DRIVER" || echo null)" "$GPUS"
  printf '"problems": [%s, %s, %s]}\n' "$(json_string "$problem")" \
    "$(json_string "the platform (training-platform) is not installed")" \
    "$(json_string "torch is not installed")"
  return 1
}

if [[ "$CHECK" == 1 ]]; then
  status=0
  describe || status=$?
  exit "$status"
fi

# --- installing ------------------------------------------------------------------------------

[[ -d "$SOURCE" ]] || bad_usage "--source $SOURCE is not a directory"
SET_FILE="$SOURCE/environments/$SET.txt"
if [[ ! -f "$SET_FILE" ]]; then
  echo "error: no pinned set at $SET_FILE" >&2
  exit 1
fi
if [[ ! -f "$SOURCE/pyproject.toml" ]]; then
  echo "error: $SOURCE holds no pyproject.toml (not the platform's source directory)" >&2
  exit 1
fi

# torch must be pinned exactly, once: an unpinned torch lets pip fetch gigabytes of CUDA wheels.
torch_lines="$(grep -E '^[[:space:]]*torch[[:space:]]*([=<>!~;[]|$)' "$SET_FILE" || true)"
if [[ -z "$torch_lines" || "$(printf '%s\n' "$torch_lines" | wc -l)" -ne 1 ]] ||
  ! [[ "$torch_lines" =~ ^torch==[0-9][0-9A-Za-z.+!-]*$ ]]; then
  echo "error: $SET_FILE must pin torch exactly once as torch==VERSION (found: ${torch_lines:-none})" >&2
  exit 1
fi

# The interpreter for a new venv: 3.11 or newer.
python_ok() {
  "$1" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' 2>/dev/null
}
python_version() {
  "$1" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null || echo unknown
}

if [[ -x "$VENV/bin/python" ]]; then
  if ! python_ok "$VENV/bin/python"; then
    echo "error: $VENV exists with Python $(python_version "$VENV/bin/python");" \
      "the platform needs 3.11 or newer (remove $VENV or pick another --venv)" >&2
    exit 1
  fi
  log "using the existing venv $VENV (Python $(python_version "$VENV/bin/python"))"
else
  PYTHON="${PYTHON:-python3.11}"
  if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "error: $PYTHON not found; install Python 3.11 or set PYTHON=/path/to/python3.11+" >&2
    exit 1
  fi
  if ! python_ok "$PYTHON"; then
    echo "error: $PYTHON is Python $(python_version "$PYTHON"); the platform needs 3.11 or newer" \
      "(set PYTHON=/path/to/python3.11+)" >&2
    exit 1
  fi
  log "creating $VENV with $PYTHON (Python $(python_version "$PYTHON"))"
  if ! "$PYTHON" -m venv "$VENV" >&2; then
    echo "error: $PYTHON could not create $VENV; on Debian/Ubuntu install" \
      "python$("$PYTHON" -c 'import sys; print("%d.%d" % sys.version_info[:2])')-venv" >&2
    exit 1
  fi
fi

constraints="$(mktemp)"
trap 'rm -f "$constraints"' EXIT
printf '%s\n' "$torch_lines" >"$constraints"

export PIP_DISABLE_PIP_VERSION_CHECK=1
pip=("$VENV/bin/python" -m pip)

log "installing $SET_FILE ($torch_lines)"
"${pip[@]}" install -r "$SET_FILE" -c "$constraints" >&2

log "installing the platform from $SOURCE (no dependencies)"
"${pip[@]}" install --no-deps -c "$constraints" "$SOURCE" >&2

log "done; the environment:"
status=0
describe || status=$?
exit "$status"
