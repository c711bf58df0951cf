#!/bin/sh
# Wait until there is a default route (IPv4 or IPv6), at most
# PIBAKE_NETWORK_TIMEOUT seconds (default 60). A node without one still
# finishes its first boot: steps that need the network fail and are retried.
set -eu
timeout=${PIBAKE_NETWORK_TIMEOUT:-60}
proc=${PIBAKE_FIRSTBOOT_ROOT:-}/proc

has_default_route() {
    # IPv4: "iface 00000000 gateway ..."; IPv6: destination ::/0 on a real interface
    grep -q '^[^[:space:]]*[[:space:]]*00000000[[:space:]]' "$proc/net/route" 2>/dev/null && return 0
    grep '^0\{32\} 00 ' "$proc/net/ipv6_route" 2>/dev/null | grep -qv ' lo$'
}

waited=0
while ! has_default_route; do
    if [ "$waited" -ge "$timeout" ]; then
        echo "wait-network: no default route after ${timeout}s; continuing"
        exit 0
    fi
    sleep 1
    waited=$((waited + 1))
done
echo "wait-network: default route after ${waited}s"
exit 0
