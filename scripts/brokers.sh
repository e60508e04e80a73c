#!/usr/bin/env bash
# Start, stop and describe the real servers that flowkit's broker tests use.
#
#   scripts/brokers.sh start [NAME ...]   install when missing, start (or reuse) each server
#   scripts/brokers.sh env   [NAME ...]   print `export FLOWKIT_<NAME>_URL=...` for running servers
#   scripts/brokers.sh stop  [NAME ...]   stop each server by its PID and remove its data
#   scripts/brokers.sh status [NAME ...]  say which servers run, on which port, with which PID
#
# With no NAME, every server in BROKERS below. Each server listens on a free port of
# 127.0.0.1 and keeps its data in a temporary directory; its PID, port and directory
# are recorded in $FLOWKIT_BROKERS_DIR/NAME.env (default: .brokers/ in the repo).
#
# Adding a server is adding its functions NAME_install, NAME_start (sets PID, PORT, DIR),
# NAME_alive, NAME_stop and NAME_url (see the Redis ones) and its name to BROKERS, in
# this file or in a file of its own, scripts/brokers.d/NAME.sh, which this file sources
# (it does `BROKERS+=(NAME)`). NAME_url gives the value of FLOWKIT_<NAME>_URL.
set -euo pipefail

BROKERS=(redis postgres)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE_DIR="${FLOWKIT_BROKERS_DIR:-$ROOT/.brokers}"
READY_TIMEOUT="${FLOWKIT_BROKERS_READY_TIMEOUT:-20}"   # seconds a server may take to answer
STOP_TIMEOUT="${FLOWKIT_BROKERS_STOP_TIMEOUT:-20}"     # seconds a server may take to exit

log() { printf 'brokers: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# --- helpers ------------------------------------------------------------------------------

APT_UPDATED=0
apt_install() {
    command -v apt-get >/dev/null || die "apt-get not found: install $* yourself"
    [ "$(id -u)" = 0 ] || die "installing $* needs root: run 'sudo apt-get install -y $*'"
    export DEBIAN_FRONTEND=noninteractive
    local out rc=0 began
    began=$(date +%s)
    out=$(mktemp)
    # The Debian packages start their own system service on install; keep them from it
    # where no policy says so already (Docker-like images ship one that does).
    local policy=/usr/sbin/policy-rc.d made_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && made_policy=1
        trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    if [ "$APT_UPDATED" = 0 ]; then
        apt-get update -qq -o DPkg::Lock::Timeout=300 >"$out" 2>&1 || rc=$?
        APT_UPDATED=1
    fi
    if [ "$rc" = 0 ]; then
        apt-get install -y -qq -o DPkg::Lock::Timeout=300 "$@" >"$out" 2>&1 || rc=$?
    fi
    if [ "$made_policy" = 1 ]; then
        rm -f "$policy"
        trap - EXIT
    fi
    if [ "$rc" != 0 ]; then
        cat "$out" >&2
        rm -f "$out"
        die "apt-get install $* failed (exit $rc)"
    fi
    rm -f "$out"
    log "installed $* in $(($(date +%s) - began)) s"
}

free_port() {
    # The system Python when there is one: a version manager's shim costs ~0.1 s to start.
    "$(command -v /usr/bin/python3 || command -v python3)" -c \
        'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# pid_is PID WORD: PID is a live process whose command line contains WORD.
pid_is() {
    [ -n "$1" ] && kill -0 "$1" 2>/dev/null && tr '\0' ' ' <"/proc/$1/cmdline" 2>/dev/null | grep -q -- "$2"
}

# A daemon's parent is init, which may take a moment to reap it; until then it shows
# in the process list as <defunct>. Wait for that, briefly.
await_reaped() {
    local i
    for ((i = 0; i < 50; i++)); do
        [ -e "/proc/$1" ] || return 0
        sleep 0.1
    done
}

# stop_pid PID WORD: SIGTERM, wait (bounded), then SIGKILL if it is still there.
stop_pid() {
    local pid=$1 word=$2 i
    pid_is "$pid" "$word" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 10; i++)); do
        pid_is "$pid" "$word" || { await_reaped "$pid"; return 0; }
        sleep 0.1
    done
    log "$word (PID $pid) did not exit within ${STOP_TIMEOUT}s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        pid_is "$pid" "$word" || { await_reaped "$pid"; return 0; }
        sleep 0.1
    done
    die "$word (PID $pid) is still running after SIGKILL"
}

# State file STATE_DIR/NAME.env holds PID=, PORT= and DIR= lines; load_state sets them.
state_file() { printf '%s/%s.env' "$STATE_DIR" "$1"; }
load_state() {
    PID='' PORT='' DIR=''
    local file key value
    file=$(state_file "$1")
    [ -f "$file" ] || return 1
    while IFS='=' read -r key value; do
        case "$key" in
            PID) PID=$value ;;
            PORT) PORT=$value ;;
            DIR) DIR=$value ;;
        esac
    done <"$file"
    [ -n "$PID" ] && [ -n "$PORT" ] && [ -n "$DIR" ]
}
save_state() {
    local file
    file=$(state_file "$1")
    printf 'PID=%s\nPORT=%s\nDIR=%s\n' "$PID" "$PORT" "$DIR" >"$file.tmp"
    mv "$file.tmp" "$file"
}
remove_data_dir() {
    # Only ever a directory this script made.
    case "$1" in
        */flowkit-broker-*) rm -rf -- "$1" ;;
        '') ;;
        *) log "not removing $1: not a data directory of this script" ;;
    esac
}
new_data_dir() { mktemp -d "${TMPDIR:-/tmp}/flowkit-broker-$1.XXXXXX"; }

# --- Redis --------------------------------------------------------------------------------

redis_install() {
    command -v redis-server >/dev/null && command -v redis-cli >/dev/null && return 0
    log "installing redis-server with apt-get"
    apt_install redis-server
    # Should the package's own service have started anyway (no policy honoured), stop
    # and disable it: the tests use only the server started below.
    if [ -d /run/systemd/system ]; then
        systemctl disable --now redis-server >/dev/null 2>&1 || true
    elif [ -f /run/redis/redis-server.pid ]; then
        stop_pid "$(cat /run/redis/redis-server.pid)" redis-server
        update-rc.d redis-server disable >/dev/null 2>&1 || true
    fi
    command -v redis-server >/dev/null || die "redis-server is still missing after apt-get install"
}

redis_ping() { [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }

# Uses PID/PORT/DIR from load_state: is that server ours, alive and answering?
redis_alive() { pid_is "$PID" redis-server && redis_ping "$PORT"; }

redis_start() {
    local attempt i
    for attempt in 1 2 3; do   # a port found free may be taken before the server binds it
        PORT=$(free_port)
        DIR=$(new_data_dir redis)
        # --appendonly yes: restart tests check that nothing acknowledged is lost.
        redis-server --bind 127.0.0.1 --port "$PORT" --daemonize yes \
            --dir "$DIR" --pidfile "$DIR/redis.pid" --logfile "$DIR/redis.log" \
            --save '' --appendonly yes </dev/null >/dev/null 9>&- || true
        for ((i = 0; i < READY_TIMEOUT * 20; i++)); do
            if redis_ping "$PORT"; then
                PID=$(cat "$DIR/redis.pid" 2>/dev/null || true)
                if ! pid_is "$PID" redis-server; then
                    PID=$(redis-cli -h 127.0.0.1 -p "$PORT" info server | tr -d '\r' |
                        sed -n 's/^process_id://p')
                fi
                return 0
            fi
            if grep -qs 'Failed listening on port' "$DIR/redis.log"; then
                log "port $PORT was taken before redis-server could bind it (attempt $attempt of 3)"
                remove_data_dir "$DIR"
                continue 2
            fi
            sleep 0.05
        done
        log "redis-server did not answer PING on 127.0.0.1:$PORT within ${READY_TIMEOUT}s;" \
            "the end of its log:"
        tail -n 20 "$DIR/redis.log" >&2 2>/dev/null || true
        stop_pid "$(cat "$DIR/redis.pid" 2>/dev/null || true)" redis-server
        remove_data_dir "$DIR"
        break
    done
    die "could not start redis-server"
}

redis_stop() { stop_pid "$PID" redis-server; }

redis_url() { printf 'redis://127.0.0.1:%s/0' "$PORT"; }

# --- PostgreSQL ---------------------------------------------------------------------------

# The newest installed server's bin directory (Debian: /usr/lib/postgresql/VERSION/bin).
pg_bin() {
    local dir
    dir=$(printf '%s\n' /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
    [ -n "$dir" ] && [ -x "$dir/initdb" ] || return 1
    printf '%s' "$dir"
}

# initdb and the server refuse to run as root: as root, run them as the postgres user.
as_pg() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u postgres -- "$@"
    else
        "$@"
    fi
}

postgres_install() {
    pg_bin >/dev/null && return 0
    log "installing postgresql with apt-get"
    apt_install postgresql
    # The package creates a cluster of its own and, with no policy honoured, starts it;
    # stop and disable it: the tests use only the server started below.
    if [ -d /run/systemd/system ]; then
        systemctl disable --now postgresql >/dev/null 2>&1 || true
    else
        local pidfile
        for pidfile in /run/postgresql/*.pid; do
            [ -f "$pidfile" ] || continue
            stop_pid "$(head -n 1 "$pidfile")" postgres
        done
        update-rc.d postgresql disable >/dev/null 2>&1 || true
    fi
    pg_bin >/dev/null || die "no /usr/lib/postgresql/*/bin/initdb after apt-get install postgresql"
}

postgres_ready() { "$(pg_bin)/pg_isready" -q -h 127.0.0.1 -p "$1" -t 2 >/dev/null 2>&1; }

# The postmaster's command line names its data directory: a reused PID does not match it.
postgres_alive() { pid_is "$PID" "$DIR/data" && postgres_ready "$PORT"; }

postgres_start() {
    local bin attempt i
    bin=$(pg_bin) || die "PostgreSQL is not installed (no /usr/lib/postgresql/*/bin/initdb)"
    DIR=$(new_data_dir postgres)
    if [ "$(id -u)" = 0 ]; then
        id postgres >/dev/null 2>&1 || die "no postgres user to run the server as"
        chown postgres: "$DIR"
    fi
    # cd: the server's user may not be allowed into the caller's working directory.
    if ! (cd "$DIR" && as_pg "$bin/initdb" -D "$DIR/data" -U postgres --auth=trust \
        -E UTF8 --locale=C.UTF-8 --no-sync >"$DIR/initdb.log" 2>&1 </dev/null 9>&-); then
        log "initdb failed; its output:"
        tail -n 20 "$DIR/initdb.log" >&2 || true
        remove_data_dir "$DIR"
        die "could not create a PostgreSQL data directory"
    fi
    for attempt in 1 2 3; do   # a port found free may be taken before the server binds it
        PORT=$(free_port)
        PID=''
        : >"$DIR/pg.log"
        [ "$(id -u)" = 0 ] && chown postgres: "$DIR/pg.log"
        # -c fsync=off: the data are thrown away afterwards; -k: the socket stays in $DIR.
        if (cd "$DIR" && as_pg "$bin/pg_ctl" -D "$DIR/data" -l "$DIR/pg.log" -w \
            -t "$READY_TIMEOUT" -o "-c listen_addresses=127.0.0.1 -p $PORT -k $DIR -c fsync=off" \
            start </dev/null >/dev/null 2>&1 9>&-); then
            PID=$(head -n 1 "$DIR/data/postmaster.pid" 2>/dev/null || true)
            for ((i = 0; i < READY_TIMEOUT * 20; i++)); do
                if postgres_ready "$PORT"; then
                    pid_is "$PID" "$DIR/data" && return 0
                    break
                fi
                sleep 0.05
            done
        fi
        PID=$(head -n 1 "$DIR/data/postmaster.pid" 2>/dev/null || true)
        if grep -qs 'could not bind IPv4 address\|Address already in use' "$DIR/pg.log"; then
            log "port $PORT was taken before PostgreSQL could bind it (attempt $attempt of 3)"
            postgres_stop
            continue
        fi
        log "PostgreSQL did not answer on 127.0.0.1:$PORT within ${READY_TIMEOUT}s; the end of its log:"
        tail -n 20 "$DIR/pg.log" >&2 2>/dev/null || true
        postgres_stop
        break
    done
    remove_data_dir "$DIR"
    die "could not start PostgreSQL"
}

postgres_stop() {
    local bin pid=$PID
    if ! pid_is "$pid" "$DIR/data"; then   # the record may predate a restart attempt
        pid=$(head -n 1 "$DIR/data/postmaster.pid" 2>/dev/null || true)
    fi
    pid_is "$pid" "$DIR/data" || return 0
    if bin=$(pg_bin); then
        (cd "$DIR" && as_pg "$bin/pg_ctl" -D "$DIR/data" -m fast -w -t "$STOP_TIMEOUT" stop \
            </dev/null >/dev/null 2>&1 9>&-) || true
    fi
    if pid_is "$pid" "$DIR/data"; then
        log "pg_ctl stop left PostgreSQL (PID $pid) running; stopping it by its PID"
        # Its backends are sessions of their own; they exit when the postmaster is gone,
        # and any that has not by then is killed.
        local child children
        children=$(pgrep -P "$pid" || true)
        stop_pid "$pid" "$DIR/data"
        for child in $children; do
            if pid_is "$child" '^postgres: '; then kill -KILL "$child" 2>/dev/null || true; fi
        done
    fi
    await_reaped "$pid"
}

postgres_url() { printf 'postgresql://postgres@127.0.0.1:%s/postgres' "$PORT"; }

# --- servers of their own files -----------------------------------------------------------

for extra in "$ROOT"/scripts/brokers.d/*.sh; do
    [ -e "$extra" ] || continue
    # shellcheck source=/dev/null
    . "$extra"
done

# --- commands -----------------------------------------------------------------------------

known() {
    local b
    for b in "${BROKERS[@]}"; do [ "$b" = "$1" ] && return 0; done
    return 1
}

start_one() {
    local name=$1 started
    if load_state "$name" && "${name}_alive"; then
        log "$name already running: PID $PID, port $PORT"
        return 0
    fi
    if load_state "$name"; then   # a stale record: the server died or was killed
        "${name}_stop"
        remove_data_dir "$DIR"
    fi
    rm -f "$(state_file "$name")"
    "${name}_install"
    started=$(date +%s%N)
    "${name}_start"
    save_state "$name"
    log "$name started in $((($(date +%s%N) - started) / 1000000)) ms: PID $PID, port $PORT, data $DIR"
}

stop_one() {
    local name=$1
    if load_state "$name"; then
        "${name}_stop"
        remove_data_dir "$DIR"
        log "$name stopped (PID $PID)"
    fi
    rm -f "$(state_file "$name")"
}

env_one() {
    local name=$1 var
    var="FLOWKIT_$(printf '%s' "$name" | tr '[:lower:]' '[:upper:]')_URL"
    if load_state "$name" && "${name}_alive"; then
        printf 'export %s=%s\n' "$var" "$("${name}_url")"
        return 0
    fi
    return 1
}

status_one() {
    local name=$1
    if load_state "$name" && "${name}_alive"; then
        printf '%s: running, PID %s, port %s, data %s\n' "$name" "$PID" "$PORT" "$DIR"
    else
        printf '%s: not running\n' "$name"
    fi
}

usage() {
    sed -n '2,8s/^# \{0,1\}//p' "${BASH_SOURCE[0]}" >&2
    exit 2
}

main() {
    [ $# -ge 1 ] || usage
    local cmd=$1 name explicit=0 rc=0
    shift
    local names=("$@")
    if [ ${#names[@]} -eq 0 ]; then names=("${BROKERS[@]}"); else explicit=1; fi
    for name in "${names[@]}"; do
        known "$name" || die "unknown server '$name' (known: ${BROKERS[*]})"
    done
    case "$cmd" in
        start | stop)
            mkdir -p "$STATE_DIR"
            # One start or stop at a time per state directory; servers never inherit fd 9.
            exec 9>"$STATE_DIR/.lock"
            flock -w 120 9 || die "another scripts/brokers.sh has held $STATE_DIR/.lock for 120s"
            for name in "${names[@]}"; do "${cmd}_one" "$name"; done
            ;;
        env)
            for name in "${names[@]}"; do
                if ! env_one "$name" && [ "$explicit" = 1 ]; then
                    log "$name is not running: run 'scripts/brokers.sh start $name'"
                    rc=1
                fi
            done
            ;;
        status)
            for name in "${names[@]}"; do status_one "$name"; done
            ;;
        *) usage ;;
    esac
    return "$rc"
}

main "$@"
