# shellcheck shell=bash disable=SC2034  # settings are used by the scripts that source this
# Shared settings and helpers for start_cluster.sh / stop_cluster.sh.
# Sourced, not executed.
#
# The test cluster is self-contained: every file it writes (configs, munge
# key, MariaDB datadir, sockets, pid files, logs, spool, fake GPU nodes)
# lives under $STATE_DIR, its daemons listen on their own ports, and its
# clients find it through SLURM_CONF=$STATE_DIR/etc/slurm.conf. Nothing in
# /etc/slurm, /etc/munge, /etc/mysql, /run/munge or /run/mysqld is read or
# written, so a system SLURM/munge/MariaDB on the same machine is left alone.
# Deleting $STATE_DIR after stop_cluster.sh resets the cluster completely.

# Debian keeps the daemons in /usr/sbin, which a non-login PATH may lack.
export PATH="/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:${PATH:-}"

# Nodes: one (the default, node "localhost" on 127.0.0.1), or N "nodeI" each in its own
# network, host-name and mount namespace (see MULTI-NODE below). A cluster of N nodes has
# its own defaults for the state folder, name and ports, so it runs beside the one-node one.
NODE_COUNT="${SLURM_TEST_NODES:-1}"
if [[ $NODE_COUNT == 1 || ! $NODE_COUNT =~ ^[0-9]$ ]]; then
    DEFAULT_SUFFIX="" DEFAULT_PORT=16817
else
    DEFAULT_SUFFIX="-${NODE_COUNT}nodes" DEFAULT_PORT=$((16817 + 10 * (NODE_COUNT - 1)))
fi
STATE_DIR="${SLURM_TEST_STATE:-/var/tmp/mp-slurm-test-v2$DEFAULT_SUFFIX}"
STATE_DIR="${STATE_DIR%/}"
CLUSTER_NAME="${SLURM_TEST_CLUSTER:-testcluster${DEFAULT_SUFFIX//-/_}}"
GPU_COUNT="${SLURM_TEST_GPUS:-2}"
CTLD_PORT="${SLURM_TEST_CTLD_PORT:-$DEFAULT_PORT}"            # SlurmctldPort (SLURM's: 6817)
SLURMD_PORT="${SLURM_TEST_SLURMD_PORT:-$((DEFAULT_PORT + 1))}" # SlurmdPort (6818)
DBD_PORT="${SLURM_TEST_DBD_PORT:-$((DEFAULT_PORT + 2))}"       # DbdPort = AccountingStoragePort (6819)
PARTITION="debug"

CONF_DIR="$STATE_DIR/etc"         # slurm.conf, gres.conf, slurmdbd.conf
LOG_DIR="$STATE_DIR/log"          # slurm daemons' and MariaDB's logs
RUN_DIR="$STATE_DIR/run/slurm"    # slurm daemons' pid files (owned by slurm)
DB_DIR="$STATE_DIR/mysql"         # MariaDB datadir (owned by mysql)
DB_RUN="$STATE_DIR/run/mysqld"    # MariaDB socket and pid file (owned by mysql)
MUNGE_DIR="$STATE_DIR/munge"      # munge key, seed and log (owned by munge, 0700)
MUNGE_RUN="$STATE_DIR/run/munge"  # munge socket and pid file (owned by munge, 0755)
DEV_DIR="$STATE_DIR/dev"          # fake GPU device nodes
CTLD_STATE="$STATE_DIR/slurmctld" # StateSaveLocation
SLURMD_SPOOL="$STATE_DIR/slurmd"  # SlurmdSpoolDir

BIN_DIR="$STATE_DIR/bin"          # client wrappers (see render_wrapper)
# The SLURM clients that get a wrapper in $BIN_DIR.
CLIENTS=(srun sbatch salloc squeue scontrol sacct sinfo scancel sacctmgr sstat)

SLURM_CONF_FILE="$CONF_DIR/slurm.conf"
# Every SLURM client and daemon started from these scripts reads this config
# (slurmdbd finds slurmdbd.conf next to it), never /etc/slurm. Settings a
# caller's environment might carry for another cluster are dropped.
export SLURM_CONF="$SLURM_CONF_FILE"
unset SLURM_CLUSTERS SINFO_PARTITION SINFO_FORMAT SINFO_SORT SLURM_TIME_FORMAT

MUNGE_SOCKET="$MUNGE_RUN/munge.socket"
MUNGE_KEY="$MUNGE_DIR/munge.key"
# libmunge has no environment variable for the socket: the readiness probe
# passes `munge -S`/`unmunge -S`, SLURM gets it from its configs.

# MariaDB: unix socket only (--skip-networking), in the state dir. slurmdbd
# 22.05 has no socket setting, but its client library (libmariadb) takes the
# socket path from MYSQL_UNIX_PORT, which start_cluster.sh sets for it. The
# database and user names are the test cluster's own, so even a slurmdbd that
# somehow reached a system MariaDB would neither log in nor find its tables.
DB_SOCKET="$DB_RUN/mysqld.sock"
DB_NAME="mp_slurm_test_acct"
DB_USER="mp_slurm_test"
DB_PASS="slurm-test-only" # unix socket only; never reachable over TCP

# Pid files: all in the state dir.
MUNGED_PID="$MUNGE_RUN/munged.pid"
MARIADB_PID="$DB_RUN/mariadbd.pid"
SLURMDBD_PID="$RUN_DIR/slurmdbd.pid"
SLURMCTLD_PID="$RUN_DIR/slurmctld.pid"

# ------------------------------------------------------------- MULTI-NODE
# Each node of a multi-node cluster: a network namespace (NETNS_PREFIX + name) joined by a
# veth pair (VETH_PREFIX + number) to a bridge (BRIDGE) that holds the controller's address
# in this machine's namespace; a UTS namespace with the node's name; a mount namespace
# whose /etc/hosts (HOSTS_FILE) names every node, as a cluster's DNS would. The names are
# derived from the controller's port, so two test clusters never share one.
multi_node() { ((NODE_COUNT > 1)); }
if [[ $NODE_COUNT =~ ^[0-9]$ ]] && multi_node; then
    NODES=()
    for ((i = 1; i <= NODE_COUNT; i++)); do NODES+=("node$i"); done
    SUBNET="10.217.$((CTLD_PORT % 256))" # a /24 for this cluster
    CTLD_ADDR="$SUBNET.1"
else
    NODES=(localhost)
    CTLD_ADDR="127.0.0.1"
fi
BRIDGE="mpsl$CTLD_PORT"
VETH_PREFIX="mpsl${CTLD_PORT}v"
NETNS_PREFIX="mpsl$CTLD_PORT-"
HOSTS_FILE="$CONF_DIR/hosts"

node_addr() { echo "$SUBNET.$((10 + ${1#node}))"; }      # node3 -> 10.217.x.13
node_netns() { echo "$NETNS_PREFIX$1"; }
node_veth() { echo "$VETH_PREFIX${1#node}"; }

# A slurmd's pid and log file: one per node name (slurm.conf gives them with %n).
slurmd_pid_file() { multi_node && echo "$RUN_DIR/slurmd-$1.pid" || echo "$RUN_DIR/slurmd.pid"; }
slurmd_log() { multi_node && echo "$LOG_DIR/slurmd-$1.log" || echo "$LOG_DIR/slurmd.log"; }

# The previous version of these scripts (configs in /etc/slurm, default ports,
# munged and MariaDB on the system sockets) kept its state here.
LEGACY_STATE_DIR="/var/tmp/mp-slurm-test"

log() { echo "[slurm-test] $*" >&2; }

die() { log "ERROR: $*"; exit 1; }

# The NUL-separated argument list (or environment) of PID, one per line.
proc_lines() { tr '\0' '\n' <"/proc/$1/$2" 2>/dev/null; }

# True if process PID belongs to this test cluster (this state dir): one of
# its arguments is exactly NEEDLE, or (slurmdbd has no -f option) its
# environment holds SLURM_CONF=<our slurm.conf>.
proc_is_ours() {
    local pid=$1 needle=$2
    proc_lines "$pid" cmdline | grep -qxF -- "$needle" && return 0
    [[ $needle == "$SLURM_CONF_FILE" ]] &&
        proc_lines "$pid" environ | grep -qxF -- "SLURM_CONF=$SLURM_CONF_FILE"
}

# The argument (or environment entry) that marks each daemon as ours.
daemon_needle() {
    case $1 in
        munged) echo "--socket=$MUNGE_SOCKET" ;;
        mariadbd) echo "--datadir=$DB_DIR" ;;
        *) echo "$SLURM_CONF_FILE" ;; # slurmctld/slurmd: -f FILE; slurmdbd: env
    esac
}

# Print the pid from PIDFILE if that process is alive, really is COMM and
# was started for this state dir (daemon_needle). The last two guard against
# stale pid files whose numbers were reused (e.g. after a reboot: /var/tmp
# is kept) and against ever signalling a daemon these scripts did not start.
daemon_pid() {
    local comm=$1 pidfile=$2 pid
    [[ -r $pidfile ]] || return 1
    pid=$(tr -dc '0-9' <"$pidfile")
    [[ -n $pid && -r /proc/$pid/comm ]] || return 1
    [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || return 1
    # A zombie (exited, not yet reaped by pid 1) is not running.
    [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
    proc_is_ours "$pid" "$(daemon_needle "$comm")" || return 1
    echo "$pid"
}

daemon_running() { daemon_pid "$1" "$2" >/dev/null; }

# ------------------------------------------------- stopping a process

STOP_WAIT_S=30 # mariadbd flushes InnoDB on shutdown; the others exit in <1 s

gone() { # PID has exited (or is a zombie nobody reaped yet)
    [[ ! -e /proc/$1 ]] || [[ $(awk '{print $3}' "/proc/$1/stat" 2>/dev/null) == Z ]]
}

# terminate PID NAME: SIGTERM, a bounded wait, then SIGKILL.
terminate() {
    local pid=$1 name=$2 deadline
    log "stopping $name (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$((SECONDS + STOP_WAIT_S))
    until gone "$pid"; do
        if ((SECONDS >= deadline)); then
            log "$name did not exit within ${STOP_WAIT_S}s; sending SIGKILL"
            kill -KILL "$pid" 2>/dev/null || true
            sleep 1
            gone "$pid" || die "could not stop $name (pid $pid)"
            break
        fi
        sleep 0.2
    done
}

# ------------------------------------------- the previous version's daemons

# Pids of the daemons the previous version of start_cluster.sh started, and
# only those: slurmctld/slurmd/slurmdbd whose pid file is in the legacy state
# dir and whose arguments are exactly what that version used (no -f: they
# read /etc/slurm), and the mariadbd whose datadir is the legacy one. Its
# munged (on /run/munge with /etc/munge/munge.key) cannot be told apart from
# a system munged, so it is left running; it does not disturb this cluster.
legacy_pids() {
    local comm pidfile expected pid args name
    for comm in slurmd slurmctld slurmdbd; do
        pidfile="$LEGACY_STATE_DIR/run/$comm.pid"
        case $comm in
            slurmd) expected="slurmd -N localhost" ;;
            *) expected=$comm ;;
        esac
        [[ -r $pidfile ]] || continue
        pid=$(tr -dc '0-9' <"$pidfile")
        [[ -n $pid && $(cat "/proc/$pid/comm" 2>/dev/null) == "$comm" ]] || continue
        args=$(proc_lines "$pid" cmdline | paste -sd ' ')
        [[ $args == "$expected" ]] && echo "$pid $comm"
    done
    # Builtins only in this loop over every process: it runs on every start.
    for pidfile in /proc/[0-9]*/comm; do
        { read -r name <"$pidfile"; } 2>/dev/null || continue
        [[ $name == mariadbd ]] || continue
        pid=${pidfile#/proc/}
        pid=${pid%/comm}
        proc_lines "$pid" cmdline | grep -qxF -- "--datadir=$LEGACY_STATE_DIR/mysql" &&
            echo "$pid mariadbd"
    done
    return 0
}

stop_legacy_daemons() {
    local pid comm found=0
    while read -r pid comm; do
        [[ -n $pid ]] || continue
        ((found)) || log "found daemons of the previous test-cluster version" \
            "(state $LEGACY_STATE_DIR, configs in /etc/slurm); stopping them"
        found=1
        terminate "$pid" "old $comm"
    done < <(legacy_pids)
}
