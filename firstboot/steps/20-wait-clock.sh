#!/bin/sh
# Wait for time sync, but only when a step still to run declares that it needs
# a correct clock with a line "# pibake: needs-clock" (TSIG, certificates, DHCP
# failover). Images without such steps never wait. A clock that a hardware
# clock set at boot (QEMU's RTC; a Pi 5's with its battery) and that is not
# before the image was built counts as correct: a Pi 1-4 has no RTC and waits
# for NTP, a VM whose NTP servers are not booted does not. Times out after
# PIBAKE_CLOCK_TIMEOUT seconds (default 300) with exit 1, so the runner
# retries later.
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

from_rtc() {
    # the kernel set the system clock from rtc0 at boot (hctosys), and the
    # clock is not before the image's build time (its files' normalized mtime)
    [ "$(cat "$root/sys/class/rtc/rtc0/hctosys" 2>/dev/null)" = 1 ] || return 1
    built=$(stat -c %Y "$root/etc/pibake/host.json" 2>/dev/null || stat -c %Y "$0")
    [ "$(date -u +%s)" -ge "$built" ]
}

if ! synchronized && from_rtc; then
    echo "wait-clock: the clock came from the hardware clock (rtc0) at boot; not waiting for NTP"
    exit 0
fi
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
