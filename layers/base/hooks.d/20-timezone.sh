#!/bin/sh
# Set the cluster's time zone.
set -eu
if [ -e "/usr/share/zoneinfo/$PIBAKE_TIMEZONE" ]; then
    ln -sf "/usr/share/zoneinfo/$PIBAKE_TIMEZONE" /etc/localtime
    echo "$PIBAKE_TIMEZONE" > /etc/timezone
else
    echo "time zone $PIBAKE_TIMEZONE not found in /usr/share/zoneinfo (install tzdata)" >&2
    exit 1
fi
