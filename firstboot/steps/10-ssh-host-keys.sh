#!/bin/sh
# Create SSH host keys when the image carries none. Images built by pibake
# normally carry the host's own keys from the secrets store; this is the
# fallback so sshd never fails for lack of keys.
set -eu
ROOT=${PIBAKE_FIRSTBOOT_ROOT:-}
if ! command -v ssh-keygen >/dev/null 2>&1; then
    echo "ssh-host-keys: openssh not installed; nothing to do"
    exit 0
fi
for key in "$ROOT"/etc/ssh/ssh_host_*_key; do
    if [ -e "$key" ]; then
        echo "ssh-host-keys: image carries host keys; nothing to do"
        exit 0
    fi
done
mkdir -p "$ROOT/etc/ssh"
if [ -n "$ROOT" ]; then
    ssh-keygen -A -f "$ROOT"
else
    ssh-keygen -A
fi
echo "ssh-host-keys: created"
# sshd may already have failed for lack of keys; start it again now they exist
if [ -z "$ROOT" ] && command -v systemctl >/dev/null 2>&1; then
    for unit in ssh.service sshd.service; do
        if systemctl is-enabled --quiet "$unit" 2>/dev/null; then
            systemctl reset-failed "$unit" 2>/dev/null || true
            systemctl --no-block restart "$unit" || true
            break
        fi
    done
fi
exit 0
