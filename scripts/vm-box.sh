#!/usr/bin/env bash
# A Debian 12 Vagrant box for the libvirt provider, made with debootstrap(8) from the apt mirror
# this machine uses (no mirror is named here), cached: what `make vm-test` boots when no box
# can be downloaded. The box is what debian/bookworm64 gives a learner: a vagrant user with
# the Vagrant insecure key and passwordless sudo, sshd, systemd, linux-image-amd64, GRUB on
# the disk, DHCP on eth0, rsync for the synced folder.
#
#   scripts/vm-box.sh            print the .box path, making it first if it is missing
#   LABKIT_CACHE=/somewhere scripts/vm-box.sh
set -euo pipefail

cache=${LABKIT_CACHE:-/var/cache/labkit}
box=$cache/debian-12-libvirt.box
say() { printf 'vm-box: %s\n' "$*" >&2; }

if [ -s "$box" ]; then
  echo "$box"
  exit 0
fi
[ "$(id -u)" -eq 0 ] || { say "debootstrap, losetup and grub-install need root"; exit 1; }
for tool in debootstrap qemu-img sfdisk losetup mkfs.ext4; do
  command -v "$tool" >/dev/null || { say "$tool is missing: apt-get install debootstrap qemu-utils fdisk"; exit 1; }
done
key=$(ls /usr/share/rubygems-integration/all/gems/vagrant-*/keys/vagrant.pub 2>/dev/null | head -1)
[ -n "$key" ] || { say "the Vagrant insecure public key was not found: apt-get install vagrant"; exit 1; }

mirror=$("$(dirname "$0")/apt-mirror.sh")

mkdir -p "$cache"
work=$(mktemp -d "$cache/box.XXXX")
raw=$work/disk.raw root=$work/root dev=""
cleanup() {
  for m in dev/pts dev proc sys ""; do umount "$root/$m" 2>/dev/null || true; done
  [ -z "$dev" ] || { losetup -d "$dev" 2>/dev/null; rm -f "${dev}p1"; } || true
  rm -rf "$work"
}
trap cleanup EXIT

# One bootable partition filling a sparse 20 GiB disk (the size debian/bookworm64 has).
truncate -s 20G "$raw"
echo 'start=2048, type=83, bootable' | sfdisk -q "$raw"
dev=$(losetup --find --show --partscan "$raw")
part=/sys/block/$(basename "$dev")/$(basename "$dev")p1/dev
[ -e "$part" ] || partx -a "$dev" 2>/dev/null || true     # the scan at attach is not always done
for _ in 1 2 3 4 5; do [ -e "$part" ] && break; sleep 0.2; done
# without udev (a container, this machine) nobody makes the partition's device node: make it
[ -b "${dev}p1" ] || mknod "${dev}p1" b "$(cut -d: -f1 "$part")" "$(cut -d: -f2 "$part")"
mkfs.ext4 -q -L root "${dev}p1"
mkdir "$root"
mount "${dev}p1" "$root"

say "debootstrap bookworm from $mirror (a few minutes)"
debootstrap --include=linux-image-amd64,grub-pc,systemd-sysv,openssh-server,sudo,ifupdown,isc-dhcp-client,rsync,ca-certificates,make,locales \
  bookworm "$root" "$mirror" >&2
"$(dirname "$0")/apt-mirror.sh" --sources-list > "$root/etc/apt/sources.list"
uuid=$(blkid -s UUID -o value "${dev}p1")
echo "UUID=$uuid / ext4 errors=remount-ro 0 1" > "$root/etc/fstab"
echo labkit-box > "$root/etc/hostname"
printf 'auto lo\niface lo inet loopback\n\nallow-hotplug eth0\niface eth0 inet dhcp\n' > "$root/etc/network/interfaces"
sed -i 's/^GRUB_TIMEOUT=.*/GRUB_TIMEOUT=1/; s/^GRUB_CMDLINE_LINUX=.*/GRUB_CMDLINE_LINUX="net.ifnames=0 console=tty0 console=ttyS0"/' \
  "$root/etc/default/grub"

for m in dev dev/pts proc sys; do mount --bind "/$m" "$root/$m"; done
chroot "$root" /bin/sh -e <<CHROOT
useradd -m -s /bin/bash vagrant
echo vagrant:vagrant | chpasswd
echo 'vagrant ALL=(ALL) NOPASSWD: ALL' > /etc/sudoers.d/vagrant
chmod 0440 /etc/sudoers.d/vagrant
install -d -m 700 -o vagrant -g vagrant /home/vagrant/.ssh
echo 'UseDNS no' > /etc/ssh/sshd_config.d/vagrant.conf
grub-install --target=i386-pc "$dev"
update-grub
apt-get clean
CHROOT
# Installing a package with an initramfs hook (btrfs-progs) rebuilds the initramfs: over ten
# minutes under QEMU's software emulation. This throwaway test box skips that (its kernel is
# never upgraded); a real box keeps Debian's default.
sed -i 's/^update_initramfs=.*/update_initramfs=no/' "$root/etc/initramfs-tools/update-initramfs.conf"
# Without udev there is no /dev/disk/by-uuid, so update-grub named the loop device as the root:
# name the file system instead (the guest's own update-grub, with udev, does this itself).
sed -i "s|root=${dev}p1|root=UUID=$uuid|g" "$root/boot/grub/grub.cfg"
grep -q "root=UUID=$uuid" "$root/boot/grub/grub.cfg" || { say "grub.cfg names no root file system"; exit 1; }
install -m 600 -o 1000 -g 1000 "$key" "$root/home/vagrant/.ssh/authorized_keys"
# Each VM makes its own host keys at first boot (Debian's regenerate service is cloud-only).
rm -f "$root"/etc/ssh/ssh_host_*
cat > "$root/etc/systemd/system/ssh-keygen-first-boot.service" <<'UNIT'
[Unit]
Description=Make the ssh host keys on first boot
Before=ssh.service
ConditionPathExists=!/etc/ssh/ssh_host_ed25519_key
[Service]
Type=oneshot
ExecStart=/usr/bin/ssh-keygen -A
[Install]
WantedBy=multi-user.target
UNIT
ln -s /etc/systemd/system/ssh-keygen-first-boot.service "$root/etc/systemd/system/multi-user.target.wants/"
for m in sys proc dev/pts dev ""; do umount "$root/$m"; done
losetup -d "$dev"; rm -f "${dev}p1"; dev=""

say "packing the box"
qemu-img convert -O qcow2 "$raw" "$work/box.img"
printf '{"provider": "libvirt", "format": "qcow2", "virtual_size": 20}\n' > "$work/metadata.json"
tar -C "$work" -cf "$box.part" metadata.json box.img
mv "$box.part" "$box"
say "made $box ($(du -h "$box" | cut -f1))"
echo "$box"
