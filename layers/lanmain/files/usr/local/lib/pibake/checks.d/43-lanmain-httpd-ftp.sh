#!/bin/sh
# busybox httpd serves the page from its chroot; vsftpd lists the public tree anonymously.
set -u
. "${LANMAIN_ENV:-/etc/pibake/lanmain.env}"
status=0
page=$(busybox wget -q -O - "http://$LANMAIN_SELF_IP:$LANMAIN_HTTPD_PORT/" 2>&1)
case $page in
*"$LANMAIN_CLUSTER"*) report="httpd page served" ;;
*) report="httpd page not served"; status=1 ;;
esac
pid=$(systemctl show -p MainPID --value pibake-httpd.service 2>/dev/null)
root=$(readlink "/proc/${pid:-0}/root" 2>/dev/null)
if [ "$root" = /srv/httpd ]; then report="$report from chroot $root"; else report="$report, root ${root:-unknown}"; status=1; fi
if busybox ftpget -u anonymous -p pibake "$LANMAIN_SELF_IP" - pub/README.txt 2>/dev/null | grep -q lanmain; then
    report="$report; ftp anonymous read ok"
else
    report="$report; ftp anonymous read failed"
    status=1
fi
echo "$report"
exit "$status"
