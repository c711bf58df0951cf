#!/bin/sh
# Switch the camera on in the firmware's config.txt: Raspbian stretch's legacy
# stack needs the start_x firmware and GPU memory; Raspberry Pi OS finds the
# sensor itself (libcamera) when camera_auto_detect is on.
set -eu
case "$PIBAKE_SUITE" in
    stretch) /usr/local/sbin/pibake-config-txt start_x=1 gpu_mem=128 ;;
    *) /usr/local/sbin/pibake-config-txt camera_auto_detect=1 ;;
esac
# /dev/video* and /dev/vchiq belong to group video
if getent group video >/dev/null; then usermod -a -G video "$PIBAKE_ADMIN_USER"; fi
