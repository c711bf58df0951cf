#!/bin/sh
# Enable what the compute templates configure. The unit files themselves are
# rendered per host later (host layer), so the links dangle until then.
set -eu
mkdir -p /etc/systemd/system/remote-fs.target.wants /srv/share
ln -sf /etc/systemd/system/srv-share.automount \
    /etc/systemd/system/remote-fs.target.wants/srv-share.automount
# The site's root; index.html is rendered per host.
mkdir -p /var/www/pibake
# Debian enables haproxy, keepalived, nginx and docker on install; distcc
# starts from /etc/default/distcc (STARTDISTCC).
for unit in haproxy keepalived nginx docker; do
    if [ -f "/lib/systemd/system/$unit.service" ] && \
       [ ! -e "/etc/systemd/system/multi-user.target.wants/$unit.service" ]; then
        ln -s "/lib/systemd/system/$unit.service" \
            "/etc/systemd/system/multi-user.target.wants/$unit.service"
    fi
done
