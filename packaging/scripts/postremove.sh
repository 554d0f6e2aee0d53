#!/bin/sh
# Both packages: systemd forgets the removed unit. Data in /var/lib/hypersdk and the
# hypersdk user stay (a controller's raft log is not something to lose by accident).
set -e
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
    systemctl daemon-reload >/dev/null 2>&1 || true
fi
if [ "$1" = purge ]; then
    rm -f /etc/hypersdk/agent.unconfigured
    # Only what is empty: a controller's data or an agent's disks are never removed here.
    # (the package's own dirs, storage/ and controller/, went with it when they were empty).
    for d in /etc/hypersdk /var/lib/hypersdk; do
        rmdir "$d" 2>/dev/null || true
    done
fi
exit 0
