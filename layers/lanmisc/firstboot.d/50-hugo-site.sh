#!/bin/sh
# Build the cluster's Hugo site (its source is rendered from the inventory into
# /srv/hugo/site) into the folder Nginx serves at /site/. Idempotent: a rebuild
# replaces the output.
set -eu
root=${PIBAKE_FIRSTBOOT_ROOT:-}
hugo --quiet --source "$root/srv/hugo/site" --destination "$root/var/www/lanmisc/site" \
    --cleanDestinationDir
echo "hugo-site: built $(find "$root/var/www/lanmisc/site" -type f | wc -l) files"
