#!/bin/sh
# Folders the rendered lanmisc configs point at.
set -eu
mkdir -p /var/www/lanmisc
