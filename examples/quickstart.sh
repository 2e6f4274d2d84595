#!/usr/bin/env bash
# Hammer IoT quickstart: a service, a device and an app on this machine in about a minute.
#
#   examples/quickstart.sh            # leaves everything running and prints how to explore it
#   examples/quickstart.sh --no-keep  # stops everything at the end
#
# Needs the Rust toolchain, git, python3 and curl. Everything listens on loopback only, on
# free ports, and lives in one temporary folder (printed at the start).
set -euo pipefail

KEEP=1
for arg in "$@"; do
    case "$arg" in
        --no-keep) KEEP=0 ;;
        -h|--help) sed -n '2,8p' "$0"; exit 0 ;;
        *) echo "error: unknown option $arg (use --no-keep or --help)" >&2; exit 2 ;;
    esac
done

for tool in cargo git python3 curl; do
    command -v "$tool" >/dev/null || { echo "error: $tool is required; install it and run again" >&2; exit 1; }
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); print(eval(sys.argv[1], {}, {'d': d}))" "$1"; }

say "Building release binaries (hammer, hammer-manager)"
(cd "$ROOT" && cargo build --release -p hammer-cli -p hammer-manager)
TARGET_DIR=$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | json 'd["target_directory"]')
HAMMER="$TARGET_DIR/release/hammer"
MANAGER="$TARGET_DIR/release/hammer-manager"
START=$(date +%s)

WORK=$(mktemp -d "${TMPDIR:-/tmp}/hammer-quickstart.XXXXXX")
APP_USER_ARGS=()
if [[ $(id -u) -eq 0 ]]; then
    # As root the manager runs the app as the unprivileged hammer-app user (decision 0007).
    if id -u hammer-app >/dev/null 2>&1; then
        chmod 711 "$WORK"   # hammer-app must pass through $WORK to its app dir $WORK/device-apps
    else
        # A demo on a fresh machine: say so rather than create a system user here.
        echo "note: running as root without a hammer-app user, so this demo runs its app as root (--app-user root)."
        echo "      On a device, create the user first: useradd --system --no-create-home --shell /usr/sbin/nologin hammer-app"
        APP_USER_ARGS=(--app-user root)
    fi
fi
PIDS=()
cleanup() {
    local rc=$?
    if [[ $rc -ne 0 ]]; then
        echo >&2
        echo "quickstart failed (exit $rc). Last lines of the logs in $WORK:" >&2
        for log in "$WORK"/service.log "$WORK"/manager.log; do
            [[ -f $log ]] && { echo "--- $log" >&2; tail -n 25 "$log" >&2; }
        done
    fi
    if [[ $rc -ne 0 || $KEEP -eq 0 ]]; then
        # The manager stops its app when it is stopped; the service goes last.
        for ((i = ${#PIDS[@]} - 1; i >= 0; i--)); do
            kill "${PIDS[$i]}" 2>/dev/null || true
            for _ in $(seq 50); do kill -0 "${PIDS[$i]}" 2>/dev/null || break; sleep 0.1; done
            kill -9 "${PIDS[$i]}" 2>/dev/null || true
        done
        [[ $rc -eq 0 ]] && rm -rf "$WORK"
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# wait_for SECONDS DESCRIPTION COMMAND...: retries COMMAND every half second.
wait_for() {
    local secs=$1 what=$2; shift 2
    local deadline=$(( $(date +%s) + secs ))
    until "$@" >/dev/null 2>&1; do
        if (( $(date +%s) > deadline )); then
            echo "error: timed out after ${secs}s waiting for $what" >&2
            return 1
        fi
        sleep 0.5
    done
}

HTTP_PORT=$(free_port)
MQTT_PORT=$(free_port)
ENROLL_PORT=$(free_port)
APP_PORT=$(free_port)
export HAMMER_URL="http://127.0.0.1:$HTTP_PORT"
# Do not touch the user's saved `hammer login`: this demo uses its own config folder.
export XDG_CONFIG_HOME="$WORK/config"
echo "working folder: $WORK"

say "Starting the service: hammer serve (HTTP $HAMMER_URL, MQTT 127.0.0.1:$MQTT_PORT, enrollment https://127.0.0.1:$ENROLL_PORT)"
setsid "$HAMMER" serve --data-dir "$WORK/service" --http "127.0.0.1:$HTTP_PORT" \
    --mqtt "127.0.0.1:$MQTT_PORT" --enroll-listen "127.0.0.1:$ENROLL_PORT" >"$WORK/service.log" 2>&1 &
PIDS+=($!)
wait_for 60 "the service to answer on $HAMMER_URL/healthz" curl -fsS "$HAMMER_URL/healthz"
wait_for 10 "the admin token" test -s "$WORK/service/admin.token"
ADMIN_TOKEN=$(cat "$WORK/service/admin.token")

say "Creating a user (with the admin token in $WORK/service/admin.token)"
USER_TOKEN=$(HAMMER_TOKEN=$ADMIN_TOKEN "$HAMMER" --json user add demo | json 'd["token"]')
export HAMMER_TOKEN=$USER_TOKEN
echo "user demo created"

say "Registering a device: hammer device add pi --tag group=demo"
"$HAMMER" device add pi --tag group=demo | tee "$WORK/device-add.txt"
# The exact line `device add` printed, run here with its own data dir.
ENROLL_LINE=$(grep -m1 -o 'hammer-manager enroll .*' "$WORK/device-add.txt")
read -r -a ENROLL_ARGS <<<"${ENROLL_LINE#hammer-manager }"

say "Enrolling a local hammer-manager (data dir $WORK/device) and running it"
RUST_LOG=warn "$MANAGER" "${ENROLL_ARGS[@]}" --data-dir "$WORK/device"
setsid "$MANAGER" run --data-dir "$WORK/device" "${APP_USER_ARGS[@]}" >"$WORK/manager.log" 2>&1 &
PIDS+=($!)
device_online() { "$HAMMER" --json device show pi | json 'd["online"]' | grep -qx True; }
wait_for 60 "the device to come online" device_online
"$HAMMER" device list

say "Making a git repository from examples/hello-app"
REPO="$WORK/hello-app"
cp -R "$ROOT/examples/hello-app" "$REPO"
git -C "$REPO" init -q -b main
git -C "$REPO" add -A
git -C "$REPO" -c user.name=quickstart -c user.email=quickstart@example.invalid commit -qm "hello v1"
echo "repo: file://$REPO"

say "Setting the device up: hammer setup pi --repo file://$REPO --start ./start.sh --env PORT=$APP_PORT"
"$HAMMER" setup pi --repo "file://$REPO" --start ./start.sh --env "PORT=$APP_PORT" --health-window 3
device_ready() { "$HAMMER" --json device show pi | json 'd["state"]' | grep -qx ready; }
wait_for 60 "the device to confirm its setup" device_ready

say "Deploying v1: hammer deploy pi --wait"
"$HAMMER" deploy pi --wait --timeout 60
wait_for 20 "the app to answer" curl -fsS "http://127.0.0.1:$APP_PORT/"
echo "the app says: $(curl -fsS "http://127.0.0.1:$APP_PORT/")"

say "Committing v2 and deploying it"
echo v2 >"$REPO/VERSION"
git -C "$REPO" -c user.name=quickstart -c user.email=quickstart@example.invalid commit -qam "hello v2"
"$HAMMER" deploy pi --wait --timeout 60
app_says_v2() { curl -fsS "http://127.0.0.1:$APP_PORT/" | grep -q v2; }
wait_for 20 "the app to answer v2" app_says_v2
echo "the app says: $(curl -fsS "http://127.0.0.1:$APP_PORT/")"

say "Device history: hammer device history pi"
"$HAMMER" device history pi

echo
echo "Done in $(( $(date +%s) - START ))s after the build."
if [[ $KEEP -eq 0 ]]; then
    echo "Stopping everything (--no-keep)."
    exit 0
fi
cat >"$WORK/stop.sh" <<STOP
#!/bin/sh
# Stops the quickstart's manager (and its app) and service, then removes $WORK.
kill ${PIDS[1]} 2>/dev/null; sleep 2; kill ${PIDS[0]} 2>/dev/null; sleep 1
rm -rf "$WORK"
STOP
chmod +x "$WORK/stop.sh"
cat <<EOF

Everything keeps running. To explore, in another shell:
  export HAMMER_URL=$HAMMER_URL HAMMER_TOKEN=$HAMMER_TOKEN
  export PATH="$TARGET_DIR/release:\$PATH"
  hammer device list
  hammer device show pi
  hammer events                 # live events (Ctrl-C to stop)
  hammer logs pi -f             # the app's output
  curl http://127.0.0.1:$APP_PORT/
  echo v3 > $REPO/VERSION && git -C $REPO -c user.name=me -c user.email=me@example.invalid commit -qam v3
  hammer deploy pi --wait
Logs: $WORK/service.log, $WORK/manager.log
To stop it all: $WORK/stop.sh
EOF
