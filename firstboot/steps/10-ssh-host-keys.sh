#!/bin/sh
# Create the SSH host keys the image lacks, before sshd first starts.
#
# Run twice per image on purpose: by pibake-ssh-host-keys.service (ordered
# Before=ssh.service, so sshd never starts without keys) and as the runner's
# step 10 (which then finds the keys and only reports). A lock keeps the two
# from generating the same key at once.
#
# Which keys: the HostKey lines of sshd_config and sshd_config.d/*.conf (the base
# layer lists ed25519 and ecdsa: a 3072-bit RSA key costs 20 s of an emulated
# first boot and no current client needs it); with no HostKey line, every
# default type (ssh-keygen -A). A key that exists is never replaced.
set -eu
ROOT=${PIBAKE_FIRSTBOOT_ROOT:-}
ROOT=${ROOT%/}
if ! command -v ssh-keygen >/dev/null 2>&1; then
    echo "ssh-host-keys: openssh not installed; nothing to do"
    exit 0
fi
mkdir -p "$ROOT/etc/ssh" "$ROOT/run"
exec 9>"$ROOT/run/pibake-ssh-host-keys.lock"
if command -v flock >/dev/null 2>&1; then
    flock 9
fi

configured=$(cat "$ROOT/etc/ssh/sshd_config" "$ROOT"/etc/ssh/sshd_config.d/*.conf 2>/dev/null \
    | awk 'tolower($1) == "hostkey" { print $2 }')
created=""
if [ -n "$configured" ]; then
    for key in $configured; do
        [ -e "$ROOT$key" ] && continue
        type=${key##*/ssh_host_}
        type=${type%_key}
        case $type in
            rsa|ecdsa|ed25519) ;;
            *) echo "ssh-host-keys: cannot tell the key type of HostKey $key"; exit 1 ;;
        esac
        ssh-keygen -q -t "$type" -N '' -C "root@$(cat "$ROOT/etc/hostname" 2>/dev/null || echo host)" \
            -f "$ROOT$key"
        created="$created $type"
    done
else
    missing=no
    for type in rsa ecdsa ed25519; do
        [ -e "$ROOT/etc/ssh/ssh_host_${type}_key" ] || missing=yes
    done
    if [ "$missing" = yes ]; then
        if [ -n "$ROOT" ]; then ssh-keygen -A -f "$ROOT"; else ssh-keygen -A; fi
        created=" (ssh-keygen -A)"
    fi
fi
if [ -z "$created" ]; then
    echo "ssh-host-keys: image carries host keys; nothing to do"
    exit 0
fi
echo "ssh-host-keys: created$created"
# an sshd that already failed for lack of keys (a base without our unit) gets
# started again now that they exist
if [ -z "$ROOT" ] && command -v systemctl >/dev/null 2>&1; then
    for unit in ssh.service sshd.service; do
        if systemctl is-failed --quiet "$unit" 2>/dev/null; then
            systemctl reset-failed "$unit" 2>/dev/null || true
            systemctl --no-block restart "$unit" || true
        fi
    done
fi
exit 0
