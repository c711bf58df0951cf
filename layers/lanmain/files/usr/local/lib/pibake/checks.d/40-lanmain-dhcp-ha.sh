#!/bin/sh
# The DHCP pair is joined: Kea's HA state is hot-standby (asked through the
# control agent, as the partner does), or ISC dhcpd's failover state is normal.
set -u
. "${LANMAIN_ENV:-/etc/pibake/lanmain.env}"
if [ "$LANMAIN_DHCP_SERVER" = isc-dhcp ]; then
    leases=${LANMAIN_DHCPD_LEASES:-/var/lib/dhcp/dhcpd.leases}
    mine=$(sed -n 's/^ *my state \([a-z-]*\).*/\1/p' "$leases" 2>/dev/null | tail -n 1)
    partner=$(sed -n 's/^ *partner state \([a-z-]*\).*/\1/p' "$leases" 2>/dev/null | tail -n 1)
    echo "failover lanmain: me ${mine:-unknown}, partner ($LANMAIN_PEER) ${partner:-unknown}"
    [ "$mine" = normal ] && [ "$partner" = normal ]
    exit
fi
conf=${LANMAIN_KEA_AGENT_CONF:-/etc/kea/kea-ctrl-agent.conf}
field() { sed -n "s/.*\"$1\": *\"\\{0,1\\}\\([^\",]*\\)\"\\{0,1\\}.*/\\1/p" "$conf" | head -n 1; }
host=$(field http-host)
port=$(field http-port)
auth=$(printf '%s:%s' "$(field user)" "$(field password)" | base64 | tr -d '\n')
if command -v wget >/dev/null 2>&1; then get=wget; else get="busybox wget"; fi
answer=$($get -q -O - --header="Content-Type: application/json" \
    --header="Authorization: Basic $auth" \
    --post-data='{"command": "ha-heartbeat", "service": ["dhcp4"]}' \
    "http://$host:$port/" 2>&1)
state=$(printf '%s' "$answer" | sed -n 's/.*"state": *"\([a-z-]*\)".*/\1/p')
echo "kea HA state ${state:-unknown} (partner $LANMAIN_PEER)"
[ "$state" = hot-standby ]
