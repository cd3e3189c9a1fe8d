#!/bin/bash
# Trains a config on every worker of a Cloud TPU VM (a single host or a pod
# slice): creates the TPU unless it exists, copies this checkout to every
# worker, installs it there with JAX for TPU, and starts the same command on
# all workers at once. JAX finds the other workers itself (no coordinator
# flags), and each worker reads only its rows of every batch.
#
#   launch/tpu_pod.sh --name=r50 --zone=us-central2-b --accelerator=v4-32 \
#     --config=configs/imagenet_resnet50.py --workdir=gs://BUCKET/r50 \
#     -- --config.data.data_dir=gs://BUCKET/tfds
#
# The workdir must be shared by all workers: a gs:// path (install gcsfs and
# google-cloud-storage, done here) or a mounted file system. Flags after `--`
# go to sgd_quad.main. --dry-run prints the commands instead of running them.
set -euo pipefail

usage() {
  cat >&2 <<'EOF'
usage: launch/tpu_pod.sh --name=NAME --zone=ZONE --config=FILE --workdir=DIR
         [--accelerator=v4-32] [--version=tpu-ubuntu2204-base]
         [--project=PROJECT] [--spot] [--background] [--dry-run]
         [-- sgd_quad.main flags]
EOF
  exit 2
}

name='' zone='' config='' workdir='' project=''
accelerator='v4-32' version='tpu-ubuntu2204-base'
spot=0 background=0 dry_run=0
extra=()
while (($#)); do
  case "$1" in
    --name=*) name="${1#*=}" ;;
    --zone=*) zone="${1#*=}" ;;
    --config=*) config="${1#*=}" ;;
    --workdir=*) workdir="${1#*=}" ;;
    --project=*) project="${1#*=}" ;;
    --accelerator=*) accelerator="${1#*=}" ;;
    --version=*) version="${1#*=}" ;;
    --spot) spot=1 ;;
    --background) background=1 ;;
    --dry-run) dry_run=1 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "error: unknown argument $1" >&2; usage ;;
  esac
  shift
done
for required in name zone config workdir; do
  if [[ -z "${!required}" ]]; then
    echo "error: --${required} is required" >&2
    usage
  fi
done

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tpu=(gcloud compute tpus tpu-vm)
where=(--zone="$zone")
if [[ -n "$project" ]]; then
  where+=(--project="$project")
fi

# Shell-quotes one word for printing: bare when safe, else in single quotes.
quote() {
  if [[ "$1" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\\\'\'}"
  fi
}

# Prints a command (shell-quoted), and runs it unless this is a dry run.
run() {
  printf '+'
  for word in "$@"; do
    printf ' %s' "$(quote "$word")"
  done
  printf '\n'
  if ((!dry_run)); then
    "$@"
  fi
}

# 1. Reuse the TPU if it exists, else create it.
create=("${tpu[@]}" create "$name" "${where[@]}"
  --accelerator-type="$accelerator" --version="$version")
if ((spot)); then
  create+=(--spot)
fi
if ((dry_run)); then
  echo "# create the TPU unless \`${tpu[*]} describe $name\` finds it:"
  run "${create[@]}"
elif "${tpu[@]}" describe "$name" "${where[@]}" >/dev/null 2>&1; then
  echo "Reusing TPU $name."
else
  run "${create[@]}"
fi

# 2. Copy this checkout (without the venv and local workdirs) to every
# worker and install it with JAX for TPU.
archive="${TMPDIR:-/tmp}/sgd_quad_${name}.tar.gz"
run tar -czf "$archive" -C "$root" --exclude=.venv --exclude=workdirs \
  --exclude=.git --exclude='*.egg-info' .
run "${tpu[@]}" scp "$archive" "$name:sgd_quad.tar.gz" "${where[@]}" \
  --worker=all
install='rm -rf ~/sgd_quad && mkdir -p ~/sgd_quad'
install+=' && tar -xzf ~/sgd_quad.tar.gz -C ~/sgd_quad'
install+=' && python3 -m pip install --quiet --upgrade pip'
install+=" && python3 -m pip install --quiet -e ~/sgd_quad"
install+=" 'jax[tpu]>=0.10,<0.11' gcsfs google-cloud-storage"
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$install"

# 3. The same command on all workers at once.
train='python3 -m sgd_quad.main'
for arg in "--config=$config" "--workdir=$workdir" "${extra[@]}"; do
  train+=" $(quote "$arg")"
done
if ((background)); then
  train="cd ~/sgd_quad && nohup $train > ~/sgd_quad.log 2>&1 &"
else
  train="cd ~/sgd_quad && $train"
  echo "# logs: ${tpu[*]} ssh $name --zone=$zone --worker=0" \
    "--command='tail -f ~/sgd_quad.log'"
fi
run "${tpu[@]}" ssh "$name" "${where[@]}" --worker=all --command="$train"
