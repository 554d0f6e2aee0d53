#!/usr/bin/env bash
# make demo: migrate a simulated vSphere VM to a libvirt domain on this machine and boot it.
#
# Starts the vCenter simulator with one VM whose first disk holds a bootable Debian 12 guest
# installed the way VMware guests are (scripts/guest-image.sh: open-vm-tools, /dev/sda1 in
# fstab, a vmxnet3 NIC) and whose second disk holds 256 MiB (half random bytes, half hole),
# a single-node controller and an agent; submits a migration with curl (https method, boot
# check on, left running), prints the job's progress every second, and ends with the login
# prompt the guest printed on its serial console and how to attach to it. The guest is
# converted with virt-v2v when the agent's libguestfs can use KVM (a minute or two); under
# TCG that takes 5-12 minutes, so it is skipped unless asked for, and the guest boots on
# compatibility devices (sata, e1000e) instead of virtio. The processes stop when the script
# ends; the domain (running), its disks and, where it had to make one, the bridge its NIC is
# on stay (the script says how to remove them). Running it again replaces the previous
# demo's domain.
#
#   scripts/demo.sh                      (make demo runs `make setup build guest-image` first)
#   HYPERSDK_DEMO_DIR=/path scripts/demo.sh   where disks and logs go (default /var/tmp/hypersdk-demo)
#   HYPERSDK_DEMO_DISK_SIZE=1G scripts/demo.sh   the second disk's size
#   HYPERSDK_DEMO_CONVERT=1 scripts/demo.sh   convert with virt-v2v even under TCG (0: never)
#   HYPERSDK_DEMO_KEEP=1 scripts/demo.sh      keep the processes' logs
#   HYPERSDK_DEMO_VM=name- scripts/demo.sh    the VM's name prefix (default vm-: the VM is vm-1)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${HYPERSDK_BIN:-$ROOT/bin}
DEMO_DIR=${HYPERSDK_DEMO_DIR:-/var/tmp/hypersdk-demo}
DISK_SIZE=${HYPERSDK_DEMO_DISK_SIZE:-256M}
STORAGE=$DEMO_DIR/storage

say() { printf '\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() {
	printf 'demo: %s\n' "$*" >&2
	exit 1
}

for b in hypersdk-sim hypersdk-controller hypersdk-agent; do
	[ -x "$BIN/$b" ] || die "$BIN/$b is missing: run 'make build' (make demo does it)"
done
for t in curl qemu-img nbdkit; do
	command -v "$t" >/dev/null || die "$t is not installed: run 'make setup'"
done
IMAGE=$("$ROOT/scripts/guest-image.sh") || die "no guest image: scripts/guest-image.sh failed (make guest-image)"

mkdir -p "$STORAGE"
RUN=$(mktemp -d "$DEMO_DIR/run.XXXXXX")
PIDS=()
cleanup() {
	local rc=$?
	for pid in "${PIDS[@]}"; do
		kill -TERM "$pid" 2>/dev/null || true
	done
	for pid in "${PIDS[@]}"; do
		for _ in $(seq 1 100); do
			kill -0 "$pid" 2>/dev/null || break
			sleep 0.1
		done
		kill -KILL "$pid" 2>/dev/null || true
	done
	if [ $rc -ne 0 ]; then
		printf 'demo: failed; logs are in %s\n' "$RUN" >&2
	elif [ "${HYPERSDK_DEMO_KEEP:-0}" = 1 ]; then
		printf 'demo: logs kept in %s\n' "$RUN"
	else
		rm -rf "$RUN"
	fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# A free loopback port: connecting to it is refused.
free_port() {
	local p
	while :; do
		p=$((20000 + RANDOM % 40000))
		if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
			echo "$p"
			return
		fi
	done
}

# json KEY...: the first value of each "KEY" in the JSON on stdin, one per line, strings
# unquoted (enough for the flat fields this script reads; no jq needed). One awk for all
# keys: forking a pipeline per field is slow on a busy machine.
json() {
	awk -v keys="$*" '
		{ doc = doc $0 }
		END {
			n = split(keys, k, " ")
			for (i = 1; i <= n; i++) {
				v = ""
				if (match(doc, "\"" k[i] "\": *(\"([^\"\\\\]|\\\\.)*\"|[^,}\"]*)")) {
					v = substr(doc, RSTART, RLENGTH)
					sub("^\"[^\"]*\": *", "", v)
					if (v ~ /^"/) { v = substr(v, 2, length(v) - 2) }
				}
				print v
			}
		}'
}

wait_for() { # DESCRIPTION SECONDS COMMAND...
	local what=$1 secs=$2
	shift 2
	for _ in $(seq 1 $((secs * 10))); do
		"$@" >/dev/null 2>&1 && return 0
		sleep 0.1
	done
	die "timed out waiting for $what (logs in $RUN)"
}

# --- libvirt -----------------------------------------------------------------------------
URI=qemu:///system
if ! command -v virsh >/dev/null || ! virsh -c "$URI" version >/dev/null 2>&1; then
	URI=test:///default
	say "libvirtd does not answer on qemu:///system: using libvirt's test driver ($URI)"
	note "The domain is defined in the agent's in-memory test hypervisor and vanishes with it."
	note "Run 'make setup' (scripts/host-setup.sh) to start libvirtd and get a real domain."
fi

# --- vCenter simulator -------------------------------------------------------------------
say "Starting the vCenter simulator: 1 VM, a Debian 12 guest on its first disk, $DISK_SIZE of data on its second"
SIM_PASSWORD="demo-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# The password reaches the simulator through its environment and the job through a file:
# neither shows up in the process list.
HYPERSDK_SIM_PASSWORD=$SIM_PASSWORD "$BIN/hypersdk-sim" --listen 127.0.0.1:0 --vms 1 --name-prefix "${HYPERSDK_DEMO_VM:-vm-}" --disks-per-vm 2 \
	--disk-size "$DISK_SIZE" --fill random:0.5 --username administrator@vsphere.local \
	--guest linux --guest-image "$IMAGE" --cpus 1 --memory-mb 1024 \
	>"$RUN/sim.out" 2>"$RUN/sim.log" &
PIDS+=($!)
wait_for "the simulator" 120 grep -q '^ready=true' "$RUN/sim.out"
SIM_URL=$(sed -n 's/^url=//p' "$RUN/sim.out")
THUMBPRINT=$(sed -n 's/^thumbprint=//p' "$RUN/sim.out")
VM_PATH=$(sed -n 's/^vm=\([^ ]*\).*/\1/p' "$RUN/sim.out" | head -1)
VM_NAME=${VM_PATH##*/}
note "vCenter $SIM_URL, VM $VM_PATH"
# The simulator (govmomi's) writes parentCID=00000000 into base-disk descriptors where ESXi
# writes ffffffff ("no parent"); the https method would take the disks for snapshot deltas.
while read -r flat; do
	desc=${flat%-flat.vmdk}.vmdk
	[ -f "$desc" ] && sed -i 's/^parentCID=00000000$/parentCID=ffffffff/' "$desc"
done < <(sed -n 's/^disk=\([^ ]*\).*/\1/p' "$RUN/sim.out")

# A previous demo left a domain of the same name (the simulator's VM is always vm-1). It is
# the demo's own when the job id in its metadata names a job directory under the demo's
# storage: then remove it with its disks. Anything else of that name is not ours to touch
# (HYPERSDK_DEMO_VM names the VM otherwise).
if [ "$URI" = qemu:///system ] && virsh -c "$URI" domuuid "$VM_NAME" >/dev/null 2>&1; then
	old_job=$(virsh -c "$URI" metadata "$VM_NAME" https://hypersdk.io/xmlns/migration/1 2>/dev/null |
		sed -n 's/.*<job_id>\([^<]*\)<\/job_id>.*/\1/p' | head -1)
	if [ -n "$old_job" ] && [ -d "$STORAGE/$old_job" ]; then
		say "Removing the previous demo's domain $VM_NAME (job $old_job) and its disks"
		virsh -c "$URI" destroy "$VM_NAME" >/dev/null 2>&1 || true
		virsh -c "$URI" undefine --nvram "$VM_NAME" >/dev/null
		rm -rf "${STORAGE:?}/$old_job"
	else
		die "a domain named $VM_NAME exists on $URI and was not made by this demo; remove or rename it (virsh -c $URI undefine --nvram $VM_NAME), or name the demo's VM otherwise (HYPERSDK_DEMO_VM=demo- make demo), and run the demo again"
	fi
fi

# --- controller and agent ----------------------------------------------------------------
API_PORT=$(free_port)
API=http://127.0.0.1:$API_PORT
GOSSIP=127.0.0.1:$(free_port)
say "Starting a single-node controller on $API"
"$BIN/hypersdk-controller" --node-id demo --data-dir "$RUN/controller" --api-addr "127.0.0.1:$API_PORT" \
	--raft-addr "127.0.0.1:$(free_port)" --gossip-addr "$GOSSIP" --fast-raft --allow-private-targets >"$RUN/controller.log" 2>&1 &
PIDS+=($!)
wait_for "the controller to lead" 30 sh -c "curl -sf $API/cluster | grep -q '\"leader\": *{\"id\": *\"demo\"'"

AGENT_API=127.0.0.1:$(free_port)
say "Starting an agent (libvirt $URI, disks under $STORAGE)"
"$BIN/hypersdk-agent" --name demo-agent --controllers "$API" --api-addr "$AGENT_API" \
	--gossip-addr "127.0.0.1:$(free_port)" --gossip-join "$GOSSIP" --fast-gossip \
	--libvirt-uri "$URI" --storage-dir "$STORAGE" --max-jobs 1 >"$RUN/agent.log" 2>&1 &
PIDS+=($!)
wait_for "the agent" 30 curl -sf "http://$AGENT_API/health"

# obj KEY: the first {...} object value of "KEY" in the JSON on stdin (flat objects only).
obj() { tr -d '\n' | sed -n "s/.*\"$1\": *{\([^{}]*\)}.*/{\1}/p" | head -1; }

# How this host runs guests: the agent's probe decides at start and advertises it.
BOOT=false
CONVERT=false
if [ "$URI" = qemu:///system ]; then
	wait_for "the agent's virtualisation probe" 300 sh -c "curl -sf $API/agents/demo-agent | grep -q '\"virtualization\"'"
	virt=$(curl -sf "$API/agents/demo-agent" | obj virtualization)
	mapfile -t v < <(printf '%s' "$virt" | json type cpu libguestfs_kvm reason)
	if [ "${v[0]}" = kvm ]; then
		note "guests run under KVM (cpu ${v[1]})"
	else
		note "guests run under TCG, software emulation: slow (${v[3]})"
	fi
	BOOT=true
	case "${HYPERSDK_DEMO_CONVERT:-auto}" in
	1) CONVERT=true ;;
	0) ;;
	*) [ "${v[2]}" = true ] && CONVERT=true ;;
	esac
	if ! command -v virt-v2v-in-place >/dev/null; then
		CONVERT=false
		note "virt-v2v is not installed: the guest is not converted (make setup installs it)"
	elif [ "$CONVERT" = true ]; then
		note "virt-v2v converts the guest (virtio drivers in, VMware tools out)"
	else
		note "virt-v2v would run under TCG here (5-12 minutes): skipped, the guest gets compatibility devices;"
		note "HYPERSDK_DEMO_CONVERT=1 make demo converts it anyway"
	fi
fi

# The domain's NIC needs a network or bridge to start: libvirt's default network when it is
# active, else a bridge with no address and no uplink, made for the demo. A domain the demo
# does not start keeps its NIC unmapped: the agent puts it on its default_network (a warning
# in the job when that network is not there, as pre-flight validation says too).
NET_TARGET=default
NET_MAP='"network_mapping": {"VM Network": "default"}, '
if [ "$BOOT" != true ]; then
	NET_MAP=
elif ! virsh -c "$URI" net-info default 2>/dev/null | grep -q '^Active: *yes'; then
	NET_TARGET=bridge:hsxdemo0
	if ! ip link show hsxdemo0 >/dev/null 2>&1; then
		ip link add hsxdemo0 type bridge && ip link set hsxdemo0 up ||
			die "libvirt's default network is not active and a bridge for the guest's NIC could not be made"
		note "libvirt's default network is not active: made bridge hsxdemo0 (no address, no uplink) for the guest's NIC"
	fi
	NET_MAP='"network_mapping": {"VM Network": "bridge:hsxdemo0"}, '
fi

# --- the migration -----------------------------------------------------------------------
umask 077
cat >"$RUN/job.json" <<EOF
{
  "name": "make demo",
  "vm_path": "$VM_PATH",
  "source": {"type": "vsphere", "vcenter_url": "$SIM_URL", "username": "administrator@vsphere.local",
             "password": "$SIM_PASSWORD", "thumbprint": "$THUMBPRINT"},
  "destination": {"type": "kvm", "libvirt_uri": "$URI"},
  "options": {"conversion_method": "https", "output_format": "qcow2", $NET_MAP
              "guest_conversion": $CONVERT, "verify_boot": $BOOT, "boot_timeout_seconds": 1200, "start_after": $BOOT}
}
EOF
umask 022
say "Submitting the migration: curl -X POST $API/jobs/submit --data @job.json (method https, boot check $BOOT)"
resp=$(curl -sS -X POST "$API/jobs/submit" -H 'Content-Type: application/json' --data @"$RUN/job.json")
rm -f "$RUN/job.json"
JOB=$(printf '%s' "$resp" | json job_id)
[ -n "$JOB" ] || die "submit failed: $resp"
note "job $JOB"

# usecs: microseconds since the epoch (bash's clock: no process per call).
usecs() { echo "${EPOCHREALTIME//[^0-9]/}"; }
since() { # START_USECS -> seconds with one decimal
	local d=$(($(usecs) - $1))
	printf '%d.%d' $((d / 1000000)) $((d / 100000 % 10))
}

start=$(usecs)
last=""
while :; do
	j=$(curl -sf "$API/jobs/$JOB") || die "GET /jobs/$JOB failed"
	mapfile -t f < <(printf '%s' "$j" | json status stage percent_complete current_bytes total_bytes bytes_per_second eta_seconds message)
	status=${f[0]}
	case "${f[1]}" in
	guest_conversion | boot_check) # the copy is done: what the stage says is the news
		line=$(printf '%-9s %-16s %.90s' "$status" "${f[1]}" "${f[7]}") ;;
	*)
		line=$(awk -v st="$status" -v sg="${f[1]:--}" -v p="${f[2]:-0}" -v c="${f[3]:-0}" -v t="${f[4]:-0}" -v r="${f[5]:-0}" -v e="${f[6]:-0}" '
		function h(b, i, u) { split("B KiB MiB GiB TiB", u); i = 1; while (b >= 1024 && i < 5) { b /= 1024; i++ }; return sprintf("%.1f %s", b, u[i]) }
		BEGIN { printf "%-9s %-16s %5.1f%%  %10s / %-10s  %10s/s  ETA %3.0fs", st, sg, p, h(c), h(t), h(r), e }') ;;
	esac
	if [ "$line" != "$last" ]; then
		printf '    [%5ss] %s\n' "$(since "$start")" "$line"
	fi
	last=$line
	case "$status" in completed | failed | cancelled) break ;; esac
	sleep 1
done
elapsed=$(since "$start")

if [ "$status" != completed ]; then
	die "the job ended $status: $(printf '%s' "$j" | json error | sed 's/\\"/"/g')"
fi
DOMAIN=$(printf '%s' "$j" | json domain_name)
say "Migrated in ${elapsed}s: domain $DOMAIN on $URI"
warnings=$(printf '%s' "$j" | tr -d '\n' | sed -n 's/.*"warnings": *\[\([^]]*\)\].*/\1/p' | sed 's/\\"/"/g')
[ -n "$warnings" ] && note "warnings: $warnings"

if [ "$URI" = qemu:///system ]; then
	mapfile -t v < <(printf '%s' "$j" | obj virtualization | json type cpu)
	mapfile -t d < <(printf '%s' "$j" | obj devices | json disk_bus nic_model)
	mapfile -t c < <(printf '%s' "$j" | obj conversion | json converted tool seconds reason)
	if [ "${c[0]}" = true ]; then
		note "guest converted by ${c[1]} in ${c[2]}s"
	else
		note "guest not converted: ${c[3]}"
	fi
	note "domain: ${v[0]} (cpu ${v[1]}), ${d[0]} disks, ${d[1]} NIC"
	say "virsh domblklist $DOMAIN"
	virsh -c "$URI" domblklist "$DOMAIN"
	mapfile -t b < <(printf '%s' "$j" | obj boot | json ok seconds evidence console_log)
	if [ "${b[0]}" = true ]; then
		say "The guest booted in ${b[1]}s; its serial console says:"
		# getty's banner names the OS and the console; the prompt after it is the evidence.
		if [ -r "${b[3]}" ]; then
			tr -d '\r' <"${b[3]}" | grep -a ' ttyS0$' | tail -n 1 | sed 's/^/    | /'
		fi
		note "| ${b[2]}"
		say "It is running. Log in on its console (root / hypersdk; leave with Ctrl+]):"
		note "virsh -c $URI console $DOMAIN"
	fi
else
	note "(test:///default lives inside the agent, which has stopped: nothing to show with virsh)"
fi
say "Disks"
for f in "$STORAGE/$JOB"/*-disk*; do
	# -U: the running guest holds the image's write lock.
	info=$(qemu-img info -U "$f" | sed -n 's/^virtual size: \(.*\)/virtual \1/p; s/^disk size: \(.*\)/on disk \1/p' | paste -sd, -)
	note "$f ($info)"
done
if [ "$URI" = qemu:///system ]; then
	say "Done. The domain and its disks stay; remove them with:"
	note "virsh -c $URI destroy $DOMAIN; virsh -c $URI undefine --nvram $DOMAIN && rm -rf $STORAGE/$JOB"
	[ "$NET_TARGET" = bridge:hsxdemo0 ] && note "ip link del hsxdemo0   # the bridge made for its NIC"
	note "(running make demo again replaces them)"
else
	say "Done. Remove the disks with: rm -rf $STORAGE/$JOB"
fi
