#!/bin/sh
# The HAT sits on the Pi's ARM I2C bus (sensors at 0x1c/0x6a, 0x5c, 0x5f; its
# LED matrix and joystick controller at 0x46). rpi-sense is the overlay the
# HAT's own EEPROM names; the firmware loads it where the base ships it.
set -eu
/usr/local/sbin/pibake-config-txt dtparam=i2c_arm=on dtoverlay=rpi-sense
# i2c-tools makes the i2c group that owns /dev/i2c-*
if getent group i2c >/dev/null; then usermod -a -G i2c "$PIBAKE_ADMIN_USER"; fi
