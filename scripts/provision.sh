#!/usr/bin/env bash
# The one install script: `make lab`, `make test`, CI and the Vagrantfile all call it.
# Idempotent: it installs only what is missing, so the second run takes a second or two.
#
#   scripts/provision.sh            Debian packages + the virtual environment in .venv
#   LABKIT_VENV=/opt/labkit/venv scripts/provision.sh    another place for the venv
#   scripts/provision.sh --list     the system packages it would want here, then stop
set -euo pipefail

repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${LABKIT_VENV:-$repo/.venv}

say() { printf 'provision: %s\n' "$*"; }

# Debian 12 (the VM, the lab image, this repository's CI) and Ubuntu 24.04 (GitHub's runners,
# for instructors' lesson CI) are provisioned; anything else gets a warning and a try.
os_id=${LABKIT_OS_ID:-$(. /etc/os-release && echo "$ID")}     # LABKIT_OS_ID: see another's list
case "$os_id" in
  debian|ubuntu) ;;
  *) say "warning: this script is written for Debian 12 and Ubuntu 24.04; other systems need the same packages by hand." ;;
esac

# Debian packages. Later lessons add their tools here; nothing else is fetched from anywhere.
deb_packages=(
  python3 python3-venv python3-dev gcc libc6-dev make git   # the venv; lesson 07's toolchain image
  graphviz                                        # pictures in every lesson (dot)
  busybox-static                                  # the offline base image
  skopeo umoci runc                               # the real OCI tools the lessons compare with
  btrfs-progs                                     # lesson 04: btrfs snapshots
  iproute2 util-linux attr kmod                   # ip, mount/unshare/nsenter, getfattr, modprobe
  libseccomp2                                     # containers' seccomp filter (pyseccomp loads it)
  docker-registry                                 # lesson 08: the reference registry to compare with
)
# Test tools, not lab tools: only with LABKIT_TEST_TOOLS=1 (`make test`, `make bench` set it), so a
# learner's VM gets what the course needs and nothing else.
test_packages=(
  podman                                          # the oracle labkit's builds and runs are compared with
  chromium                                        # the real-browser test of every lesson (playwright)
  vagrant                                         # `vagrant validate` checks the Vagrantfile (no VM boots here)
)
if [ "$os_id" = ubuntu ]; then
  # Ubuntu's chromium package only installs the snap, which cannot be driven as root here: the
  # browser test takes LABKIT_BROWSER (GitHub's runners have /usr/bin/google-chrome). Ubuntu has
  # docker-registry, umoci and busybox-static in universe.
  test_packages=("${test_packages[@]/chromium}")
fi
# The slow end-to-end checks' tools, only with LABKIT_E2E_TOOLS=1 (`make image-test`, `make vm-test`):
# a Debian base made with debootstrap, a box booted under QEMU by vagrant-libvirt.
e2e_packages=(debootstrap fdisk qemu-system-x86 qemu-utils qemu-user-static libvirt-daemon-system vagrant-libvirt dnsmasq-base)
if [ "${LABKIT_TEST_TOOLS:-0}" = 1 ]; then
  for p in "${test_packages[@]}"; do [ -z "$p" ] || deb_packages+=("$p"); done
fi
if [ "${LABKIT_E2E_TOOLS:-0}" = 1 ]; then
  deb_packages+=("${e2e_packages[@]}")
fi
if [ "${1:-}" = --list ]; then
  printf '%s\n' "${deb_packages[@]}"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  say "labkit drives mounts, namespaces and cgroups, so it installs and runs as root."
  say "Run it again as root (sudo make lab, or vagrant ssh then sudo -i)."
  exit 1
fi
missing=()
for p in "${deb_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}"; then
    [ "$os_id" != ubuntu ] || say "on Ubuntu, docker-registry and umoci come from the universe component: \
enable it (add-apt-repository universe) and run this again"
    exit 1
  fi
  # Debian starts docker-registry as a service on :5000; the lab runs its own when it needs one.
  if command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl disable --now docker-registry >/dev/null 2>&1 || true
  fi
else
  say "Debian packages: all ${#deb_packages[@]} present"
fi

# OverlayFS may be a module that is not loaded yet on a fresh VM.
grep -qw overlay /proc/filesystems || modprobe overlay || say "warning: could not load the overlay module"

# The virtual environment, from Debian's python3 (never a pyenv shim), with labkit installed
# editable from pyproject.toml. A stamp holds the hash of pyproject.toml: same hash, no pip run.
if [ ! -x "$venv/bin/python" ]; then
  say "creating the virtual environment in $venv"
  /usr/bin/python3 -m venv "$venv"
fi
extras=lab stamp="$venv/.labkit-provisioned"
if [ "${LABKIT_TEST_TOOLS:-0}" = 1 ]; then
  extras=lab,test stamp="$venv/.labkit-provisioned-test"
fi
want=$(sha256sum "$repo/pyproject.toml" | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! "$venv/bin/python" -c 'import labkit' 2>/dev/null; then
  say "installing Python packages from pyproject.toml ($extras extras)"
  "$venv/bin/python" -m pip install -q --upgrade pip
  "$venv/bin/python" -m pip install -q -e "$repo[$extras]"
  echo "$want" > "$stamp"
else
  say "Python packages: up to date with pyproject.toml"
fi
# Bytecode for labkit, made now: with PYTHONDONTWRITEBYTECODE set (Debian images often set it)
# every `labkit` command would compile its modules again, about 35 ms. Up-to-date files are skipped.
"$venv/bin/python" -m compileall -q "$repo/labkit" >/dev/null
# JupyterLab settings for every user of this venv: widget state is saved in the notebook, so a
# learner's sliders and outputs are still there after reopening it (FACTS.md: off by default).
settings="$venv/share/jupyter/lab/settings"
mkdir -p "$settings"
cat > "$settings/overrides.json" <<'JSON'
{
  "@jupyter-widgets/jupyterlab-manager:plugin": {"saveState": true}
}
JSON
say "ready: $venv/bin/labkit preflight"
