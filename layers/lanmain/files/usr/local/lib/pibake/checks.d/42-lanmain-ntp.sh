#!/bin/sh
# chrony peers with the other lanmain host and serves the cluster's networks.
set -u
. "${LANMAIN_ENV:-/etc/pibake/lanmain.env}"
status=0
if chronyc -n sources 2>/dev/null | grep -q "^=. *$LANMAIN_PEER_IP "; then
    report="peer $LANMAIN_PEER_IP listed"
else
    report="peer $LANMAIN_PEER_IP not listed"
    status=1
fi
for net in $LANMAIN_CLIENT_NETWORKS; do
    probe=${net%/*}
    if chronyc accheck "$probe" 2>/dev/null | grep -q "Access allowed"; then
        report="$report; serves $net"
    else
        report="$report; does not serve $net"
        status=1
    fi
done
echo "$report"
exit "$status"
