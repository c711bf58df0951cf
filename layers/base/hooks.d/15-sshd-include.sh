#!/bin/sh
# Make sshd read /etc/ssh/sshd_config.d/*.conf (the base layer's hardening and
# HostKey lines), first: sshd keeps the first value it reads for a keyword.
# Debian bookworm's sshd_config has the Include line already; Raspbian stretch's
# (OpenSSH 7.4, which knows Include) does not.
set -eu
conf=${SSHD_CONFIG:-/etc/ssh/sshd_config}
[ -f "$conf" ] || exit 0
mkdir -p "$(dirname "$conf")/sshd_config.d"
if grep -Eiq '^[[:space:]]*Include[[:space:]]+/etc/ssh/sshd_config\.d/' "$conf"; then
    exit 0
fi
{
    echo "# added by pibake: the drop-ins come first (the first value read wins)"
    echo "Include /etc/ssh/sshd_config.d/*.conf"
    echo
    cat "$conf"
} > "$conf.pibake"
chmod 644 "$conf.pibake"
mv "$conf.pibake" "$conf"
