#!/bin/sh
# The account a manager's swarm gate runs as: no password, no home to write
# to, in the docker group so the gate can ask the local daemon.
set -eu
if ! getent passwd pibake-swarm >/dev/null; then
    useradd --system --home-dir /nonexistent --no-create-home --shell /bin/sh \
        --groups docker pibake-swarm
fi
