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
# systemd gives the service a mount namespace of its own, where readlink of
# /proc/PID/root says "/": compare the directories themselves (device, inode)
if [ "${pid:-0}" != 0 ] && [ "/proc/$pid/root" -ef /srv/httpd ] && \
        [ ! -e "/proc/$pid/root/etc/shadow" ]; then
    report="$report from chroot /srv/httpd"
else
    report="$report, not from its chroot /srv/httpd (pid ${pid:-none})"; status=1
fi
if busybox ftpget -u anonymous -p pibake "$LANMAIN_SELF_IP" - pub/README.txt 2>/dev/null | grep -q lanmain; then
    report="$report; ftp anonymous read ok"
else
    report="$report; ftp anonymous read failed"
    status=1
fi
echo "$report"
exit "$status"
