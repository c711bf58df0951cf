#!/bin/sh
# Enable the DHCP server the pair runs (LANMAIN_DHCP_SERVER: kea or isc-dhcp)
# and disable the other one, so only one answers on the LAN.
set -eu
units_kea="kea-dhcp4-server.service kea-ctrl-agent.service"
case "$LANMAIN_DHCP_SERVER" in
kea)
    systemctl enable $units_kea
    if [ -e /etc/init.d/isc-dhcp-server ]; then systemctl disable isc-dhcp-server; fi
    ;;
isc-dhcp)
    for u in $units_kea; do
        if [ -e "/lib/systemd/system/$u" ]; then systemctl disable "$u"; fi
    done
    systemctl enable isc-dhcp-server
    ;;
*)
    echo "20-dhcp-server: LANMAIN_DHCP_SERVER=$LANMAIN_DHCP_SERVER: expected kea or isc-dhcp" >&2
    exit 1
    ;;
esac
systemctl enable named.service 2>/dev/null || systemctl enable bind9.service
systemctl enable chrony.service vsftpd.service
