#!/usr/bin/env bash
# A Debian 12 root file system made with debootstrap(8), from the apt mirror this machine already
# uses (read from its apt sources; no mirror is named here), kept as a tar in a cache: the base of
# the lab's container image when no registry can give `debian:12` (make image-test).
#
#   scripts/debian-base.sh            print the tar's path, making it first if it is missing
#   LABKIT_CACHE=/somewhere scripts/debian-base.sh
#   LABKIT_ARCH=arm64 scripts/debian-base.sh      another architecture's (its binaries run through
#                                                 qemu-user-static: scripts/binfmt.sh registers it)
set -euo pipefail

cache=${LABKIT_CACHE:-/var/cache/labkit}
arch=${LABKIT_ARCH:-$(dpkg --print-architecture)}
tar=$cache/debian-12-rootfs.tar
[ "$arch" = "$(dpkg --print-architecture)" ] || tar=$cache/debian-12-rootfs-$arch.tar
say() { printf 'debian-base: %s\n' "$*" >&2; }

if [ -s "$tar" ]; then
  echo "$tar"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  say "debootstrap makes device files and chroots: run it as root"; exit 1
fi
command -v debootstrap >/dev/null || { say "debootstrap is missing: apt-get install debootstrap"; exit 1; }

mirror=$("$(dirname "$0")/apt-mirror.sh")

mkdir -p "$cache"
root=$(mktemp -d "$cache/rootfs.XXXX")
trap 'rm -rf "$root"' EXIT
say "debootstrap bookworm (minbase, $arch) from $mirror into $root"
debootstrap --arch="$arch" --variant=minbase --include=ca-certificates bookworm "$root" "$mirror" >&2
"$(dirname "$0")/apt-mirror.sh" --sources-list > "$root/etc/apt/sources.list"
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
tar --numeric-owner --xattrs -C "$root" -cf "$tar.part" .
mv "$tar.part" "$tar"
say "made $tar ($(du -h "$tar" | cut -f1))"
echo "$tar"
