#!/bin/sh
# Create the admin account: SSH keys only, no password (pibake locks every
# password hash in /etc/shadow after the layers have run).
set -eu
user="$PIBAKE_ADMIN_USER"
shell="$BASE_ADMIN_SHELL"
[ -x "$shell" ] || shell=/bin/sh
if ! getent passwd "$user" >/dev/null; then
    useradd --create-home --shell "$shell" "$user"
fi
for g in sudo adm systemd-journal; do
    if getent group "$g" >/dev/null; then usermod -aG "$g" "$user"; fi
done
install -d -m 0700 -o "$user" -g "$user" "/home/$user/.ssh"
