#!/usr/bin/env bash
# make demo: migrate a simulated vSphere VM to a libvirt domain on this machine.
#
# Starts the vCenter simulator (one VM, two 256 MiB disks, half random bytes and half
# hole), a single-node controller and an agent, submits a migration with curl (https
# method), prints the job's progress every second, and ends with `virsh dominfo` of the
# new domain and where its disks are. The processes stop when the script ends; the domain
# and its disks stay (the script says how to remove them). Running it again replaces the
# previous demo's domain.
#
#   scripts/demo.sh                      (make demo runs `make setup build` first)
#   HYPERSDK_DEMO_DIR=/path scripts/demo.sh   where disks and logs go (default /var/tmp/hypersdk-demo)
#   HYPERSDK_DEMO_DISK_SIZE=1G scripts/demo.sh
#   HYPERSDK_DEMO_KEEP=1 scripts/demo.sh      keep the processes' logs
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
say "Starting the vCenter simulator: 1 VM with 2 disks of $DISK_SIZE (half random data, half hole)"
SIM_PASSWORD="demo-$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')"
# The password reaches the simulator through its environment and the job through a file:
# neither shows up in the process list.
HYPERSDK_SIM_PASSWORD=$SIM_PASSWORD "$BIN/hypersdk-sim" --listen 127.0.0.1:0 --vms 1 --disks-per-vm 2 \
	--disk-size "$DISK_SIZE" --fill random:0.5 --username administrator@vsphere.local \
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
# storage: then remove it with its disks. Anything else of that name is not ours to touch.
if [ "$URI" = qemu:///system ] && virsh -c "$URI" domuuid "$VM_NAME" >/dev/null 2>&1; then
	old_job=$(virsh -c "$URI" metadata "$VM_NAME" https://hypersdk.io/xmlns/migration/1 2>/dev/null |
		sed -n 's/.*<job_id>\([^<]*\)<\/job_id>.*/\1/p' | head -1)
	if [ -n "$old_job" ] && [ -d "$STORAGE/$old_job" ]; then
		say "Removing the previous demo's domain $VM_NAME (job $old_job) and its disks"
		virsh -c "$URI" destroy "$VM_NAME" >/dev/null 2>&1 || true
		virsh -c "$URI" undefine --nvram "$VM_NAME" >/dev/null
		rm -rf "${STORAGE:?}/$old_job"
	else
		die "a domain named $VM_NAME exists on $URI and was not made by this demo; remove or rename it (virsh -c $URI undefine --nvram $VM_NAME) and run the demo again"
	fi
fi

# --- controller and agent ----------------------------------------------------------------
API_PORT=$(free_port)
API=http://127.0.0.1:$API_PORT
GOSSIP=127.0.0.1:$(free_port)
say "Starting a single-node controller on $API"
"$BIN/hypersdk-controller" --node-id demo --data-dir "$RUN/controller" --api-addr "127.0.0.1:$API_PORT" \
	--raft-addr "127.0.0.1:$(free_port)" --gossip-addr "$GOSSIP" --fast-raft >"$RUN/controller.log" 2>&1 &
PIDS+=($!)
wait_for "the controller to lead" 30 sh -c "curl -sf $API/cluster | grep -q '\"leader\": *{\"id\": *\"demo\"'"

AGENT_API=127.0.0.1:$(free_port)
say "Starting an agent (libvirt $URI, disks under $STORAGE)"
"$BIN/hypersdk-agent" --name demo-agent --controllers "$API" --api-addr "$AGENT_API" \
	--gossip-addr "127.0.0.1:$(free_port)" --gossip-join "$GOSSIP" --fast-gossip \
	--libvirt-uri "$URI" --storage-dir "$STORAGE" --max-jobs 1 >"$RUN/agent.log" 2>&1 &
PIDS+=($!)
wait_for "the agent" 30 curl -sf "http://$AGENT_API/health"

# --- the migration -----------------------------------------------------------------------
umask 077
cat >"$RUN/job.json" <<EOF
{
  "name": "make demo",
  "vm_path": "$VM_PATH",
  "source": {"type": "vsphere", "vcenter_url": "$SIM_URL", "username": "administrator@vsphere.local",
             "password": "$SIM_PASSWORD", "thumbprint": "$THUMBPRINT"},
  "destination": {"type": "kvm", "libvirt_uri": "$URI"},
  "options": {"conversion_method": "https", "output_format": "qcow2", "network_mapping": {"VM Network": "default"}}
}
EOF
umask 022
say "Submitting the migration: curl -X POST $API/jobs/submit --data @job.json (method https)"
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
	mapfile -t f < <(printf '%s' "$j" | json status stage percent_complete current_bytes total_bytes bytes_per_second eta_seconds)
	status=${f[0]}
	line=$(awk -v st="$status" -v sg="${f[1]:--}" -v p="${f[2]:-0}" -v c="${f[3]:-0}" -v t="${f[4]:-0}" -v r="${f[5]:-0}" -v e="${f[6]:-0}" '
		function h(b, i, u) { split("B KiB MiB GiB TiB", u); i = 1; while (b >= 1024 && i < 5) { b /= 1024; i++ }; return sprintf("%.1f %s", b, u[i]) }
		BEGIN { printf "%-9s %-11s %5.1f%%  %10s / %-10s  %10s/s  ETA %3.0fs", st, sg, p, h(c), h(t), h(r), e }')
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
	say "virsh dominfo $DOMAIN"
	virsh -c "$URI" dominfo "$DOMAIN"
	say "virsh domblklist $DOMAIN"
	virsh -c "$URI" domblklist "$DOMAIN"
else
	note "(test:///default lives inside the agent, which has stopped: nothing to show with virsh)"
fi
say "Disks"
for f in "$STORAGE/$JOB"/*; do
	info=$(qemu-img info "$f" | sed -n 's/^virtual size: \(.*\)/virtual \1/p; s/^disk size: \(.*\)/on disk \1/p' | paste -sd, -)
	note "$f ($info)"
done
if [ "$URI" = qemu:///system ]; then
	say "Done. The domain and its disks stay; remove them with:"
	note "virsh -c $URI undefine --nvram $DOMAIN && rm -rf $STORAGE/$JOB"
	note "(running make demo again replaces them)"
else
	say "Done. Remove the disks with: rm -rf $STORAGE/$JOB"
fi
