#!/usr/bin/env bash
# Stop the local SLURM test cluster started by start_cluster.sh.
#
#   tests/slurm/stop_cluster.sh                 # all its daemons
#   tests/slurm/stop_cluster.sh --slurm-only    # slurmd + slurmctld only
#   tests/slurm/stop_cluster.sh --slurmdbd-only # slurmdbd only
#   tests/slurm/stop_cluster.sh --legacy        # daemons of the previous version
#                                               # (state /var/tmp/mp-slurm-test)
#
# Give it the same SLURM_TEST_* environment as start_cluster.sh. It stops a
# process only if its pid file is in the test state dir ($SLURM_TEST_STATE)
# AND its command line names that cluster's config (slurmctld/slurmd:
# -f $SLURM_TEST_STATE/etc/slurm.conf; slurmdbd: SLURM_CONF=that file in its
# environment; munged: its --socket; mariadbd: its --datadir), so a system
# SLURM, munged or MariaDB is never touched. In reverse start order: SIGTERM,
# a bounded wait, then SIGKILL. State (job records, accounting DB) is kept in
# the state dir, so start_cluster.sh resumes where it left off. Job steps
# (slurmstepd) that are still running are not touched.
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
    stop_daemon slurmd "$SLURMD_PID"
    stop_daemon slurmctld "$SLURMCTLD_PID"
}

main() {
    ((EUID == 0)) || die "run as root"
    case "${1:-}" in
        --slurm-only) stop_slurm ;;
        --slurmdbd-only) stop_daemon slurmdbd "$SLURMDBD_PID" ;;
        --legacy) stop_legacy_daemons ;;
        "")
            stop_slurm
            stop_daemon slurmdbd "$SLURMDBD_PID"
            stop_daemon mariadbd "$MARIADB_PID"
            stop_daemon munged "$MUNGED_PID"
            log "test cluster stopped (state kept in $STATE_DIR)"
            ;;
        *) die "unknown option: $1" ;;
    esac
}

main "$@"
