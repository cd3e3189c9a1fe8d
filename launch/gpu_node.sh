#!/bin/bash
# Trains a config on the GPUs of one machine.
#
#   launch/gpu_node.sh --config=configs/cifar10.py --workdir=/data/runs/c10 \
#     [--gpus=0,1,2,3] [--dry-run] [-- --config.num_steps=20000]
#
# One process drives every visible GPU: JAX puts all of them in the mesh and
# splits each batch over them, so no distributed runtime is needed on a
# single node (for several nodes, see launch/slurm.sbatch). --gpus limits the
# GPUs used (CUDA_VISIBLE_DEVICES). Flags after `--` go to sgd_quad.main;
# PYTHON picks the interpreter (default: python3). --dry-run prints the
# command instead of running it.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: launch/gpu_node.sh --config=FILE --workdir=DIR [--gpus=0,1,...]
         [--dry-run] [-- sgd_quad.main flags]
EOF
  exit 2
}

config='' workdir='' gpus='' dry_run=0
extra=()
while (($#)); do
  case "$1" in
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --gpus=*) gpus="${1#*=}" ;;
    --dry-run) dry_run=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "error: unknown argument $1" >&2; usage ;;
  esac
  shift
done
if [[ -z "$config" || -z "$workdir" ]]; then
  echo "error: --config and --workdir are required" >&2
  usage
fi
if [[ -n "$gpus" && ! "$gpus" =~ ^[0-9]+(,[0-9]+)*$ ]]; then
  echo "error: --gpus=$gpus; allowed: comma-separated GPU indices" >&2
  exit 2
fi

# Shell-quotes one word for printing: bare when safe, else in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
command=(env)
if [[ -n "$gpus" ]]; then
  command+=(CUDA_VISIBLE_DEVICES="$gpus")
fi
# JAX preallocates 75% of GPU memory by default; the input pipeline and
# evaluation fit in the rest.
command+=("${PYTHON:-python3}" -m sgd_quad.main --config="$config"
  --workdir="$workdir" "${extra[@]}")

printf '+ cd %s &&' "$(quote "$root")"
for word in "${command[@]}"; do
  printf ' %s' "$(quote "$word")"
done
printf '\n'
if ((!dry_run)); then
  cd "$root"
  exec "${command[@]}"
fi
