#!/bin/sh
# Install the system packages pibake needs and enable ARM emulation.
# Needs root: it runs apt-get and mounts binfmt_misc. Safe to run again.
set -eu

PACKAGES="
  python3 python3-venv python3-pip python3-guestfs libguestfs-tools linux-image-amd64
  qemu-user-static binfmt-support arch-test qemu-system-arm qemu-utils ipxe-qemu seabios
  mmdebstrap debian-archive-keyring ca-certificates kmod udev
  bmap-tools dosfstools mtools e2fsprogs fdisk zstd xz-utils openssh-client openssl
  kea-dhcp4-server kea-ctrl-agent isc-dhcp-server isc-dhcp-client bind9 bind9-utils
  bind9-dnsutils chrony iproute2 haproxy nginx-light keepalived redis-server vsftpd
  hugo
"

if [ "$(id -u)" -ne 0 ]; then
    echo "setup-host: needs root (apt-get install, mount binfmt_misc); run: sudo $0" >&2
    exit 1
fi

missing=""
for p in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    apt-get update -q
    # The daemons among them (DHCP, DNS, Redis, FTP...) are here for their config
    # checkers (pibake check) and the network-namespace tests only: none may
    # start now, and none may serve this machine's network later.
    policy=/usr/sbin/policy-rc.d
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod 755 "$policy"
        trap 'rm -f "$policy"' EXIT
    fi
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $missing
fi
if [ -d /run/systemd/system ]; then
    for unit in kea-dhcp4-server kea-ctrl-agent isc-dhcp-server named redis-server vsftpd; do
        systemctl disable --now "$unit" >/dev/null 2>&1 || true
    done
fi

if [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
    mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
fi
update-binfmts --enable >/dev/null 2>&1 || true
for h in qemu-arm qemu-aarch64; do
    if ! grep -q enabled "/proc/sys/fs/binfmt_misc/$h" 2>/dev/null; then
        update-binfmts --enable "$h"
    fi
done
echo "setup-host: system packages present, binfmt_misc handlers for ARM enabled"
