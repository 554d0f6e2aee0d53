#!/bin/sh
# Both packages: the hypersdk system user and group exist before files are unpacked.
set -e
if ! getent group hypersdk >/dev/null 2>&1; then
    groupadd --system hypersdk
fi
if ! getent passwd hypersdk >/dev/null 2>&1; then
    nologin=/usr/sbin/nologin
    [ -x "$nologin" ] || nologin=/sbin/nologin
    useradd --system --gid hypersdk --home-dir /var/lib/hypersdk --no-create-home \
        --shell "$nologin" --comment "HyperSDK fleet" hypersdk
fi
exit 0
