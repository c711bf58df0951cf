#!/bin/sh
# On the DNS primary: never publish a serial lower than the secondary's. When
# an older image is flashed, the zone serial is raised to the secondary's + 1,
# so the secondary transfers this image's zone instead of keeping its newer
# copy. The same happens when the serials are equal but the records differ (the
# serial is the build's commit time: an inventory edited without a commit).
# Waits up to a minute for the secondary; if it does not answer, the primary's
# serial stands: a fresh pair, or a secondary that is down too.
# Not marked needs-clock: the primary is the pair's time source when no
# upstream answers (the secondary syncs to it through chrony's orphan mode),
# and its own clock was seen not "synchronized" minutes into a QEMU boot of the
# pair, so the wait could hold its first boot on an offline LAN. TSIG only
# needs the two clocks to agree within 5 minutes, which the peering gives.
set -eu
. "${LANMAIN_ENV:-/etc/pibake/lanmain.env}"
[ "$LANMAIN_ROLE" = primary ] || { echo "40-dns-serial-guard: secondary, nothing to do"; exit 0; }

serial_of() {  # zone -> the secondary's serial, or nothing
    dig +short +time=2 +tries=1 -k "$LANMAIN_TSIG_KEY" @"$LANMAIN_PEER_IP" "$1" SOA \
        | awk '/^[0-9a-zA-Z]/ && $3 ~ /^[0-9]+$/ { print $3; exit }'
}
local_serial() {  # file -> its SOA serial (the line marked "; serial")
    awk '$2 == ";" && $3 == "serial" { print $1; exit }' "$1"
}
norm() { awk 'NF && $1 !~ /^;/ && $4 != "TSIG" { $1 = $1; print }' | sort -u; }
same_records() {  # zone file -> true when the secondary serves exactly this file's records
    here=$(named-compilezone -q -o - "$1" "$2" 2>/dev/null | norm)
    there=$(dig +time=2 +tries=1 -k "$LANMAIN_TSIG_KEY" @"$LANMAIN_PEER_IP" "$1" AXFR | norm)
    [ -n "$here" ] && [ "$here" = "$there" ]
}
newer() {  # a b -> true when a is after b in RFC 1982 serial arithmetic
    [ "$1" != "$2" ] && [ $(( ($1 - $2 + 4294967296) % 4294967296 )) -lt 2147483648 ]
}

deadline=$(( $(date +%s) + ${LANMAIN_GUARD_WAIT:-60} ))
changed=0
set -- $LANMAIN_ZONE_FILES
for zone in $LANMAIN_ZONES; do
    file=$1; shift
    remote=""
    while [ -z "$remote" ] && [ "$(date +%s)" -lt "$deadline" ]; do
        remote=$(serial_of "$zone" || true)
        [ -n "$remote" ] || { echo "40-dns-serial-guard: waiting for $LANMAIN_PEER_IP (DNS secondary) for $zone"; sleep 5; }
    done
    mine=$(local_serial "$file")
    raise=0
    if [ -z "$remote" ]; then :
    elif [ "$mine" = "$remote" ]; then same_records "$zone" "$file" || raise=1
    elif ! newer "$mine" "$remote"; then raise=1
    fi
    if [ "$raise" = 1 ]; then
        next=$(( (remote + 1) % 4294967296 ))
        sed -i "s/^\([[:space:]]*\)$mine ; serial/\1$next ; serial/" "$file"
        echo "40-dns-serial-guard: $zone serial $mine -> $next (secondary has $remote)"
        changed=1
    else
        echo "40-dns-serial-guard: $zone serial $mine (secondary: ${remote:-no answer})"
    fi
done
if [ "$changed" = 1 ] && systemctl is-active --quiet named 2>/dev/null; then rndc reload; fi
