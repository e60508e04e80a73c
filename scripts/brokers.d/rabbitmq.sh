# RabbitMQ (Debian's rabbitmq-server, 3.10 on Debian 12), sourced by scripts/brokers.sh.
#
# The node runs as the caller from /usr/lib/rabbitmq/bin (the /usr/sbin wrapper re-runs
# itself through `su rabbitmq`), with its own node name, ports, epmd, home, data and logs
# in its data directory, bound to 127.0.0.1. It takes 5-6 s to start.

BROKERS+=(rabbitmq)

RABBITMQ_BIN=/usr/lib/rabbitmq/bin

# rabbitmq_env DIR: the environment the node and rabbitmqctl share (ports from DIR/ports).
rabbitmq_env() {
    local dir=$1 port dist epmd
    read -r port dist epmd <"$dir/ports"
    export HOME="$dir" RABBITMQ_NODENAME="flowkit@localhost" \
        RABBITMQ_NODE_IP_ADDRESS=127.0.0.1 RABBITMQ_NODE_PORT="$port" \
        RABBITMQ_DIST_PORT="$dist" ERL_EPMD_ADDRESS=127.0.0.1 ERL_EPMD_PORT="$epmd" \
        RABBITMQ_MNESIA_BASE="$dir/mnesia" RABBITMQ_LOG_BASE="$dir/log" \
        RABBITMQ_PID_FILE="$dir/rabbit.pid" RABBITMQ_ENABLED_PLUGINS_FILE="$dir/enabled_plugins" \
        RABBITMQ_CONFIG_FILE="$dir/rabbitmq"
}

rabbitmq_ctl() { (rabbitmq_env "$1" && shift && "$RABBITMQ_BIN/rabbitmqctl" -n flowkit@localhost "$@"); }

rabbitmq_install() {
    [ -x "$RABBITMQ_BIN/rabbitmq-server" ] && return 0
    log "installing rabbitmq-server with apt-get"
    apt_install rabbitmq-server
    # Should the package's own service have started anyway, stop and disable it.
    if [ -d /run/systemd/system ]; then
        systemctl disable --now rabbitmq-server >/dev/null 2>&1 || true
    elif command -v service >/dev/null; then
        service rabbitmq-server stop >/dev/null 2>&1 || true
        update-rc.d rabbitmq-server disable >/dev/null 2>&1 || true
    fi
    [ -x "$RABBITMQ_BIN/rabbitmq-server" ] || die "$RABBITMQ_BIN/rabbitmq-server is missing after apt-get install"
}

# A TCP connection to the AMQP port that answers the protocol header.
rabbitmq_ready() {
    "$(command -v /usr/bin/python3 || command -v python3)" - "$1" <<'EOF' 2>/dev/null
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2) as s:
    s.sendall(b"AMQP\x00\x00\x09\x01")
    sys.exit(0 if s.recv(1) == b"\x01" else 1)
EOF
}

# The node's PID is the Erlang VM (beam.smp) whose command line names its home, DIR.
rabbitmq_alive() { pid_is "$PID" "-home $DIR" && rabbitmq_ready "$PORT"; }

rabbitmq_start() {
    local attempt
    for attempt in 1 2 3; do   # a port found free may be taken before the node binds it
        DIR=$(new_data_dir rabbitmq)
        PORT=$(free_port)
        printf '%s %s %s\n' "$PORT" "$(free_port)" "$(free_port)" >"$DIR/ports"
        printf '[].\n' >"$DIR/enabled_plugins"
        printf 'loopback_users = none\n' >"$DIR/rabbitmq.conf"
        if (rabbitmq_env "$DIR" && cd "$DIR" &&
            "$RABBITMQ_BIN/rabbitmq-server" -detached </dev/null >"$DIR/start.log" 2>&1 9>&- &&
            "$RABBITMQ_BIN/rabbitmqctl" -n flowkit@localhost wait --timeout "$((READY_TIMEOUT * 3))" \
                "$DIR/rabbit.pid" </dev/null >>"$DIR/start.log" 2>&1 9>&-); then
            PID=$(cat "$DIR/rabbit.pid" 2>/dev/null || true)
            if pid_is "$PID" "-home $DIR" && rabbitmq_ready "$PORT"; then
                return 0
            fi
        fi
        log "RabbitMQ did not start on 127.0.0.1:$PORT (attempt $attempt of 3); the end of its log:"
        tail -n 20 "$DIR/start.log" "$DIR"/log/*.log >&2 2>/dev/null || true
        PID=$(cat "$DIR/rabbit.pid" 2>/dev/null || true)
        rabbitmq_stop
        remove_data_dir "$DIR"
    done
    die "could not start RabbitMQ"
}

rabbitmq_stop() {
    local epmd pid
    [ -f "$DIR/ports" ] || return 0
    if pid_is "$PID" "-home $DIR"; then
        rabbitmq_ctl "$DIR" stop "$DIR/rabbit.pid" </dev/null >/dev/null 2>&1 9>&- || true
        stop_pid "$PID" "-home $DIR"
    fi
    # The node's epmd outlives it: stop the one listening on this node's epmd port.
    read -r _ _ epmd <"$DIR/ports"
    for pid in $(pgrep -x epmd || true); do
        if pid_is "$pid" epmd && [ "$(tr '\0' '\n' <"/proc/$pid/environ" 2>/dev/null |
            sed -n 's/^ERL_EPMD_PORT=//p')" = "$epmd" ]; then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
}

rabbitmq_url() { printf 'amqp://guest:guest@127.0.0.1:%s/' "$PORT"; }
