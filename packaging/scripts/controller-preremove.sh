#!/bin/sh
# hypersdk-controller: stop and disable the service when the package is removed (not upgraded).
# deb: $1 = remove|upgrade|deconfigure|failed-upgrade. rpm: $1 = 0 on erase, 1 on upgrade.
set -e
unit=hypersdk-controller.service
if [ "$1" = remove ] || [ "$1" = 0 ]; then
    if command -v systemctl >/dev/null 2>&1; then
        if [ -d /run/systemd/system ]; then
            systemctl stop "$unit" >/dev/null 2>&1 || true
        fi
        systemctl disable "$unit" >/dev/null 2>&1 || true
    fi
fi
exit 0
