#!/usr/bin/env bash
# Stop the local SLURM test cluster started by start_cluster.sh.
#
#   tests/slurm/stop_cluster.sh                 # all daemons
#   tests/slurm/stop_cluster.sh --slurm-only    # slurmd + slurmctld only
#   tests/slurm/stop_cluster.sh --slurmdbd-only # slurmdbd only
#
# Stops daemons in reverse start order via their pid files: SIGTERM, a
# bounded wait, then SIGKILL. State (job records, accounting DB) is kept in
# $SLURM_TEST_STATE, so start_cluster.sh resumes where it left off.
# Job steps (slurmstepd) that are still running are not touched.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

STOP_WAIT_S=30  # mariadbd flushes InnoDB on shutdown; the others exit in <1 s

gone() {  # PID has exited (or is a zombie nobody reaped yet)
    [[ ! -e /proc/$1 ]] || [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) == Z ]]
}

# stop_daemon COMM PIDFILE
stop_daemon() {
    local comm=$1 pidfile=$2 pid deadline
    if ! pid=$(daemon_pid "$comm" "$pidfile"); then
        rm -f "$pidfile" 2>/dev/null || true   # stale or absent
        return 0
    fi
    log "stopping $comm (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_WAIT_S))
    until gone "$pid"; do
        if ((SECONDS >= deadline)); then
            log "$comm did not exit within ${STOP_WAIT_S}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            gone "$pid" || die "could not stop $comm (pid $pid)"
            break
        fi
        sleep 0.2
    done
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
        "")
            stop_slurm
            stop_daemon slurmdbd "$SLURMDBD_PID"
            stop_daemon mariadbd "$MARIADB_PID"
            stop_daemon munged "$MUNGED_PID"
            log "test cluster stopped"
            ;;
        *) die "unknown option: $1" ;;
    esac
}

main "$@"
