#!/usr/bin/env bash
# gsnb on a CUDA GPU: activation caching, JumpReLU training, and attribution graphs against
# circuit-tracer on the same GPU (benchmarks/bench_gpu.py says what each measures).
#
#   bash benchmarks/gpu.sh            # estimated 6-8 minutes on one H100/H200 after set-up
#   bash benchmarks/gpu.sh --quick    # estimated 4-5 minutes
#   bash benchmarks/gpu.sh --device cpu --quick   # dry run of the code path on a CPU (tiny sizes)
#
# Sets everything up itself: gsnb's .venv and the embedded model (`make model`; the CUDA build of
# the locked torch where a GPU is present), and circuit-tracer's own venv (scripts/peers.py).
# GSNB_PYTHON=/path/to/python uses that interpreter (gsnb importable) instead of `make model`.
# With no GPU and no `--device cpu`, it says so and exits with status 0 without measuring. If the
# peer's venv cannot be made (no package index), gsnb is measured alone (speed-ups print nan).
set -euo pipefail
cd "$(dirname "$0")/.."

device=cuda
prev=
for arg in "$@"; do
  case "$arg" in
    --device=*) device="${arg#--device=}" ;;
    *) [[ "$prev" == --device ]] && device="$arg" ;;
  esac
  prev="$arg"
done

if [[ "$device" == cuda* ]]; then
  if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L 2>/dev/null | grep -q '^GPU'; then
    echo "gpu.sh: no NVIDIA GPU found (nvidia-smi lists none); nothing measured."
    echo "gpu.sh: run it on a machine with a CUDA GPU, or 'bash benchmarks/gpu.sh --device cpu --quick' for a dry run."
    exit 0
  fi
  nvidia-smi -L
fi

if [[ -n "${GSNB_PYTHON:-}" ]]; then
  py="$GSNB_PYTHON"
else
  make --no-print-directory model >/dev/null
  py=.venv/bin/python
fi

if [[ "$device" == cuda* ]] && ! "$py" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
  echo "gpu.sh: nvidia-smi lists a GPU but torch in $py cannot use it (a CPU build of torch, or a driver too old for its CUDA); reinstall torch with CUDA support."
  exit 1
fi

export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
peer=()
if ! "$py" -c 'import sys; sys.path.insert(0, "scripts"); from peers import peer_python; peer_python("circuit-tracer")'; then
  echo "gpu.sh: could not set up circuit-tracer's venv (scripts/peers.py; no package index?); measuring gsnb alone."
  peer=(--no-peer)
fi
exec "$py" benchmarks/bench_gpu.py "$@" ${peer[@]+"${peer[@]}"}
