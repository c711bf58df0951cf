#!/bin/sh
# This node is in the swarm; a manager also sees every node Ready, the
# expected number of managers, a leader and no node Down.
. /etc/pibake/swarm.env
DOCKER=${PIBAKE_DOCKER:-docker}
info=$($DOCKER info --format '{{.Swarm.LocalNodeState}} {{.Swarm.ControlAvailable}} {{if .Swarm.Cluster}}{{.Swarm.Cluster.ID}}{{end}}' 2>&1) || {
    echo "docker: $info"
    exit 1
}
set -- $info
if [ "$1" != active ]; then
    echo "not in a swarm ($1)"
    exit 1
fi
if [ "$2" != true ]; then
    echo "worker in swarm $3"
    exit 0
fi
nodes=$($DOCKER node ls --format '{{.Status}} {{.ManagerStatus}}')
ready=$(echo "$nodes" | grep -c '^Ready')
down=$(echo "$nodes" | grep -c '^Down')
managers=$(echo "$nodes" | grep -c -E ' (Leader|Reachable)$')
leaders=$(echo "$nodes" | grep -c ' Leader$')
detail="swarm $3: $ready/$PIBAKE_SWARM_NODES Ready, $managers managers, $leaders leader, $down down"
echo "$detail"
[ "$ready" -eq "$PIBAKE_SWARM_NODES" ] && [ "$down" -eq 0 ] && [ "$leaders" -eq 1 ] &&
    [ "$managers" -eq "$(echo $PIBAKE_SWARM_MANAGERS | wc -w)" ]
