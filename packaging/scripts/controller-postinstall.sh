#!/bin/sh
# hypersdk-controller: data dir, config permissions, unit enabled but never started here.
# deb: $1 = configure, $2 = the version upgraded from (empty on a first install).
# rpm: $1 = 1 on install, 2 on upgrade.
set -e
unit=hypersdk-controller.service
upgrade=no
if [ "$1" = 2 ] || { [ "$1" = configure ] && [ -n "$2" ]; }; then
    upgrade=yes
fi

install -d -m 0755 -o root -g root /var/lib/hypersdk
install -d -m 0750 -o hypersdk -g hypersdk /var/lib/hypersdk/controller
# The config holds API tokens: readable by the service, not by everyone.
chown root:hypersdk /etc/hypersdk /etc/hypersdk/controller.yaml
chmod 0750 /etc/hypersdk
chmod 0640 /etc/hypersdk/controller.yaml

if command -v systemctl >/dev/null 2>&1; then
    if [ -d /run/systemd/system ]; then
        systemctl daemon-reload >/dev/null 2>&1 || true
    fi
    # Enabled so it starts at boot once configured; not started now: a controller started
    # with the wrong addresses would bootstrap a cluster of its own.
    systemctl enable "$unit" >/dev/null 2>&1 || true
    # Not restarted on upgrade either: the same package upgraded on every controller at
    # once (a fleet-wide apt upgrade) would restart them all together and lose the quorum.
fi

if [ "$upgrade" = yes ]; then
    cat <<'MSG'

hypersdk-controller is upgraded but still runs the old version. Restart the controllers
ONE AT A TIME, followers first, the leader last: on each, run
  "systemctl restart hypersdk-controller", then "hyperctl cluster status" until the node
  is caught up and reachable again, before the next.
MSG
fi

if [ "$upgrade" = no ]; then
    cat <<'MSG'

hypersdk-controller is installed and enabled, but not started.
  1. Edit /etc/hypersdk/controller.yaml: api.addr/advertise, cluster.raft_addr,
     gossip.addr, auth.tokens, and cluster.join on all but the first controller.
  2. systemctl start hypersdk-controller
  3. hyperctl cluster status            (dashboard: http://<api.addr>/ui/)
MSG
fi
exit 0
