#!/usr/bin/env bash
# guest-image.sh: build, once, a small bootable Debian 12 guest disk that looks like a VMware
# guest, for the simulator (`hypersdk-sim --guest linux`), the boot tests, the demo and the
# benchmarks. Prints the path of the raw image on stdout (everything else goes to stderr).
#
#   scripts/guest-image.sh                 build if the cache lacks this recipe, print the path
#   HYPERSDK_GUEST_CACHE=DIR scripts/...   where images are kept (default /var/cache/hypersdk/guest)
#   HYPERSDK_GUEST_REBUILD=1 scripts/...   build even when cached (for `make bench`)
#   HYPERSDK_GUEST_MIRROR=URL scripts/...  Debian mirror (default http://deb.debian.org/debian)
#
# The image is cached as DIR/debian12-<recipe hash>.raw, where the hash covers this script and
# the settings above that change the content: an edit to the recipe builds a new image, and
# nothing else does. DIR/debian12.raw links to the newest.
#
# What the guest is (each part is something a migration has to cope with):
# - Debian 12 from Debian's packages (mmdebstrap, minbase): linux-image-amd64, systemd, grub-pc
#   in the MBR of the disk, open-vm-tools (what virt-v2v removes), dbus (so systemd-logind
#   runs and an ACPI power button shuts the guest down, as a hypervisor's shutdown asks). No
#   network configuration:
#   ifupdown's networking.service waits for udev to settle, which costs minutes under TCG and
#   shows nothing a boot check needs.
# - /etc/fstab and the kernel's root= (in /boot/grub/grub.cfg) name /dev/sda1, as guests cloned
#   from templates and older installs have them (Debian's installer writes UUID=, which needs no
#   fixing): on virtio the disk is /dev/vda, so an unconverted guest cannot mount its root.
#   virt-v2v rewrites fstab and then regenerates grub.cfg with update-grub, which names the
#   root by UUID. (root= must not be in GRUB_CMDLINE_LINUX: update-grub appends that after its
#   own root=UUID, the kernel takes the last one, and virt-v2v does not rewrite it there.)
# - An initramfs with the storage drivers of VMware's virtual hardware only (pvscsi, LSI Logic,
#   AHCI), as a host-only initramfs built on ESXi has them (RHEL's dracut default; Debian's
#   MODULES=dep): no virtio. Booted on a virtio disk unconverted, it waits for its root device
#   forever; converted, virt-v2v adds virtio to /etc/initramfs-tools/modules and rebuilds it.
# - console=ttyS0 on the kernel command line (in /etc/default/grub too, so that virt-v2v's
#   update-grub keeps it) and therefore a getty on ttyS0: the boot check reads the login prompt
#   from the serial console. Host name hsxguest; root's password is "hypersdk" (a local test
#   guest: change it before giving the image to anyone).
# - A 2 GiB disk, one ext4 partition, about 1.3 GiB free: room for virt-v2v to rebuild the
#   initramfs (it ran out of space on a tighter image).
#
# No loop devices, no mounts and no libguestfs appliance (slow under TCG): mmdebstrap builds the
# tree, sfdisk partitions a sparse file, mke2fs -d writes the tree into the partition at its
# offset, and GRUB's own boot.img and a core.img made by grub-mkimage (the guest's) go into the
# MBR and the gap before the partition, which is what grub-install does on a BIOS disk. Needs
# root (mmdebstrap's root mode keeps file ownership; CI runs as root).
set -euo pipefail

log() { printf 'guest-image: %s\n' "$*" >&2; }
die() {
	log "$*"
	exit 1
}

CACHE=${HYPERSDK_GUEST_CACHE:-/var/cache/hypersdk/guest}
MIRROR=${HYPERSDK_GUEST_MIRROR:-http://deb.debian.org/debian}
SECURITY_MIRROR=${HYPERSDK_GUEST_SECURITY_MIRROR:-http://deb.debian.org/debian-security}
SUITE=bookworm
DISK_MIB=2048
PART_START_MIB=1
HOSTNAME_=hsxguest
PACKAGES=linux-image-amd64,systemd-sysv,udev,kmod,dbus,initramfs-tools,grub-pc,e2fsprogs,open-vm-tools,procps
# The storage drivers of VMware's virtual hardware: pvscsi, LSI Logic (parallel and SAS), AHCI
# (VMware's SATA controller, and the agent's compatibility bus), the SCSI disk driver, ext4.
INITRAMFS_MODULES="vmw_pvscsi mptspi mptsas ahci sd_mod ext4 crc32c_generic"
KERNEL_CMDLINE="console=tty0 console=ttyS0,115200n8"

SELF=$(readlink -f "${BASH_SOURCE[0]}")
HASH=$( (
	cat "$SELF"
	echo "$MIRROR $SECURITY_MIRROR"
) | sha256sum | cut -c1-12)
IMAGE=$CACHE/debian12-$HASH.raw
LATEST=$CACHE/debian12.raw

if [ -s "$IMAGE" ] && [ "${HYPERSDK_GUEST_REBUILD:-0}" != 1 ]; then
	ln -sfn "$(basename "$IMAGE")" "$LATEST"
	log "cached: $IMAGE"
	echo "$IMAGE"
	exit 0
fi

[ "$(id -u)" -eq 0 ] || die "needs root (mmdebstrap keeps file ownership only as root): run it with sudo"
for t in mmdebstrap sfdisk mke2fs; do
	command -v "$t" >/dev/null || die "$t is not installed: run scripts/host-setup.sh (make setup)"
done

mkdir -p "$CACHE"
# One build at a time per cache: a second caller waits and then finds the image.
exec 9>"$CACHE/.lock"
flock 9
if [ -s "$IMAGE" ] && [ "${HYPERSDK_GUEST_REBUILD:-0}" != 1 ]; then
	ln -sfn "$(basename "$IMAGE")" "$LATEST"
	echo "$IMAGE"
	exit 0
fi

WORK=$(mktemp -d "$CACHE/build.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
ROOT=$WORK/root
start=$(date +%s)
log "building $IMAGE (Debian $SUITE from $MIRROR; about 2 minutes)"

# Configuration that must be in place before the kernel package builds the initramfs
# (essential hook: after the essential packages, before the rest).
essential_hook() {
	cat <<EOF
mkdir -p "\$1/etc/initramfs-tools/conf.d" "\$1/etc/initramfs-tools/hooks" "\$1/etc/default"
printf '# A host-only initramfs, as built on the VMware host: the drivers in\n# /etc/initramfs-tools/modules and the hook vmware-storage, nothing else.\nMODULES=list\n' >"\$1/etc/initramfs-tools/conf.d/hostonly.conf"
cat >"\$1/etc/initramfs-tools/hooks/vmware-storage" <<'HOOK'
#!/bin/sh
# The storage drivers of the VMware virtual hardware this guest was installed on.
PREREQ=""
prereqs() { echo "\$PREREQ"; }
case "\$1" in prereqs) prereqs; exit 0 ;; esac
. /usr/share/initramfs-tools/hook-functions
manual_add_modules $INITRAMFS_MODULES
HOOK
chmod 755 "\$1/etc/initramfs-tools/hooks/vmware-storage"
cat >"\$1/etc/default/grub" <<'GRUB'
GRUB_DEFAULT=0
GRUB_TIMEOUT=1
GRUB_DISTRIBUTOR=\`lsb_release -i -s 2> /dev/null || echo Debian\`
GRUB_CMDLINE_LINUX_DEFAULT=""
GRUB_CMDLINE_LINUX="$KERNEL_CMDLINE"
GRUB_TERMINAL="console serial"
GRUB_SERIAL_COMMAND="serial --unit=0 --speed=115200"
GRUB_DISABLE_OS_PROBER=true
GRUB
EOF
}

customize_hook() {
	cat <<EOF
echo $HOSTNAME_ >"\$1/etc/hostname"
printf '127.0.0.1\tlocalhost\n127.0.1.1\t$HOSTNAME_\n' >"\$1/etc/hosts"
printf '# /etc/fstab: static file system information.\n# <file system> <mount point> <type> <options> <dump> <pass>\n/dev/sda1 / ext4 errors=remount-ro 0 1\n' >"\$1/etc/fstab"
echo 'root:hypersdk' | chroot "\$1" chpasswd
rm -f "\$1/etc/machine-id" "\$1/var/lib/dbus/machine-id"
touch "\$1/etc/machine-id"
EOF
}

# force-unsafe-io: no fsync per unpacked file (the tree is thrown away if the build dies),
# which is most of the build's time on a busy machine.
mmdebstrap --variant=minbase --mode=root --format=directory --include="$PACKAGES" \
	--dpkgopt=force-unsafe-io --aptopt='Acquire::Languages "none"' \
	--dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-include=/usr/share/doc/*/copyright' \
	--dpkgopt='path-exclude=/usr/share/man/*' --dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-exclude=/usr/share/info/*' \
	--essential-hook="$(essential_hook)" --customize-hook="$(customize_hook)" \
	"$SUITE" "$ROOT" \
	"deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" "deb $SECURITY_MIRROR $SUITE-security main" \
	</dev/null >&2

KVER=$(basename "$(ls -d "$ROOT"/lib/modules/* | sort -V | tail -1)")
[ -f "$ROOT/boot/vmlinuz-$KVER" ] && [ -f "$ROOT/boot/initrd.img-$KVER" ] || die "no kernel $KVER or its initramfs in the tree"
log "tree ready after $(($(date +%s) - start)) s: kernel $KVER, $(du -sm "$ROOT" | cut -f1) MiB"

# GRUB for a BIOS disk, as grub-install lays it out: the modules under /boot/grub, a core.img
# (the guest's grub-mkimage) that finds /boot/grub on the first partition, and a grub.cfg
# equivalent to update-grub's (which cannot run here: it probes the device of /).
UUID=$(cat /proc/sys/kernel/random/uuid)
mkdir -p "$ROOT/boot/grub/i386-pc"
cp "$ROOT"/usr/lib/grub/i386-pc/*.mod "$ROOT"/usr/lib/grub/i386-pc/*.lst "$ROOT/boot/grub/i386-pc/"
chroot "$ROOT" grub-mkimage -O i386-pc -d /usr/lib/grub/i386-pc -p '(hd0,msdos1)/boot/grub' \
	-o /tmp/core.img biosdisk part_msdos ext2
mv "$ROOT/tmp/core.img" "$WORK/core.img"
cp "$ROOT/usr/lib/grub/i386-pc/boot.img" "$WORK/boot.img"
cat >"$ROOT/boot/grub/grub.cfg" <<EOF
# Written by scripts/guest-image.sh in the shape of update-grub's output; virt-v2v regenerates
# it with update-grub when it converts the guest.
serial --unit=0 --speed=115200
terminal_input console serial
terminal_output console serial
set default=0
set timeout=1
insmod part_msdos
insmod ext2
search --no-floppy --fs-uuid --set=root $UUID
menuentry 'Debian GNU/Linux' {
	linux /boot/vmlinuz-$KVER root=/dev/sda1 ro $KERNEL_CMDLINE
	initrd /boot/initrd.img-$KVER
}
EOF

core_bytes=$(stat -c %s "$WORK/core.img")
[ "$core_bytes" -lt $(((PART_START_MIB * 1024 * 1024) - 512)) ] || die "core.img ($core_bytes bytes) does not fit before the partition"

RAW=$WORK/disk.raw
truncate -s "${DISK_MIB}M" "$RAW"
printf 'label: dos\nstart=%dMiB, type=83, bootable\n' "$PART_START_MIB" | sfdisk --quiet "$RAW" >&2
PART_MIB=$((DISK_MIB - PART_START_MIB))
mke2fs -q -F -t ext4 -L root -U "$UUID" -d "$ROOT" -E offset=$((PART_START_MIB * 1024 * 1024)) \
	"$RAW" "${PART_MIB}M" >&2
# boot.img's code goes before the disk signature and partition table (bytes 440-511 stay);
# core.img starts at sector 1, where boot.img looks for it by default.
dd if="$WORK/boot.img" of="$RAW" bs=440 count=1 conv=notrunc status=none
dd if="$WORK/core.img" of="$RAW" bs=512 seek=1 conv=notrunc status=none

mv "$RAW" "$IMAGE.tmp"
mv "$IMAGE.tmp" "$IMAGE"
ln -sfn "$(basename "$IMAGE")" "$LATEST"
# Older recipes' images are of no further use.
find "$CACHE" -maxdepth 1 -name 'debian12-*.raw' ! -name "$(basename "$IMAGE")" -delete
log "built $IMAGE in $(($(date +%s) - start)) s ($(du -m "$IMAGE" | cut -f1) MiB allocated of ${DISK_MIB} MiB)"
echo "$IMAGE"
