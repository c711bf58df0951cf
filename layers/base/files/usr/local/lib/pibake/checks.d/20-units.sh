#!/bin/sh
# No systemd unit has failed.
failed=$(systemctl list-units --state=failed --no-legend --plain 2>/dev/null | awk '{print $1}' | tr '\n' ' ')
if [ -n "$failed" ]; then
    echo "failed units: $failed"
    exit 1
fi
echo "no failed units"
