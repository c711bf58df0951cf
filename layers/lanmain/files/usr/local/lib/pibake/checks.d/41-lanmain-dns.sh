#!/bin/sh
# The DNS pair is joined: both serve every zone with the same serial (the
# secondary got it by TSIG transfer), and a transfer without the key is refused.
set -u
. "${LANMAIN_ENV:-/etc/pibake/lanmain.env}"
serial() { dig +short +time=2 +tries=1 -k "$LANMAIN_TSIG_KEY" @"$1" "$2" SOA | awk '/^[0-9a-zA-Z]/ && $3 ~ /^[0-9]+$/ { print $3; exit }'; }
status=0
report=""
for zone in $LANMAIN_ZONES; do
    mine=$(serial "$LANMAIN_SELF_IP" "$zone")
    peer=$(serial "$LANMAIN_PEER_IP" "$zone")
    report="$report $zone ${mine:-none}/${peer:-none}"
    if [ -z "$mine" ] || [ "$mine" != "$peer" ]; then status=1; fi
done
zone=${LANMAIN_ZONES%% *}
if dig +time=2 +tries=1 @"$LANMAIN_SELF_IP" "$zone" AXFR | grep -q 'Transfer failed'; then
    report="$report; AXFR without key refused"
else
    report="$report; AXFR without key NOT refused"
    status=1
fi
echo "serials here/$LANMAIN_PEER:$report"
exit "$status"
