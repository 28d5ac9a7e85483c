#!/usr/bin/env bash
# Print the apt mirror this machine uses for Debian 12 (bookworm) main (read from its apt
# sources, so no mirror is named here): debian-base.sh and vm-box.sh debootstrap from it.
#
#   scripts/apt-mirror.sh                  the mirror
#   scripts/apt-mirror.sh --sources-list   a sources.list for the new system (main, updates, security)
set -euo pipefail
targets=$(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT) $(TARGET_OF)')
mirror=$(awk '$2 == "bookworm" && $3 == "main" && $4 == "deb" {print $1; exit}' <<<"$targets")
security=$(awk '$2 == "bookworm-security" && $3 == "main" && $4 == "deb" {print $1; exit}' <<<"$targets")
if [ -z "$mirror" ]; then
  echo "apt-mirror: this machine's apt sources have no Debian 12 (bookworm) main component;" \
       "add one to /etc/apt/sources.list.d and run apt-get update" >&2
  exit 1
fi
if [ "${1:-}" = --sources-list ]; then
  echo "deb $mirror bookworm main"
  echo "deb $mirror bookworm-updates main"
  [ -z "$security" ] || echo "deb $security bookworm-security main"
else
  echo "$mirror"
fi
