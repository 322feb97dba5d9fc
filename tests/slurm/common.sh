# Shared settings and helpers for start_cluster.sh / stop_cluster.sh.
# Sourced, not executed. Everything the test cluster writes lives under
# $STATE_DIR (plus /etc/slurm and the sockets in /run), so deleting
# $STATE_DIR after stop_cluster.sh resets the cluster completely.

# Debian keeps the daemons in /usr/sbin, which a non-login PATH may lack.
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

STATE_DIR="${SLURM_TEST_STATE:-/var/tmp/mp-slurm-test}"
CLUSTER_NAME="${SLURM_TEST_CLUSTER:-testcluster}"
GPU_COUNT="${SLURM_TEST_GPUS:-2}"
PARTITION="debug"
NODE="localhost"

SLURM_ETC="/etc/slurm"
LOG_DIR="$STATE_DIR/log"
RUN_DIR="$STATE_DIR/run"          # slurm daemons' pid files (owned by slurm)
DB_DIR="$STATE_DIR/mysql"         # MariaDB datadir (owned by mysql)
DEV_DIR="$STATE_DIR/dev"          # fake GPU device nodes
CTLD_STATE="$STATE_DIR/slurmctld" # StateSaveLocation
SLURMD_SPOOL="$STATE_DIR/slurmd"  # SlurmdSpoolDir

# slurmdbd's MySQL client only finds the server on the compiled-in default
# socket (slurmdbd.conf has no socket option in 22.05), so use that path.
DB_SOCKET="/run/mysqld/mysqld.sock"
DB_NAME="slurm_acct_db"
DB_USER="slurm"
DB_PASS="slurm-test-only"         # unix socket only; never reachable over TCP

# Daemon name (as in /proc/PID/comm) -> pid file.
MUNGED_PID="/run/munge/munged.pid"
MARIADB_PID="/run/mysqld/mariadbd.pid" # next to the socket; the datadir is not world-readable
SLURMDBD_PID="$RUN_DIR/slurmdbd.pid"
SLURMCTLD_PID="$RUN_DIR/slurmctld.pid"
SLURMD_PID="$RUN_DIR/slurmd.pid"

log() { echo "[slurm-test] $*" >&2; }

die() { log "ERROR: $*"; exit 1; }

# Print the pid from PIDFILE if that process is alive and really is COMM.
# Checking the name guards against stale pid files (/run is not a tmpfs
# here, so pid files survive a reboot and their numbers get reused).
daemon_pid() {
    local comm=$1 pidfile=$2 pid
    [[ -r $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid && -r /proc/$pid/comm ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || return 1
    # A zombie (exited, not yet reaped by pid 1) is not running.
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
    echo "$pid"
}

daemon_running() { daemon_pid "$1" "$2" >/dev/null; }
