# NATS with JetStream (Debian's nats-server, 2.9 on Debian 12), sourced by scripts/brokers.sh.
#
# The server listens on 127.0.0.1 on a free client port and a free monitoring port (kept
# in DIR/ports), with JetStream storing in DIR/js. It is ready in ~20 ms.

BROKERS+=(nats)

nats_install() {
    command -v nats-server >/dev/null && return 0
    log "installing nats-server with apt-get"
    apt_install nats-server
    if [ -d /run/systemd/system ]; then
        systemctl disable --now nats-server >/dev/null 2>&1 || true
    fi
    command -v nats-server >/dev/null || die "nats-server is still missing after apt-get install"
}

# The monitoring port answers once JetStream is up.
nats_ready() { curl -sf "http://127.0.0.1:$1/healthz?js-enabled-only=true" >/dev/null 2>&1; }

nats_monitor_port() { read -r _ monitor <"$DIR/ports" && printf '%s' "$monitor"; }

# The server's command line names its data directory: a reused PID does not match it.
nats_alive() { pid_is "$PID" "$DIR/js" && nats_ready "$(nats_monitor_port)"; }

nats_start() {
    local attempt i monitor
    for attempt in 1 2 3; do   # a port found free may be taken before the server binds it
        DIR=$(new_data_dir nats)
        PORT=$(free_port)
        monitor=$(free_port)
        printf '%s %s\n' "$PORT" "$monitor" >"$DIR/ports"
        # exec: no shell stays behind as the server's parent, holding the caller's output open.
        (cd "$DIR" && exec setsid nohup nats-server -a 127.0.0.1 -p "$PORT" -m "$monitor" -js \
            -sd "$DIR/js" -P "$DIR/nats.pid" -l "$DIR/nats.log") </dev/null >/dev/null 2>&1 9>&- &
        for ((i = 0; i < READY_TIMEOUT * 20; i++)); do
            PID=$(cat "$DIR/nats.pid" 2>/dev/null || true)
            if pid_is "$PID" "$DIR/js" && nats_ready "$monitor"; then
                return 0
            fi
            if grep -qs 'address already in use' "$DIR/nats.log"; then
                break
            fi
            sleep 0.05
        done
        log "nats-server did not start on 127.0.0.1:$PORT (attempt $attempt of 3); the end of its log:"
        tail -n 20 "$DIR/nats.log" >&2 2>/dev/null || true
        nats_stop
        remove_data_dir "$DIR"
    done
    die "could not start nats-server"
}

nats_stop() { stop_pid "$PID" "$DIR/js"; }

nats_url() { printf 'nats://127.0.0.1:%s' "$PORT"; }
