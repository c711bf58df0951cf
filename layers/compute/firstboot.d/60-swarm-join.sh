#!/bin/sh
# Join the cluster's Docker swarm, or create it when this node is the one
# allowed to and no swarm exists anywhere. Managed by pibake, layer compute.
#
# The join token comes from a manager through pibake-swarm-gate (an SSH key
# restricted to that one command; the manager's host key is checked against
# the cluster's host CA), never from a file on the boot partition. Creating a
# swarm needs every other manager to answer "inactive": one that cannot be
# reached may hold the swarm, so the step fails and the runner retries it. A
# rebuilt node therefore always finds the swarm and joins it; afterwards it
# asks a manager to forget its earlier incarnation.
#
# Run by the first-boot runner it only hands the join to its service,
# pibake-swarm-join.service (this script again, PIBAKE_SWARM_SERVICE=1, retried
# every 30 s until a manager answers): first boot is done without the peers,
# and a node alone waits for them without failing.
set -u
if [ "${PIBAKE_SWARM_SERVICE:-}" != 1 ] && [ -n "${PIBAKE_FIRSTBOOT_STEPS_DIR:-}" ]; then
    systemctl enable --now --no-block pibake-swarm-join.service || exit 1
    echo "the swarm join runs in pibake-swarm-join.service until a manager answers"
    exit 0
fi
# pibake: needs-clock (the swarm's TLS certificates)
ENV=${PIBAKE_SWARM_ENV:-/etc/pibake/swarm.env}
. "$ENV"
DOCKER=${PIBAKE_DOCKER:-docker}
SSH=${PIBAKE_SSH:-ssh}
me=${PIBAKE_HOST:-$(hostname)}

ask() {
    # $1: manager host, $2: request; prints the gate's answer (its stdout: sshd
    # may add notices on stderr, e.g. that the gate account has no home)
    $SSH -i "$PIBAKE_SWARM_KEY" -o BatchMode=yes -o ConnectTimeout=10 \
        -o StrictHostKeyChecking=yes -o UserKnownHostsFile=/etc/ssh/ssh_known_hosts \
        "pibake-swarm@$1" "$2" 2>/dev/null
}

state=$($DOCKER info --format '{{.Swarm.LocalNodeState}}' 2>/dev/null) || {
    echo "docker is not answering yet"
    exit 1
}
case $state in
    active)
        echo "already in the swarm"
        exit 0 ;;
    pending)
        echo "the swarm join is still in progress"
        exit 1 ;;
    error)
        # a join that did not complete (the manager was slow to answer): docker
        # keeps the half-joined state and refuses another join until it is left
        $DOCKER swarm leave --force >/dev/null 2>&1 || exit 1
        echo "left a swarm join that had failed; joining again" ;;
esac

others=0
inactive=0
unreachable=""
for manager in $PIBAKE_SWARM_MANAGERS; do
    [ "$manager" = "$me" ] && continue
    others=$((others + 1))
    if answer=$(ask "$manager" "token $PIBAKE_SWARM_ROLE"); then
        set -- $answer
        if [ $# -ne 2 ]; then
            echo "$manager gave no join token: $answer"
            exit 1
        fi
        $DOCKER swarm join --advertise-addr "$PIBAKE_SWARM_ADDR" --token "$1" "$2" || exit 1
        echo "joined the swarm through $manager as $PIBAKE_SWARM_ROLE"
        cleanup=$(ask "$manager" "forget $me") || echo "could not forget old $me nodes yet: $cleanup"
        [ -n "$cleanup" ] && echo "$cleanup"
        exit 0
    fi
    case $answer in
        "no swarm here: inactive"*) inactive=$((inactive + 1)) ;;
        *) unreachable="$unreachable $manager" ;;
    esac
done

if [ "$me" = "$PIBAKE_SWARM_BOOTSTRAP" ] && [ "$inactive" -eq "$others" ]; then
    $DOCKER swarm init --advertise-addr "$PIBAKE_SWARM_ADDR" >/dev/null || exit 1
    echo "created the swarm (no other manager had one)"
    exit 0
fi
if [ -n "$unreachable" ]; then
    echo "waiting for a swarm manager (not answering:$unreachable)"
else
    echo "waiting for $PIBAKE_SWARM_BOOTSTRAP to create the swarm"
fi
exit 1
