#!/usr/bin/env bash
# Runs one pbrl_jax command on every worker of a Cloud TPU VM or pod slice.
#
# Creates the TPU (or reuses it when it exists), puts the project on every worker (git clone
# of --repo/--branch, or a copy of this checkout with --copy), installs it in a virtual
# environment with jax[tpu], then runs the same `pbrl-train` command on all workers at once
# (`--worker=all`) and streams their output here (also saved to --log). Every worker calls
# jax.distributed.initialize() itself (PBRL_MULTIHOST=1, see pbrl_jax/distributed.py).
#
# Example:
#   launch/tpu_pod.sh --name pbrl-v4 --zone us-central2-b --accelerator-type v4-32 --spot \
#     --config configs/llama31_8b_grpo.py --workdir gs://my-bucket/runs/llama8b -- \
#     --config.total_steps=200
# Everything after `--` is passed to pbrl-train unchanged. A gs:// workdir is passed as it is
# (pbrl-pivot, pbrl-train and pbrl-eval write to buckets directly); with --gcsfuse it is
# mounted at /gcs/BUCKET on every worker and passed as that path instead (for commands that
# write local files only, such as pbrl-compare). --dry-run prints every command instead of
# running it. See launch/README.md.

set -euo pipefail

usage() {
  cat <<'EOF'
Usage: launch/tpu_pod.sh --name NAME --zone ZONE --config CONFIG --workdir DIR [options] [-- ARGS]

Required:
  --name NAME               TPU VM / pod slice name.
  --zone ZONE               e.g. us-central2-b, us-west4-a, europe-west4-a.
  --config CONFIG           training config, e.g. configs/llama31_8b_grpo.py[:variant].
  --workdir DIR             gs://bucket/path (every worker must see the same directory on
                            multi-host slices) or a worker path.
Options:
  --accelerator-type TYPE   v5litepod-8 (default), v5litepod-16, v6e-8, v4-8, v4-32, v5p-8, ...
  --version RUNTIME         TPU software version (default picked from the accelerator type).
  --project PROJECT         gcloud project (default: gcloud's configured project).
  --spot                    Spot capacity (cheaper, preemptible).
  --queued                  Create through queued resources and wait until ACTIVE.
  --repo URL                git repository to clone on the workers (default: origin of this
                            checkout).
  --branch BRANCH           branch or tag to check out (default: main).
  --copy                    copy this checkout (tracked files) instead of cloning.
  --command CMD             entry point to run instead of pbrl-train (e.g. pbrl-eval).
  --gcsfuse                 mount a gs:// workdir's bucket with gcsfuse at /gcs/BUCKET on
                            every worker and pass that path (for a --command that writes
                            local files only; pbrl-pivot/train/eval write to gs:// directly).
  --log FILE                local copy of the streamed output (default: NAME-train.log).
  --skip-create             the TPU exists; do not describe or create it.
  --skip-install            the project is already installed on the workers.
  --delete                  delete the TPU after the command finishes.
  --dry-run                 print every command instead of running it.
  -h, --help                this help.
EOF
}

die() {
  echo "tpu_pod.sh: $*" >&2
  exit 2
}

NAME=""
ZONE=""
CONFIG=""
WORKDIR=""
ACCEL="v5litepod-8"
VERSION=""
PROJECT=""
SPOT=0
GCSFUSE=0
QUEUED=0
REPO=""
BRANCH="main"
COPY=0
ENTRY="pbrl-train"
LOG=""
SKIP_CREATE=0
SKIP_INSTALL=0
DELETE=0
DRY_RUN=0
TRAIN_ARGS=()

need_value() {
  [[ $# -ge 2 && -n "$2" ]] || die "$1 needs a value"
}

while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) need_value "$@"; NAME="$2"; shift 2 ;;
    --zone) need_value "$@"; ZONE="$2"; shift 2 ;;
    --config) need_value "$@"; CONFIG="$2"; shift 2 ;;
    --workdir) need_value "$@"; WORKDIR="$2"; shift 2 ;;
    --accelerator-type) need_value "$@"; ACCEL="$2"; shift 2 ;;
    --version) need_value "$@"; VERSION="$2"; shift 2 ;;
    --project) need_value "$@"; PROJECT="$2"; shift 2 ;;
    --repo) need_value "$@"; REPO="$2"; shift 2 ;;
    --branch) need_value "$@"; BRANCH="$2"; shift 2 ;;
    --command) need_value "$@"; ENTRY="$2"; shift 2 ;;
    --log) need_value "$@"; LOG="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --gcsfuse) GCSFUSE=1; shift ;;
    --queued) QUEUED=1; shift ;;
    --copy) COPY=1; shift ;;
    --skip-create) SKIP_CREATE=1; shift ;;
    --skip-install) SKIP_INSTALL=1; shift ;;
    --delete) DELETE=1; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; TRAIN_ARGS=("$@"); break ;;
    *) usage >&2; die "unknown option: $1" ;;
  esac
done

[[ -n "$NAME" ]] || die "--name is required"
[[ -n "$ZONE" ]] || die "--zone is required"
[[ -n "$CONFIG" ]] || die "--config is required"
[[ -n "$WORKDIR" ]] || die "--workdir is required"
[[ "$NAME" =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
  || die "--name must be lowercase letters, digits and dashes: $NAME"

if [[ -z "$VERSION" ]]; then
  case "$ACCEL" in
    v5litepod-*|v5e-*) VERSION="v2-alpha-tpuv5-lite" ;;
    v6e-*) VERSION="v2-alpha-tpuv6e" ;;
    v5p-*) VERSION="v2-alpha-tpuv5" ;;
    v4-*|v3-*|v2-*) VERSION="tpu-ubuntu2204-base" ;;
    *) die "--accelerator-type $ACCEL: unknown family; pass --version" ;;
  esac
fi
if [[ $COPY -eq 0 && -z "$REPO" ]]; then
  REPO="$(git -C "$(dirname "$0")/.." remote get-url origin 2>/dev/null || true)"
  [[ -n "$REPO" ]] || die "--repo is required (no git origin here), or use --copy"
fi
LOG="${LOG:-$NAME-train.log}"

# Every worker must see the same checkpoints: a gs:// workdir (written through the bucket's
# API), or with --gcsfuse that bucket mounted at the same path on every worker.
BUCKET=""
if [[ "$WORKDIR" == gs://* && $GCSFUSE -eq 1 ]]; then
  rest="${WORKDIR#gs://}"
  BUCKET="${rest%%/*}"
  [[ -n "$BUCKET" ]] || die "--workdir $WORKDIR: no bucket name"
  MOUNT_DIR="/gcs/$BUCKET"
  WORKDIR="$MOUNT_DIR${rest#"$BUCKET"}"
elif [[ "$WORKDIR" =~ ^[A-Za-z][A-Za-z0-9+.-]*:// && "$WORKDIR" != gs://* ]]; then
  die "--workdir $WORKDIR: give a gs:// bucket or a worker path"
elif [[ $GCSFUSE -eq 1 ]]; then
  die "--gcsfuse needs a gs:// --workdir"
fi

GCLOUD_TPU=(gcloud compute tpus tpu-vm)
LOCATION=(--zone="$ZONE")
if [[ -n "$PROJECT" ]]; then
  LOCATION+=(--project="$PROJECT")
fi

# Prints a command, shell-quoted, and runs it unless this is a dry run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  if [[ $DRY_RUN -eq 0 ]]; then
    "$@"
  fi
}

# The same shell command on every worker.
on_all_workers() {
  run "${GCLOUD_TPU[@]}" ssh "$NAME" "${LOCATION[@]}" --worker=all --command="$1"
}

# ---- create or reuse ---------------------------------------------------------------------
create_tpu() {
  local spot=()
  if [[ $SPOT -eq 1 ]]; then
    spot=(--spot)
  fi
  if [[ $QUEUED -eq 1 ]]; then
    run gcloud compute tpus queued-resources create "$NAME" "${LOCATION[@]}" \
      --node-id="$NAME" --accelerator-type="$ACCEL" --runtime-version="$VERSION" \
      "${spot[@]}"
    if [[ $DRY_RUN -eq 1 ]]; then
      echo "# (waits until queued resource $NAME is ACTIVE)"
      return
    fi
    local state=""
    while [[ "$state" != "ACTIVE" ]]; do
      state="$(gcloud compute tpus queued-resources describe "$NAME" "${LOCATION[@]}" \
        --format='value(state.state)')"
      case "$state" in
        FAILED|SUSPENDED) die "queued resource $NAME is $state" ;;
      esac
      echo "queued resource $NAME: ${state:-unknown}; waiting"
      [[ "$state" == "ACTIVE" ]] || sleep 30
    done
  else
    run "${GCLOUD_TPU[@]}" create "$NAME" "${LOCATION[@]}" \
      --accelerator-type="$ACCEL" --version="$VERSION" "${spot[@]}"
  fi
}

if [[ $SKIP_CREATE -eq 0 ]]; then
  if [[ $DRY_RUN -eq 0 ]] && "${GCLOUD_TPU[@]}" describe "$NAME" "${LOCATION[@]}" \
      --format='value(state)' >/dev/null 2>&1; then
    echo "reusing existing TPU $NAME"
  else
    create_tpu
  fi
fi

# ---- install on every worker ---------------------------------------------------------------
REMOTE_DIR="pbrl_jax"
INSTALL="cd $REMOTE_DIR && python3 -m venv .venv && .venv/bin/pip install -q -U pip"
INSTALL+=" && .venv/bin/pip install -q -e . 'jax[tpu]>=0.10,<0.13'"
if [[ $SKIP_INSTALL -eq 0 ]]; then
  if [[ $COPY -eq 1 ]]; then
    ROOT="$(cd "$(dirname "$0")/.." && pwd)"
    ARCHIVE="${TMPDIR:-/tmp}/$NAME-pbrl_jax.tar.gz"
    run git -C "$ROOT" archive --format=tar.gz --prefix="$REMOTE_DIR/" -o "$ARCHIVE" HEAD
    run "${GCLOUD_TPU[@]}" scp "$ARCHIVE" "$NAME:pbrl_jax.tar.gz" "${LOCATION[@]}" --worker=all
    on_all_workers "rm -rf $REMOTE_DIR && tar xzf pbrl_jax.tar.gz && $INSTALL"
  else
    q_repo="$(printf '%q' "$REPO")"
    q_branch="$(printf '%q' "$BRANCH")"
    on_all_workers "if [ -d $REMOTE_DIR/.git ]; then git -C $REMOTE_DIR fetch -q origin \
&& git -C $REMOTE_DIR checkout -q $q_branch && git -C $REMOTE_DIR pull -q --ff-only; \
else git clone -q --branch $q_branch $q_repo $REMOTE_DIR; fi && $INSTALL"
  fi
fi

# ---- mount the workdir's bucket on every worker (again after a restart: mounts do not last) ---
# --rename-dir-limit: Orbax finishes a checkpoint by renaming its temporary directory.
if [[ -n "$BUCKET" ]]; then
  q_bucket="$(printf '%q' "$BUCKET")"
  q_mount="$(printf '%q' "$MOUNT_DIR")"
  GCSFUSE_APT="https://packages.cloud.google.com/apt"
  INSTALL_GCSFUSE="echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] $GCSFUSE_APT \
gcsfuse-\$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null \
&& curl -fsSL $GCSFUSE_APT/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc \
>/dev/null && sudo apt-get update -q && sudo apt-get install -y -q gcsfuse"
  on_all_workers "mountpoint -q $q_mount || { { command -v gcsfuse >/dev/null || \
{ $INSTALL_GCSFUSE; }; } && sudo mkdir -p $q_mount && sudo chown \$(id -u):\$(id -g) $q_mount \
&& gcsfuse --implicit-dirs --rename-dir-limit=100000 $q_bucket $q_mount; }"
fi

# ---- the same command on every worker -------------------------------------------------------
TRAIN=("$ENTRY" --config "$CONFIG" --workdir "$WORKDIR" "${TRAIN_ARGS[@]}")
printf -v TRAIN_Q ' %q' "${TRAIN[@]}"
REMOTE="set -o pipefail; cd $REMOTE_DIR && export PBRL_MULTIHOST=1 PATH=\$PWD/.venv/bin:\$PATH"
REMOTE+=" &&${TRAIN_Q}"
REMOTE+=" 2>&1 | tee -a \$HOME/pbrl_train.log"
if [[ $DRY_RUN -eq 1 ]]; then
  on_all_workers "$REMOTE"
  echo "# (output streamed here and saved to $LOG)"
else
  # pipefail: the exit status is gcloud's, i.e. whether any worker failed.
  on_all_workers "$REMOTE" 2>&1 | tee -a "$LOG"
fi

if [[ $DELETE -eq 1 ]]; then
  if [[ $QUEUED -eq 1 ]]; then
    run gcloud compute tpus queued-resources delete "$NAME" "${LOCATION[@]}" --force --quiet
  else
    run "${GCLOUD_TPU[@]}" delete "$NAME" "${LOCATION[@]}" --quiet
  fi
fi
