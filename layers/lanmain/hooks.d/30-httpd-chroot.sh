#!/bin/sh
# The busybox httpd chroot: root-owned and read-only for the daemon, holding
# only the static busybox binary and the www tree; a system user without a shell.
set -eu
if ! getent passwd pibake-httpd >/dev/null; then
    useradd --system --user-group --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin pibake-httpd
fi
install -d -o root -g root -m 0755 /srv/httpd /srv/httpd/bin /srv/httpd/www
install -o root -g root -m 0755 /bin/busybox /srv/httpd/bin/busybox
systemctl enable pibake-httpd.service
