#!/usr/bin/env bash
# Start (or confirm) a real single-node SLURM cluster with accounting and
# fake GPUs on this machine, for the project's tests. It is self-contained:
# its own configs, munged, MariaDB, state, sockets and ports, all under
# $SLURM_TEST_STATE; it never writes /etc/slurm, /etc/munge, /etc/mysql,
# /run/munge or /run/mysqld, and never stops a daemon it did not start, so
# a system SLURM on the same machine is not disturbed.
#
#   tests/slurm/start_cluster.sh   # idempotent; a rerun confirms in <1 s
#   tests/slurm/start_cluster.sh --is-running  # exit 0 if all its daemons run (starts nothing)
#   tests/slurm/stop_cluster.sh    # stop its daemons again (same environment)
#
# The LAST LINE of stdout is the SLURM_CONF path of the test cluster; every
# SLURM client (sbatch, squeue, sacct, scontrol, sinfo, sacctmgr) must use it:
#
#   export SLURM_CONF="$(tests/slurm/start_cluster.sh | tail -n 1)"
#
# Jobs that run SLURM clients without SLURM_CONF (the Snakemake jobstep plugin
# removes SLURM_* variables from the environment of the srun it starts) need
# the cluster's client wrappers first on PATH too, <state>/bin, i.e.
#
#   export PATH="$(dirname "$(dirname "$SLURM_CONF")")/bin:$PATH"
#
# (tests/test_slurm.py's `slurm_cluster` fixture sets both for the session.)
#
# Environment (the same values must be given to stop_cluster.sh):
#   SLURM_TEST_NODES        nodes (default 1: node "localhost"; N > 1: node1..nodeN, each
#                           in its own network, host-name and mount namespace, see below)
#   SLURM_TEST_STATE        everything the cluster writes (default /var/tmp/mp-slurm-test-v2,
#                           with -Nnodes appended for N nodes)
#   SLURM_TEST_CLUSTER      cluster name (default testcluster, testcluster_Nnodes)
#   SLURM_TEST_GPUS         GPUs the node declares (default 2; fake device nodes)
#   SLURM_TEST_CTLD_PORT    SlurmctldPort (default 16817; 16817 + 10 (N - 1) for N nodes)
#   SLURM_TEST_SLURMD_PORT  SlurmdPort (default the controller's + 1)
#   SLURM_TEST_DBD_PORT     DbdPort / AccountingStoragePort (default the controller's + 2)
# MariaDB listens on a unix socket in the state dir only (no TCP port).
#
# Several nodes on this one machine (SLURM_TEST_NODES=N): a bridge mpsl<port> holds the
# controller's address 10.217.<port % 256>.1/24; node I is a slurmd in network namespace
# mpsl<port>-nodeI (address .1I, a veth pair into the bridge), its own UTS namespace (host
# name nodeI) and mount namespace (an /etc/hosts naming every node, bound over the
# machine's there only). They share the file system, as a cluster's nodes share theirs;
# jobs and their steps run inside their node's namespaces. stop_cluster.sh removes the
# namespaces, links and every process in them; `stop_cluster.sh --power-off nodeI` cuts
# one node as a power loss would (see there).
#
# If another process already listens on one of these ports, the script says
# which and exits 1 before changing anything. Daemons of the previous version
# of this script (state in /var/tmp/mp-slurm-test, configs in /etc/slurm) are
# stopped whenever it runs as root (see legacy_pids in common.sh; its munged is
# left, as it cannot be told from a system one); their files are left too.
#
# Layout: munged -> mariadbd (unix socket only) -> slurmdbd -> slurmctld ->
# slurmd, each started only if not already running, each with a bounded
# readiness wait. There is no systemd here, so we start daemons ourselves.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=common.sh
source "$HERE/common.sh"

PACKAGES=(munge slurmctld slurmd slurm-client slurmdbd mariadb-server)
WAIT_S=30      # upper bound for every readiness wait
WAIT_DETAIL="" # extra words for a failed wait (set by a probe)

# ---------------------------------------------------------------- helpers

# Print the last lines of a log, to explain a failed wait.
show_log() {
    local f=$1
    if [[ -r $f ]]; then
        log "---- last lines of $f ----"
        tail -n 25 "$f" >&2 || true
        log "----"
    fi
}

# wait_until DESCRIPTION LOGFILE CMD...: poll CMD (quietly) for at most
# $WAIT_S seconds; on timeout fail with the log's tail. Every probe below is
# itself wrapped in `timeout` so a hung client cannot stretch the bound.
wait_until() {
    local desc=$1 logfile=$2
    shift 2
    local deadline=$((SECONDS + WAIT_S))
    until "$@" >/dev/null 2>&1; do
        if ((SECONDS >= deadline)); then
            show_log "$logfile"
            die "$desc not ready after ${WAIT_S}s${WAIT_DETAIL:+ ($WAIT_DETAIL)} (log: $logfile)"
        fi
        sleep 0.2
    done
}

# Run a daemon-starting command without our lock fd (9): a daemon that
# inherited it would hold the start lock for its whole life.
launch() { "$@" 9>&-; }

# Make FILE exist with OWNER, so a daemon that drops privileges can still
# write it.
touch_owned() { touch "$2" && chown "$1" "$2"; }

# ------------------------------------------------------------- settings

check_settings() {
    local name value ports=()
    [[ $GPU_COUNT =~ ^[0-9]+$ ]] || die "SLURM_TEST_GPUS must be a number, got '$GPU_COUNT'"
    [[ $NODE_COUNT =~ ^[1-9]$ ]] || die "SLURM_TEST_NODES must be a number of nodes 1-9, got '$NODE_COUNT'"
    [[ $CLUSTER_NAME =~ ^[a-z][a-z0-9_]*$ ]] ||
        die "SLURM_TEST_CLUSTER must be lower-case letters, digits and _, got '$CLUSTER_NAME'"
    # Absolute, no odd characters, short enough for unix socket paths (108 bytes).
    [[ $STATE_DIR =~ ^/[A-Za-z0-9._/-]+$ && ${#STATE_DIR} -le 64 ]] ||
        die "SLURM_TEST_STATE must be an absolute path of at most 64 plain characters, got '$STATE_DIR'"
    for name in CTLD_PORT SLURMD_PORT DBD_PORT; do
        value=${!name}
        if ! [[ $value =~ ^[0-9]+$ ]] || ((value < 1024 || value > 65535)); then
            die "SLURM_TEST_$name must be a port number in 1024-65535, got '$value'"
        fi
        ports+=("$value")
    done
    [[ $(printf '%s\n' "${ports[@]}" | sort -u | wc -l) -eq ${#ports[@]} ]] ||
        die "the controller, slurmd and slurmdbd ports must differ, got ${ports[*]}"
}

# ------------------------------------------------------------- packages

missing_packages() {
    local p
    for p in "${PACKAGES[@]}"; do
        [[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] ||
            echo "$p"
    done
}

ensure_packages() {
    local missing
    mapfile -t missing < <(missing_packages)
    ((${#missing[@]} == 0)) && return 0
    ((EUID == 0)) || die "missing packages (${missing[*]}); run this script as root to install them"
    log "installing: ${missing[*]}"
    # Update the index only when we actually need to install something.
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >/dev/null
}

# The binaries the fast path needs (no dpkg queries: a rerun must be quick).
have_binaries() { command -v slurmctld slurmd slurmdbd scontrol sinfo munged mariadbd >/dev/null; }

# ------------------------------------------------------------------ ports

# port_listeners PORT: one line "PID" per process listening on TCP PORT (any
# address), or "?" for a listener whose process cannot be seen.
port_listeners() {
    local port=$1 lines
    if command -v ss >/dev/null; then
        lines=$(ss -Hltnp "sport = :$port" 2>/dev/null) || lines=""
        [[ -n $lines ]] || return 0
        if grep -q 'pid=' <<<"$lines"; then
            grep -o 'pid=[0-9]*' <<<"$lines" | cut -d= -f2 | sort -u
        else
            echo "?"
        fi
    elif timeout 1 bash -c "exec 3<>/dev/tcp/127.0.0.1/$port" 2>/dev/null; then
        echo "?" # something accepts connections; without ss we cannot name it
    fi
}

describe_pid() {
    local pid=$1 args
    [[ $pid == "?" ]] && { echo "a process this script cannot see (run as root, or install iproute2 for ss)"; return; }
    args=$(proc_lines "$pid" cmdline | paste -sd ' ' | cut -c1-120)
    echo "$(cat "/proc/$pid/comm" 2>/dev/null || echo '?') (pid $pid: ${args:-?})"
}

# Fail, before anything is written or started, if a process that is not one
# of this cluster's daemons listens on one of its ports.
check_ports() {
    local name port pid bad=0
    for name in SlurmctldPort:$CTLD_PORT SlurmdPort:$SLURMD_PORT DbdPort:$DBD_PORT; do
        port=${name#*:}
        while read -r pid; do
            [[ -n $pid ]] || continue
            [[ $pid != "?" ]] && proc_is_ours "$pid" "$SLURM_CONF_FILE" && continue
            log "port $port (${name%%:*} of the test cluster) is already in use by $(describe_pid "$pid")"
            bad=1
        done < <(port_listeners "$port")
    done
    ((bad == 0)) || die "not starting the test cluster: port(s) in use by another process" \
        "(nothing was changed); stop it, or choose other ports with SLURM_TEST_CTLD_PORT," \
        "SLURM_TEST_SLURMD_PORT and SLURM_TEST_DBD_PORT"
}

# --------------------------------------------------------------- config

HARDWARE="" # first line of `slurmd -C`, read once

load_hardware() { [[ -n $HARDWARE ]] || HARDWARE=$(slurmd -C | head -n 1); }

hw_field() { grep -o "\b$1=[0-9]*" <<<"$HARDWARE"; }

# Hardware fields from `slurmd -C`, so the node definition always matches
# the machine (a node declaring more than it has is drained).
node_hardware() {
    local field out=()
    for field in CPUs Boards SocketsPerBoard CoresPerSocket ThreadsPerCore; do
        out+=("$(hw_field "$field")")
    done
    echo "${out[*]}"
}

node_cpus() { hw_field CPUs | cut -d= -f2; }

# RealMemory with ~10% headroom: slurmd drains a node whose real memory is
# below the configured value, and the OS plus the daemons need some too.
node_memory() {
    local mem
    mem=$(hw_field RealMemory | cut -d= -f2)
    echo $((mem - mem / 10))
}

# The nodes' lines: each node has this machine's CPUs and memory (they share them).
render_nodes() {
    local node mem gres=""
    mem=$(node_memory)
    ((GPU_COUNT > 0)) && gres="Gres=gpu:$GPU_COUNT"
    for node in "${NODES[@]}"; do
        echo "NodeName=$node NodeAddr=$(multi_node && node_addr "$node" || echo 127.0.0.1)" \
            "$(node_hardware) RealMemory=$mem $gres State=UNKNOWN"
    done
    local IFS=,
    echo "PartitionName=$PARTITION Nodes=${NODES[*]} Default=YES MaxTime=INFINITE State=UP"
}

# Per-node files of the slurmds: %n is the node's name (several slurmd on one machine).
render_slurmd_paths() {
    if multi_node; then
        printf '%s\n' "SlurmdSpoolDir=$SLURMD_SPOOL/%n" "SlurmdPidFile=$RUN_DIR/slurmd-%n.pid" \
            "SlurmdLogFile=$LOG_DIR/slurmd-%n.log"
    else
        printf '%s\n' "SlurmdSpoolDir=$SLURMD_SPOOL" "SlurmdPidFile=$(slurmd_pid_file localhost)" \
            "SlurmdLogFile=$(slurmd_log localhost)"
    fi
}

render_slurm_conf() {
    local cpus mem
    cpus=$(node_cpus)
    mem=$(node_memory)
    cat <<EOF
# Generated by tests/slurm/start_cluster.sh -- local test cluster only.
# Used through SLURM_CONF=$SLURM_CONF_FILE (daemons: -f); not /etc/slurm.
ClusterName=$CLUSTER_NAME
# "localhost" is accepted as the controller's name on any host; the nodes (and jobs on
# them) reach it at the address in parentheses.
SlurmctldHost=localhost($CTLD_ADDR)
SlurmctldPort=$CTLD_PORT
SlurmdPort=$SLURMD_PORT
SlurmUser=slurm
SlurmdUser=root
# Our own munged, on its own socket and key. Slurm 22.05 verifies (and
# cred/munge signs) through AuthInfo's socket, but every process except
# slurmdbd creates its messages' credentials through the socket named by
# AccountingStoragePass (the "alternate munged" of its documentation):
# without it, clients would use the system's /run/munge/munge.socket.2.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
AccountingStoragePass=$MUNGE_SOCKET
CredType=cred/munge
MpiDefault=none
# No mail on this machine; the default /bin/mail is missing and logged as an error.
MailProg=/bin/true

StateSaveLocation=$CTLD_STATE
SlurmctldPidFile=$SLURMCTLD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
$(render_slurmd_paths)

# No cgroups on this machine: track processes by parentage, bind with
# affinity (task/none makes every srun --cpu-bind=q step warn).
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity

SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# Without a default, a job without --mem gets the whole node's memory and
# jobs would run one at a time.
DefMemPerCPU=$((mem / cpus))
GresTypes=gpu

SchedulerParameters=sched_interval=2
KillWait=5
MinJobAge=300
JobRequeue=1
# A node that was down only because slurmd was stopped comes back by itself.
ReturnToService=2

AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$CTLD_ADDR
AccountingStoragePort=$DBD_PORT
AccountingStorageTRES=gres/gpu
JobAcctGatherType=jobacct_gather/none

$(render_nodes)
EOF
}

render_gres_conf() {
    local i node
    echo "# Generated by tests/slurm/start_cluster.sh -- fake GPUs (clones of /dev/null)."
    echo "AutoDetect=off"
    # Every GPU needs a File=, or slurmd silently drops it and the node is
    # drained ("gres/gpu count reported lower than configured").
    for node in "${NODES[@]}"; do
        for ((i = 0; i < GPU_COUNT; i++)); do
            echo "NodeName=$node Name=gpu File=$DEV_DIR/gpu$i"
        done
    done
}

render_slurmdbd_conf() {
    cat <<EOF
# Generated by tests/slurm/start_cluster.sh -- local test cluster only.
# slurmdbd reads it from the directory of SLURM_CONF=$SLURM_CONF_FILE.
AuthType=auth/munge
AuthInfo=socket=$MUNGE_SOCKET
DbdHost=localhost
DbdAddr=$CTLD_ADDR
DbdPort=$DBD_PORT
SlurmUser=slurm
PidFile=$SLURMDBD_PID
LogFile=$LOG_DIR/slurmdbd.log
# MariaDB of this test cluster: StorageHost=localhost means its unix socket,
# which slurmdbd is given as MYSQL_UNIX_PORT=$DB_SOCKET.
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
EOF
}

# A client wrapper: the real client with SLURM_CONF defaulting to ours.
# snakemake-executor-plugin-slurm-jobstep (0.6.1) removes every SLURM_*
# variable, SLURM_CONF included, from the environment of the srun it starts
# inside a job; that srun (and the squeue the training script runs in its
# step) would then look for /etc/slurm/slurm.conf or DNS SRV records. PATH
# survives, so with $BIN_DIR first on PATH they still find this cluster.
render_wrapper() {
    local name=$1 real
    real=$(command -v "$name")
    cat <<EOF
#!/bin/sh
# Generated by tests/slurm/start_cluster.sh: $name for the SLURM test cluster
# when SLURM_CONF is unset (e.g. inside a job, where the Snakemake jobstep
# plugin drops SLURM_* variables). An explicit SLURM_CONF is respected.
: "\${SLURM_CONF:=$SLURM_CONF_FILE}"
export SLURM_CONF
exec $real "\$@"
EOF
}

wrapper_clients() {
    local name
    for name in "${CLIENTS[@]}"; do
        command -v "$name" >/dev/null && echo "$name"
    done
    return 0
}

# True if DEST differs from what the renderer would write (or is missing).
config_differs() {
    local dest=$1 renderer=$2
    [[ -r $dest ]] || return 0
    ! cmp -s "$dest" <("$renderer")
}

# install_config DEST RENDERER MODE OWNER; returns 0 if the file changed.
install_config() {
    local dest=$1 renderer=$2 mode=$3 owner=$4 tmp
    config_differs "$dest" "$renderer" || return 1
    tmp=$(mktemp "$dest.XXXXXX")
    "$renderer" >"$tmp"
    chmod "$mode" "$tmp"
    chown "$owner" "$tmp"
    mv -f "$tmp" "$dest"
    log "wrote $dest"
}

wrappers_differ() {
    local name
    for name in $(wrapper_clients); do
        [[ -x $BIN_DIR/$name ]] || return 0
        cmp -s "$BIN_DIR/$name" <(render_wrapper "$name") || return 0
    done
    return 1
}

write_wrappers() {
    local name tmp
    for name in $(wrapper_clients); do
        [[ -x $BIN_DIR/$name ]] && cmp -s "$BIN_DIR/$name" <(render_wrapper "$name") && continue
        tmp=$(mktemp "$BIN_DIR/.$name.XXXXXX")
        render_wrapper "$name" >"$tmp"
        chmod 0755 "$tmp"
        mv -f "$tmp" "$BIN_DIR/$name"
    done
}

# /etc/hosts of every node: each node's name and address, as a cluster's DNS would give.
render_hosts() {
    local node
    echo "# Generated by tests/slurm/start_cluster.sh: /etc/hosts inside this cluster's nodes."
    echo "127.0.0.1 localhost"
    echo "$CTLD_ADDR $CLUSTER_NAME-controller"
    for node in "${NODES[@]}"; do
        echo "$(node_addr "$node") $node"
    done
}

any_config_differs() {
    { multi_node && config_differs "$HOSTS_FILE" render_hosts; } ||
        wrappers_differ ||
        config_differs "$CONF_DIR/slurm.conf" render_slurm_conf ||
        config_differs "$CONF_DIR/gres.conf" render_gres_conf ||
        { [[ -r $CONF_DIR/slurmdbd.conf || ! -e $CONF_DIR/slurmdbd.conf ]] &&
            config_differs "$CONF_DIR/slurmdbd.conf" render_slurmdbd_conf; }
}

make_state_dirs() {
    local i dev
    install -d -m 0755 "$STATE_DIR" "$CONF_DIR" "$BIN_DIR" "$STATE_DIR/run" "$DEV_DIR" \
        "$SLURMD_SPOOL"
    # slurmctld/slurmdbd run as slurm and chdir to their log dir.
    install -d -o slurm -g slurm -m 0755 "$LOG_DIR" "$RUN_DIR" "$CTLD_STATE"
    install -d -o mysql -g mysql -m 0755 "$DB_RUN"
    # munged insists on a key directory only it can read, and a socket
    # directory that only it can write.
    install -d -o munge -g munge -m 0700 "$MUNGE_DIR"
    install -d -o munge -g munge -m 0755 "$MUNGE_RUN"
    # Pre-create logs with the owner of the daemon that writes them.
    touch_owned slurm:slurm "$LOG_DIR/slurmctld.log"
    touch_owned slurm:slurm "$LOG_DIR/slurmdbd.log"
    touch_owned mysql:mysql "$LOG_DIR/mariadb.log"
    for node in "${NODES[@]}"; do
        touch "$(slurmd_log "$node")"
        multi_node && install -d -m 0755 "$SLURMD_SPOOL/$node"
    done
    for ((i = 0; i < GPU_COUNT; i++)); do
        dev="$DEV_DIR/gpu$i"
        [[ -c $dev ]] || { rm -f "$dev"; mknod -m 0666 "$dev" c 1 3; }
    done
}

# Writes all configs; restarts slurm daemons that run with an outdated one.
write_configs() {
    local slurm_changed=0 dbd_changed=0
    write_wrappers
    install_config "$CONF_DIR/slurm.conf" render_slurm_conf 0644 root:root && slurm_changed=1
    install_config "$CONF_DIR/gres.conf" render_gres_conf 0644 root:root && slurm_changed=1
    if multi_node; then
        install_config "$HOSTS_FILE" render_hosts 0644 root:root && slurm_changed=1
    fi
    # slurmdbd refuses a config that others can read (it holds the DB password).
    install_config "$CONF_DIR/slurmdbd.conf" render_slurmdbd_conf 0600 slurm:slurm && dbd_changed=1
    chown slurm:slurm "$CONF_DIR/slurmdbd.conf"
    chmod 0600 "$CONF_DIR/slurmdbd.conf"

    if ((slurm_changed)) &&
        { daemon_running slurmctld "$SLURMCTLD_PID" || any_slurmd_running; }; then
        log "configuration changed: restarting slurmctld and slurmd"
        "$HERE/stop_cluster.sh" --slurm-only
    fi
    if ((dbd_changed)) && daemon_running slurmdbd "$SLURMDBD_PID"; then
        log "slurmdbd.conf changed: restarting slurmdbd"
        "$HERE/stop_cluster.sh" --slurmdbd-only
    fi
}

# -------------------------------------------------------------- daemons

munge_ok() { munge -S "$MUNGE_SOCKET" -n 2>/dev/null | timeout 5 unmunge -S "$MUNGE_SOCKET" >/dev/null 2>&1; }

start_munged() {
    if daemon_running munged "$MUNGED_PID" && munge_ok; then return 0; fi
    if [[ ! -s $MUNGE_KEY ]]; then
        log "creating the test cluster's munge key $MUNGE_KEY"
        runuser -u munge -- mungekey --create --keyfile="$MUNGE_KEY"
    fi
    log "starting munged (socket $MUNGE_SOCKET)"
    rm -f "$MUNGED_PID"
    launch runuser -u munge -- munged --socket="$MUNGE_SOCKET" --key-file="$MUNGE_KEY" \
        --pid-file="$MUNGED_PID" --log-file="$MUNGE_DIR/munged.log" \
        --seed-file="$MUNGE_DIR/munged.seed"
    wait_until munged "$MUNGE_DIR/munged.log" munge_ok
}

db_ping() { timeout 5 mariadb-admin --no-defaults --socket="$DB_SOCKET" ping; }

db_sql() { mariadb --no-defaults --socket="$DB_SOCKET" -u root -N -B -e "$1"; }

start_mariadb() {
    if ! daemon_running mariadbd "$MARIADB_PID"; then
        if [[ ! -d $DB_DIR/mysql ]]; then
            log "initialising MariaDB datadir $DB_DIR"
            install -d -o mysql -g mysql -m 0750 "$DB_DIR"
            mariadb-install-db --no-defaults --user=mysql --datadir="$DB_DIR" \
                --auth-root-authentication-method=socket --skip-test-db \
                >>"$LOG_DIR/mariadb.log" 2>&1 ||
                { show_log "$LOG_DIR/mariadb.log"; die "mariadb-install-db failed"; }
        fi
        log "starting mariadbd (unix socket $DB_SOCKET, no TCP)"
        # --no-defaults: ignore /etc/mysql so only these settings apply.
        # mariadbd does not daemonize itself: `setsid -f` forks it into its
        # own session (no shell of ours stays behind holding the lock fd).
        # slurmdbd still logs "settings not recommended: innodb_buffer_pool_size"
        # (it wants >=512M); harmless for a test cluster, so memory wins.
        # UMASK: a world-readable pid file lets non-root callers see it runs
        # (the datadir itself stays 0750).
        UMASK=0644 launch setsid -f mariadbd --no-defaults --user=mysql --datadir="$DB_DIR" \
            --socket="$DB_SOCKET" --pid-file="$MARIADB_PID" --skip-networking \
            --log-error="$LOG_DIR/mariadb.log" --innodb-lock-wait-timeout=900 \
            </dev/null >>"$LOG_DIR/mariadb.log" 2>&1
    fi
    wait_until mariadbd "$LOG_DIR/mariadb.log" db_ping
    # Idempotent: the accounting database and its user.
    db_sql "CREATE DATABASE IF NOT EXISTS $DB_NAME;
            CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
            GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost';"
}

sacctmgr_ok() { timeout 5 sacctmgr -n list cluster; }

start_slurmdbd() {
    if ! daemon_running slurmdbd "$SLURMDBD_PID"; then
        log "starting slurmdbd (port $DBD_PORT)"
        # No -f in slurmdbd: it reads slurmdbd.conf next to $SLURM_CONF.
        # MYSQL_UNIX_PORT: the socket its MariaDB client library connects to.
        MYSQL_UNIX_PORT="$DB_SOCKET" launch slurmdbd
    fi
    wait_until slurmdbd "$LOG_DIR/slurmdbd.log" sacctmgr_ok
}

# The cluster must be known to slurmdbd before slurmctld registers, and the
# root account/user association must exist for `--account=root`.
register_accounting() {
    if ! timeout 10 sacctmgr -n -P list cluster format=cluster | grep -qx "$CLUSTER_NAME"; then
        log "registering cluster $CLUSTER_NAME"
        timeout 10 sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null
    fi
    if [[ -z $(timeout 10 sacctmgr -n -P show assoc \
        where cluster="$CLUSTER_NAME" account=root user=root format=user) ]]; then
        log "adding root account/user association"
        timeout 10 sacctmgr -i add account root cluster="$CLUSTER_NAME" >/dev/null || true
        timeout 10 sacctmgr -i add user root account=root cluster="$CLUSTER_NAME" >/dev/null
    fi
    # The slurmdbd that answered keeps its records in our MariaDB.
    db_sql "SELECT name FROM $DB_NAME.cluster_table WHERE deleted = 0" | grep -qx "$CLUSTER_NAME" ||
        die "slurmdbd on port $DBD_PORT does not store cluster $CLUSTER_NAME in the test MariaDB ($DB_SOCKET)"
}

ctld_ok() { timeout 5 scontrol ping | grep -q 'is UP'; }

start_slurmctld() {
    if ! daemon_running slurmctld "$SLURMCTLD_PID"; then
        log "starting slurmctld (port $CTLD_PORT)"
        launch slurmctld -f "$SLURM_CONF_FILE"
    fi
    wait_until slurmctld "$LOG_DIR/slurmctld.log" ctld_ok
}

# ------------------------------------------------------------ the nodes

# STATE of each node, "NAME STATE" per line (sinfo's %T: idle, mixed, down*, ...).
node_states() {
    local IFS=,
    timeout 5 sinfo -h -N -p "$PARTITION" -n "${NODES[*]}" -o '%N %T' 2>/dev/null | sort -u
}

node_state() { node_states | awk -v n="$1" '$1 == n {print $2}' | head -n 1; }

# Usable = idle, or busy with jobs (a rerun while tests run must not fail).
# A suffix such as '*' (not responding) or '~' (powered off) is not usable.
usable_state() { [[ $1 =~ ^(idle|mixed|allocated|completing)$ ]]; }

nodes_usable() {
    local node
    for node in "${NODES[@]}"; do usable_state "$(node_state "$node")" || return 1; done
}

# Resume a node that an earlier run (e.g. with a broken gres.conf, or a test that powered
# it off) left drained or down; it stays so after the fix until resumed.
node_ready_or_resume() {
    local node=$1 st
    st=$(node_state "$node")
    WAIT_DETAIL="last state: '${st:-unknown}'"
    usable_state "$st" && return 0
    if [[ $st =~ ^(down|drain|drained|draining|fail|failing)\*?$ ]]; then
        timeout 5 scontrol update nodename="$node" state=resume >/dev/null 2>&1 || true
    fi
    return 1
}

slurmd_running() { daemon_running slurmd "$(slurmd_pid_file "$1")"; }

any_slurmd_running() {
    local node
    for node in "${NODES[@]}"; do slurmd_running "$node" && return 0; done
    return 1
}

all_slurmd_running() {
    local node
    for node in "${NODES[@]}"; do slurmd_running "$node" || return 1; done
}

# The network of a multi-node cluster (idempotent): the bridge with the controller's
# address, and per node a namespace with its address on a veth into the bridge. A link
# that a test took down (a node's power cut) is brought up again.
ensure_network() {
    local node ns veth
    if ! ip link show "$BRIDGE" >/dev/null 2>&1; then
        subnet_free || die "the subnet $SUBNET.0/24 of the test cluster is already routed" \
            "on this machine ($(ip -o route show to match "$SUBNET.1" | head -n 1));" \
            "choose another controller port with SLURM_TEST_CTLD_PORT"
        log "creating bridge $BRIDGE ($CTLD_ADDR/24)"
        ip link add "$BRIDGE" type bridge
    fi
    ip addr replace "$CTLD_ADDR/24" dev "$BRIDGE"
    ip link set "$BRIDGE" up
    for node in "${NODES[@]}"; do
        ns=$(node_netns "$node") veth=$(node_veth "$node")
        [[ -e /run/netns/$ns ]] || { log "creating network namespace $ns"; ip netns add "$ns"; }
        ip link show "$veth" >/dev/null 2>&1 ||
            ip link add "$veth" type veth peer name eth0 netns "$ns"
        ip link set "$veth" master "$BRIDGE" up
        ip -n "$ns" addr replace "$(node_addr "$node")/24" dev eth0
        ip -n "$ns" link set lo up
        ip -n "$ns" link set eth0 up
    done
}

# No route of this machine covers the subnet yet (only our own bridge may hold it).
subnet_free() { [[ -z $(ip -o route show to match "$SUBNET.1" | grep -v '^default') ]]; }

# Every link of the network is up (a test that cut a node's power took its link down).
network_up() {
    local node
    ip link show "$BRIDGE" 2>/dev/null | grep -q ',UP' || return 1
    for node in "${NODES[@]}"; do
        ip link show "$(node_veth "$node")" 2>/dev/null | grep -q ',UP' || return 1
    done
}

# Each node's slurmd is the one in that node's namespace, and SLURM reaches it there.
nodes_are_ours() {
    local node pid addr
    for node in "${NODES[@]}"; do
        pid=$(daemon_pid slurmd "$(slurmd_pid_file "$node")") ||
            die "slurmd of $node is not running from $(slurmd_pid_file "$node")"
        [[ $(stat -L -c %i "/proc/$pid/ns/net") == $(stat -L -c %i "/run/netns/$(node_netns "$node")") ]] ||
            die "slurmd of $node (pid $pid) is not in network namespace $(node_netns "$node")"
        addr=$(timeout 5 scontrol show node "$node" | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2)
        [[ $addr == "$(node_addr "$node")" ]] ||
            die "the controller reaches $node at '$addr', not $(node_addr "$node")"
    done
}

start_one_slurmd() {
    local node=$1
    if multi_node; then
        # nsenter, not `ip netns exec` (which remounts /sys: slurmd then finds no cgroup
        # file system and refuses to start). Private mounts: /etc/hosts is this node's.
        launch nsenter --net="/run/netns/$(node_netns "$node")" \
            unshare --uts --mount --propagation private \
            sh -c 'hostname "$1" && mount --bind "$2" /etc/hosts && exec slurmd -f "$3" -N "$1"' \
            sh "$node" "$HOSTS_FILE" "$SLURM_CONF_FILE"
    else
        # -N: we are node "localhost" whatever this machine's hostname is.
        launch slurmd -f "$SLURM_CONF_FILE" -N "$node"
    fi
}

start_slurmd() {
    local node
    for node in "${NODES[@]}"; do
        slurmd_running "$node" && continue
        log "starting slurmd of $node (port $SLURMD_PORT)"
        start_one_slurmd "$node"
    done
    for node in "${NODES[@]}"; do
        wait_until "node $node" "$(slurmd_log "$node")" node_ready_or_resume "$node"
    done
}

# ----------------------------------------------------------------- main

all_running() {
    daemon_running munged "$MUNGED_PID" &&
        daemon_running mariadbd "$MARIADB_PID" &&
        daemon_running slurmdbd "$SLURMDBD_PID" &&
        daemon_running slurmctld "$SLURMCTLD_PID" &&
        all_slurmd_running
}

# The controller that answers through our SLURM_CONF is this cluster's own:
# its name and port are ours and it has partition debug with our node.
controller_is_ours() {
    local config name port
    config=$(timeout 5 scontrol show config 2>/dev/null) || return 1
    name=$(awk -F' *= *' '$1 == "ClusterName" {print $2}' <<<"$config")
    port=$(awk -F' *= *' '$1 == "SlurmctldPort" {print $2}' <<<"$config")
    WAIT_DETAIL="controller reports ClusterName='$name' SlurmctldPort='$port'"
    [[ $name == "$CLUSTER_NAME" && $port == "$CTLD_PORT" ]]
}

verify_cluster() {
    controller_is_ours ||
        die "the controller answering through SLURM_CONF=$SLURM_CONF_FILE is not the test cluster ($WAIT_DETAIL)"
    nodes_usable ||
        die "partition $PARTITION with nodes ${NODES[*]} is not usable (sinfo: $(node_states | paste -sd ' '))"
    multi_node && nodes_are_ours
    return 0
}

ready_lines() {
    echo "slurm test cluster ready: cluster=$CLUSTER_NAME partition=$PARTITION" \
        "nodes=$(node_states | tr ' ' '(' | sed 's/$/)/' | paste -sd ,) gpus=$GPU_COUNT cpus=$(node_cpus)" \
        "ports=$CTLD_PORT/$SLURMD_PORT/$DBD_PORT state=$STATE_DIR bin=$BIN_DIR"
    # Last line: what SLURM_CONF must be for every client of this cluster.
    echo "$SLURM_CONF_FILE"
}

main() {
    if [[ ${1:-} == --is-running ]]; then
        have_binaries && all_running
        return
    fi
    check_settings

    # Fast path: nothing to do if all daemons run with the current config and
    # the controller that answers is ours.
    if have_binaries && all_running; then
        load_hardware
        if ! any_config_differs && controller_is_ours && nodes_usable &&
            { ! multi_node || network_up; }; then
            log "already running (nodes: $(node_states | paste -sd ' '))"
            if ((EUID == 0)); then
                stop_legacy_daemons
            elif [[ -n $(legacy_pids) ]]; then
                log "note: daemons of the previous test-cluster version still run; run as root to stop them"
            fi
            ready_lines
            return 0
        fi
    fi
    ((EUID == 0)) || die "the test cluster is not (fully) running; run this script as root to start it"

    # Nothing is written before this check.
    check_ports
    ensure_packages
    load_hardware

    # Serialize concurrent starts (e.g. parallel test sessions).
    install -d -m 0755 "$STATE_DIR"
    exec 9>"$STATE_DIR/start.lock"
    flock -w 120 9 || die "another start_cluster.sh holds $STATE_DIR/start.lock"
    check_ports # again: another start may have finished meanwhile

    stop_legacy_daemons
    make_state_dirs
    write_configs
    # Before slurmdbd: the controller and the nodes reach it at the bridge's address.
    if multi_node; then ensure_network; fi
    start_munged
    start_mariadb
    start_slurmdbd
    register_accounting
    start_slurmctld
    start_slurmd
    verify_cluster
    ready_lines
}

main "$@"
