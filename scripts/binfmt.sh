#!/usr/bin/env bash
# Let this machine run another architecture's binaries through qemu-user-static, the way a
# multi-arch image build does (binfmt_misc: Documentation/admin-guide/binfmt-misc.rst).
# Registers the handler Debian's qemu-user-static ships in /usr/lib/binfmt.d, which systemd
# would register at boot; machines without systemd (this one, containers) need it done by hand.
#
#   scripts/binfmt.sh arm64            register qemu-aarch64 if it is not registered; prints
#                                      "registered" or "already" (then leave it on removal)
#   scripts/binfmt.sh --remove arm64   unregister it
set -euo pipefail

remove=
[ "${1:-}" = "--remove" ] && { remove=1; shift; }
case "${1:-}" in
  arm64|aarch64) name=qemu-aarch64 ;;
  *) echo "binfmt: say which architecture: arm64" >&2; exit 2 ;;
esac
dir=/proc/sys/fs/binfmt_misc
conf=/usr/lib/binfmt.d/$name.conf
[ -e "$dir/register" ] || mount -t binfmt_misc binfmt_misc "$dir"
if [ -n "$remove" ]; then
  [ -e "$dir/$name" ] && echo -1 > "$dir/$name"
  exit 0
fi
if [ -e "$dir/$name" ]; then
  echo already
  exit 0
fi
[ -s "$conf" ] || { echo "binfmt: $conf is missing: apt-get install qemu-user-static" >&2; exit 1; }
# F: the interpreter is opened now, so it also runs inside chroots and containers
grep -v '^#' "$conf" > "$dir/register"
echo registered
