#!/bin/sh
# Wait for time sync, but only when a step still to run declares that it needs
# a correct clock with a line "# pibake: needs-clock" (TSIG, certificates, DHCP
# failover). Under QEMU user networking there is no NTP server, so images
# without such steps never wait. Times out after PIBAKE_CLOCK_TIMEOUT seconds
# (default 300) with exit 1, so the runner retries later.
set -eu
timeout=${PIBAKE_CLOCK_TIMEOUT:-300}
steps=${PIBAKE_FIRSTBOOT_STEPS_DIR:-/usr/local/lib/pibake/firstboot.d}
stamps=${PIBAKE_FIRSTBOOT_STAMP_DIR:-/var/lib/pibake/firstboot}
root=${PIBAKE_FIRSTBOOT_ROOT:-}

needer=""
for step in "$steps"/*.sh; do
    [ -e "$step" ] || continue
    name=${step##*/}
    name=${name%.sh}
    [ -f "$stamps/$name.done" ] && continue
    if grep -q '^# pibake: needs-clock' "$step"; then
        needer=$name
        break
    fi
done
if [ -z "$needer" ]; then
    echo "wait-clock: no step needs a correct clock; not waiting"
    exit 0
fi

synchronized() {
    # systemd >= 239 (bookworm) touches this file; stretch's 232 does not
    [ -e "$root/run/systemd/timesync/synchronized" ] && return 0
    [ -z "$root" ] || return 1
    command -v timedatectl >/dev/null 2>&1 || return 1
    # "System clock synchronized: yes" (252) or "NTP synchronized: yes" (232)
    timedatectl status 2>/dev/null | grep -q 'synchronized: yes'
}

waited=0
while ! synchronized; do
    if [ "$waited" -ge "$timeout" ]; then
        echo "wait-clock: clock not synchronized after ${timeout}s; $needer needs it"
        exit 1
    fi
    sleep 2
    waited=$((waited + 2))
done
echo "wait-clock: clock synchronized after ${waited}s"
exit 0
