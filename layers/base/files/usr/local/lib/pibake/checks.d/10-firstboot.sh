#!/bin/sh
# Every first-boot step of this image is stamped done.
steps=/usr/local/lib/pibake/firstboot.d
stamps=/var/lib/pibake/firstboot
pending=""
for step in "$steps"/*.sh; do
    [ -e "$step" ] || continue
    name=${step##*/}
    name=${name%.sh}
    [ -f "$stamps/$name.done" ] || pending="$pending $name"
done
if [ -n "$pending" ]; then
    echo "first-boot steps not done:$pending"
    exit 1
fi
echo "all first-boot steps done"
