#!/bin/sh
# Create the admin account (SSH keys only) and lock every password the base
# image carries, so no account has a default password.
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
# '*' or '!' prefixed hashes are already locked; lock everything else.
awk -F: '$2 !~ /^[!*]/ { print $1 }' /etc/shadow | while read -r account; do
    usermod -L "$account"
done
passwd -l root >/dev/null
install -d -m 0700 -o "$user" -g "$user" "/home/$user/.ssh"
