#!/bin/sh
# hypersdk-agent: storage dir, libvirt/kvm group membership, config permissions, unit
# enabled but never started here.
# deb: $1 = configure, $2 = the version upgraded from (empty on a first install).
# rpm: $1 = 1 on install, 2 on upgrade.
set -e
unit=hypersdk-agent.service
upgrade=no
if [ "$1" = 2 ] || { [ "$1" = configure ] && [ -n "$2" ]; }; then
    upgrade=yes
fi

install -d -m 0755 -o root -g root /var/lib/hypersdk
# The attempt log (attempt_log in agent.yaml), rotated by /etc/logrotate.d/hypersdk-agent.
install -d -m 0750 -o hypersdk -g hypersdk /var/log/hypersdk
# 0711: qemu (libvirt-qemu or qemu) must traverse to the disk images it runs, not list them.
install -d -m 0711 -o hypersdk -g hypersdk /var/lib/hypersdk/storage
chown root:hypersdk /etc/hypersdk /etc/hypersdk/agent.yaml /etc/hypersdk/agent.env
chmod 0750 /etc/hypersdk
chmod 0640 /etc/hypersdk/agent.yaml /etc/hypersdk/agent.env

# qemu:///system through libvirt's group-owned socket, and /dev/kvm for guest fix-ups.
missing=""
for g in libvirt kvm; do
    if getent group "$g" >/dev/null 2>&1; then
        usermod -a -G "$g" hypersdk
    else
        missing="$missing $g"
    fi
done

if command -v systemctl >/dev/null 2>&1; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
    systemctl enable "$unit" >/dev/null 2>&1 || true
    if [ "$upgrade" = yes ] && [ -d /run/systemd/system ]; then
        systemctl try-restart "$unit" >/dev/null 2>&1 || true
    fi
fi

if [ "$upgrade" = no ]; then
    # Keeps the unit from starting (now or at boot) with the shipped placeholders.
    echo "Remove this file once agent.yaml and agent.env are configured: the agent does not start while it exists." \
        >/etc/hypersdk/agent.unconfigured
    cat <<'MSG'

hypersdk-agent is installed and enabled, but not started.
  1. Edit /etc/hypersdk/agent.yaml: controllers, gossip.addr/advertise, gossip.join.
  2. Put the controllers' join token in /etc/hypersdk/agent.env (HYPERSDK_JOIN_TOKEN=...).
  3. hypersdk-agent --check-config --config /etc/hypersdk/agent.yaml
  4. rm /etc/hypersdk/agent.unconfigured && systemctl start hypersdk-agent
  5. On a controller: hyperctl agents list
MSG
    if [ -n "$missing" ]; then
        echo "  Groups not found:$missing. Install libvirt-daemon, then: usermod -a -G libvirt,kvm hypersdk"
    fi
fi
exit 0
