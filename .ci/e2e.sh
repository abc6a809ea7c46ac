#!/usr/bin/env bash
# CI e2e stage (as root): the three role images built reproducibly with buildah, twice, and
# compared (deploy/images.sh); a private dockerd that loads them; `make e2e` (the compose stack,
# and each image's contents); then compose down and the daemon stopped by pid. The base rootfs,
# the downloaded wheels and the daemon's data survive between runs in $OAUTH3_E2E_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
cache=${OAUTH3_E2E_CACHE:-/var/cache/oauth3-e2e}
project=${OAUTH3_E2E_PROJECT:-oauth3e2e}
state=$(mktemp -d /tmp/o3e2e.XXXXXX) # short: the daemon's sockets live here
compose=(docker-compose -p "$project" -f deploy/docker-compose.yml -f deploy/docker-compose.ci.yml)
export DOCKER_HOST="unix://$state/docker.sock"
dockerd_pid=""

log() { echo "== e2e: $*"; }

cleanup() {
    local status=$?
    set +e
    if [ -n "$dockerd_pid" ] && kill -0 "$dockerd_pid" 2>/dev/null; then
        "${compose[@]}" down -v --remove-orphans --timeout 5 >/dev/null 2>&1
        docker image prune --force >/dev/null 2>&1 # images untagged by this run's rebuilds
        kill -TERM "$dockerd_pid"
        for _ in $(seq 1 60); do
            kill -0 "$dockerd_pid" 2>/dev/null || break
            sleep 0.5
        done
        if kill -0 "$dockerd_pid" 2>/dev/null; then
            echo "e2e: dockerd $dockerd_pid did not stop in 30 s; killing it" >&2
            kill -KILL "$dockerd_pid"
        fi
        wait "$dockerd_pid" 2>/dev/null
    fi
    # the daemon leaves its default netns bind-mounted under its exec root
    awk -v root="$state/" 'index($2, root) == 1 { print $2 }' /proc/mounts | sort -r |
        while read -r mountpoint; do umount "$mountpoint"; done
    if [ "$status" -ne 0 ] && [ -s "$state/dockerd.log" ]; then
        echo "e2e: last dockerd log lines:" >&2
        tail -n 20 "$state/dockerd.log" >&2
    fi
    rm -rf "$state"
    echo "== e2e: stage took $(($(date +%s) - started)) s, exit $status"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

log "installing docker.io, docker-compose, debootstrap, buildah"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap buildah \
    >/dev/null

make venv >/dev/null
commit=$(git rev-parse HEAD)
log "building the role images of $commit twice and comparing them"
OAUTH3_BUILD=$state/build OAUTH3_CACHE=$cache bash deploy/images.sh --local-base --twice \
    --export "$state/images"

log "starting dockerd (data in $cache/docker)"
mkdir -p "$cache"
dockerd --iptables=false --ip-masq=false --bridge=none \
    --data-root "$cache/docker" --exec-root "$state/exec" --pidfile "$state/dockerd.pid" \
    -H "$DOCKER_HOST" >"$state/dockerd.log" 2>&1 &
dockerd_pid=$!
for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || { echo "e2e: dockerd exited" >&2; exit 1; }
    sleep 0.5
done
docker info >/dev/null
for role in simulator sidecar service; do
    log "loading oauth3-$role:local"
    docker load --quiet --input "$state/images/oauth3-$role.tar" >/dev/null
done

"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
log "make e2e"
set +e
OAUTH3_E2E_PROJECT=$project OAUTH3_E2E_GIT_COMMIT=$commit OAUTH3_E2E_IMAGES=$state/images make e2e
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "e2e: pytest collected no e2e tests" >&2
    exit 1
fi
exit "$status"
