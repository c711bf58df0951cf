#!/bin/sh
# The DNS pair is joined: both serve every zone with the same serial (the
# secondary got it by TSIG transfer), and a transfer without the key is refused.
# A failed query says why (TSIG BADKEY/BADSIG/BADTIME on a wrong key or a
# skewed clock, no answer, refused).
set -u
. "${LANMAIN_ENV:-/etc/pibake/lanmain.env}"
why=""
serial() {  # server zone -> $s: the serial, or empty (and the cause added to $why)
    out=$(dig +time=2 +tries=1 -k "$LANMAIN_TSIG_KEY" @"$1" "$2" SOA 2>&1)
    s=$(printf '%s\n' "$out" | awk '$4 == "SOA" && $7 ~ /^[0-9]+$/ { print $7; exit }')
    if [ -z "$s" ]; then
        cause=$(printf '%s\n' "$out" | grep -o -i -E 'BAD(KEY|SIG|TIME)|tsig [a-z ]*error|connection refused|timed out|no servers could be reached|status: [A-Z]+' | head -n 1)
        why="$why $1: ${cause:-no answer};"
    fi
}
status=0
report=""
for zone in $LANMAIN_ZONES; do
    serial "$LANMAIN_SELF_IP" "$zone"
    mine=$s
    serial "$LANMAIN_PEER_IP" "$zone"
    peer=$s
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
echo "serials here/$LANMAIN_PEER:$report${why:+ (}${why# }${why:+)}"
exit "$status"
