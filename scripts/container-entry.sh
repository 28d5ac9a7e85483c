#!/usr/bin/env bash
# The lab image's entry point (Containerfile). `lab` (the default) serves JupyterLab on 8888
# for the host to publish; anything else is run as given (`... labkit bash`, `... labkit labkit
# preflight`). First it checks what `docker run` must have given the lab, and says what to add.
set -euo pipefail

say() { printf 'labkit: %s\n' "$*" >&2; }
fstype() { stat -f -c %T "$1"; }

problems=0
if ! mount -t tmpfs none /mnt 2>/dev/null; then
  say "this container may not mount file systems: run it with --privileged"
  problems=1
else
  umount /mnt
fi
for dir in "$LABKIT_HOME" "$LABKIT_WORKDIR"; do
  mkdir -p "$dir"
  if [ "$(fstype "$dir")" = overlayfs ]; then
    say "$dir is on the container's own overlay root: give it a volume (-v labkit-$(basename "$dir"):$dir)"
    problems=1
  fi
done
[ "$problems" = 0 ] || exit 2

# A restarted container is like a rebooted machine: take down what the last run's ledger
# still lists (its mounts and cgroups are gone already) before anything new is made.
labkit reset >/dev/null || say "warning: labkit reset failed; run it by hand"

if [ "${1:-lab}" = lab ]; then
  if [ -z "${JUPYTER_TOKEN:-}" ]; then
    JUPYTER_TOKEN=$(python -c 'import secrets; print(secrets.token_hex(16))')
    export JUPYTER_TOKEN
    say "no JUPYTER_TOKEN given; this run's token is $JUPYTER_TOKEN"
  fi
  exec make -C /opt/labkit lab VENV=/opt/labkit/venv IP=0.0.0.0 PORT=8888
fi
exec "$@"
