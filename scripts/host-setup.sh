#!/usr/bin/env bash
# Idempotent host setup for `make test` and `make demo`: installs the host tools the
# product drives (qemu-img, nbdkit, nbdcopy, libvirt), creates the users libvirt needs and
# starts virtlogd + libvirtd when no init system runs them. Safe to run any number of times.
#
#   scripts/host-setup.sh            everything the tests and the demo need
#   HYPERSDK_SKIP_APT=1 scripts/...  skip package installation (already provisioned hosts)
set -euo pipefail

log() { printf 'host-setup: %s\n' "$*" >&2; }

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
	if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
		log "not root and no sudo: skipping package installation and libvirtd start"
		exit 0
	fi
fi

# Packages: the field's tools the agent orchestrates, libvirt (daemon + client + headers for
# cgo), and the test-only tools (chromium for the dashboard test, rpm to inspect packages,
# prometheus for promtool, systemd for systemd-analyze, iproute2 for network namespaces, curl
# for baselines), guest conversion (virt-v2v with libguestfs; its appliance is built by
# supermin from the host's kernel, hence linux-image-amd64) and the test guest
# (scripts/guest-image.sh: mmdebstrap, sfdisk from fdisk, mke2fs from e2fsprogs).
PKGS=(
	qemu-utils nbdkit libnbd-bin
	libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev qemu-system-x86 ovmf
	virt-v2v libguestfs-tools linux-image-amd64
	mmdebstrap fdisk e2fsprogs
	pkg-config gcc curl iproute2 procps psmisc
	chromium rpm prometheus wrk systemd
)

missing=()
for p in "${PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${HYPERSDK_SKIP_APT:-0}" != 1 ] && [ ${#missing[@]} -gt 0 ]; then
	log "installing: ${missing[*]}"
	export DEBIAN_FRONTEND=noninteractive
	# apt may be locked by a concurrent run (two make targets at once): wait for the lock.
	$SUDO apt-get -o DPkg::Lock::Timeout=600 update -qq
	$SUDO apt-get -o DPkg::Lock::Timeout=600 install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Users and groups libvirt's qemu driver expects (Debian's postinst creates them only when
# systemd is running the package scripts normally; containers often miss them).
getent group kvm >/dev/null || $SUDO groupadd -r kvm
getent group libvirt-qemu >/dev/null || $SUDO groupadd -r libvirt-qemu
getent group libvirt >/dev/null || $SUDO groupadd -r libvirt
id libvirt-qemu >/dev/null 2>&1 || $SUDO useradd -r -g kvm -d /var/lib/libvirt -s /usr/sbin/nologin libvirt-qemu
# Service accounts the packages use (hypersdk-controller/agent run as these under systemd).
getent group hypersdk >/dev/null || $SUDO groupadd -r hypersdk
id hypersdk >/dev/null 2>&1 || $SUDO useradd -r -g hypersdk -d /var/lib/hypersdk -s /usr/sbin/nologin hypersdk

# libvirtd: start it when it is not answering. Under systemd use the units; in a container
# without an init system start the daemons directly.
if command -v virsh >/dev/null 2>&1; then
	if ! virsh -c qemu:///system version >/dev/null 2>&1; then
		$SUDO mkdir -p /var/log/libvirt /var/run/libvirt /var/lib/libvirt/images
		if [ -d /run/systemd/system ] && systemctl is-system-running >/dev/null 2>&1; then
			$SUDO systemctl start virtlogd libvirtd || true
		else
			pgrep -x virtlogd >/dev/null || $SUDO virtlogd -d
			pgrep -x libvirtd >/dev/null || $SUDO libvirtd -d
		fi
		for _ in $(seq 1 50); do
			virsh -c qemu:///system version >/dev/null 2>&1 && break
			sleep 0.2
		done
	fi
	if virsh -c qemu:///system version >/dev/null 2>&1; then
		log "libvirtd answers on qemu:///system"
	else
		log "libvirtd is not answering on qemu:///system (tests that need it will skip or use test:///default)"
	fi
fi
exit 0
