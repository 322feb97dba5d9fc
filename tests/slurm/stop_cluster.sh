#!/usr/bin/env bash
# Stop the local SLURM test cluster started by start_cluster.sh.
#
#   tests/slurm/stop_cluster.sh                 # all its daemons
#   tests/slurm/stop_cluster.sh --slurm-only    # slurmd + slurmctld only
#   tests/slurm/stop_cluster.sh --slurmdbd-only # slurmdbd only
#   tests/slurm/stop_cluster.sh --legacy        # daemons of the previous version
#                                               # (state /var/tmp/mp-slurm-test)
#   tests/slurm/stop_cluster.sh --power-off NODE  # multi-node: cut NODE as a power
#                                               # loss would (start_cluster.sh brings it back)
#
# Give it the same SLURM_TEST_* environment as start_cluster.sh. It stops a
# process only if its pid file is in the test state dir ($SLURM_TEST_STATE)
# AND its command line names that cluster's config (slurmctld/slurmd:
# -f $SLURM_TEST_STATE/etc/slurm.conf; slurmdbd: SLURM_CONF=that file in its
# environment; munged: its --socket; mariadbd: its --datadir), so a system
# SLURM, munged or MariaDB is never touched. In reverse start order: SIGTERM,
# a bounded wait, then SIGKILL. State (job records, accounting DB) is kept in
# the state dir, so start_cluster.sh resumes where it left off. Job steps
# (slurmstepd) that are still running are not touched, except in a multi-node
# cluster's full stop: every process in its nodes' namespaces is ended, then the
# namespaces, their links and the bridge are removed.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

# stop_daemon COMM PIDFILE
stop_daemon() {
    local comm=$1 pidfile=$2 pid
    if ! pid=$(daemon_pid "$comm" "$pidfile"); then
        # Stale, absent, or not ours: never signal it. A pid file that names
        # a live process that is not ours is left in place too.
        return 0
    fi
    terminate "$pid" "$comm"
    rm -f "$pidfile" 2>/dev/null || true
}

stop_slurm() {
    local node
    for node in "${NODES[@]}"; do stop_daemon slurmd "$(slurmd_pid_file "$node")"; done
    stop_daemon slurmctld "$SLURMCTLD_PID"
}

# kill_namespace NS SIGNAL: send SIGNAL to every process in network namespace NS (all
# of them were started there by this cluster's slurmd); true if there were any.
kill_namespace() {
    local pids
    [[ -e /run/netns/$1 ]] || return 1
    pids=$(ip netns pids "$1")
    [[ -n $pids ]] || return 1
    # shellcheck disable=SC2086  # one pid per word
    kill "-$2" $pids 2>/dev/null || true
}

# Every process left in the nodes' namespaces (job steps), then the namespaces, their
# veth pairs (each goes with its namespace) and the bridge.
remove_network() {
    local node ns deadline
    multi_node || return 0
    for node in "${NODES[@]}"; do
        ns=$(node_netns "$node")
        kill_namespace "$ns" TERM || continue
        deadline=$((SECONDS + STOP_WAIT_S))
        while kill_namespace "$ns" 0 && ((SECONDS < deadline)); do sleep 0.2; done
        kill_namespace "$ns" KILL && sleep 0.5
    done
    for node in "${NODES[@]}"; do
        ns=$(node_netns "$node")
        [[ -e /run/netns/$ns ]] && ip netns delete "$ns"
    done
    if ip link show "$BRIDGE" >/dev/null 2>&1; then ip link delete "$BRIDGE"; fi
    log "removed the nodes' namespaces and bridge $BRIDGE"
}

# What a node's power loss looks like to the others: its link goes first (no packet
# leaves it again: peers get no reset, they wait), then every process on it dies, slurmd
# included. SLURM marks it DOWN only once it misses SlurmdTimeout (300 s) of pings; a test
# that does not want to wait sets it down itself (scontrol update state=down).
power_off() {
    local node=$1
    multi_node || die "--power-off needs a multi-node cluster (SLURM_TEST_NODES > 1)"
    [[ " ${NODES[*]} " == *" $node "* ]] || die "no node '$node' in this cluster (${NODES[*]})"
    ip link set "$(node_veth "$node")" down
    kill_namespace "$(node_netns "$node")" KILL || true
    log "powered off $node (start_cluster.sh brings it back)"
}

main() {
    ((EUID == 0)) || die "run as root"
    case "${1:-}" in
        --slurm-only) stop_slurm ;;
        --slurmdbd-only) stop_daemon slurmdbd "$SLURMDBD_PID" ;;
        --legacy) stop_legacy_daemons ;;
        --power-off) power_off "${2:?--power-off needs a node name}" ;;
        "")
            stop_slurm
            remove_network
            stop_daemon slurmdbd "$SLURMDBD_PID"
            stop_daemon mariadbd "$MARIADB_PID"
            stop_daemon munged "$MUNGED_PID"
            log "test cluster stopped (state kept in $STATE_DIR)"
            ;;
        *) die "unknown option: $1" ;;
    esac
}

main "$@"
