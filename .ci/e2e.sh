#!/usr/bin/env bash
# CI e2e stage (as root): a private dockerd, a debootstrapped base image, the three role images
# built offline from a host wheelhouse, `make e2e`, then compose down and the daemon stopped by pid.
# The base image and the daemon's data survive between runs on the same machine in $OAUTH3_E2E_CACHE.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$(date +%s)
cache=${OAUTH3_E2E_CACHE:-/var/cache/oauth3-e2e}
project=${OAUTH3_E2E_PROJECT:-oauth3e2e}
base_image=oauth3-base:bookworm
base_tar=$cache/bookworm-minbase.tar
state=$(mktemp -d /tmp/o3e2e.XXXXXX) # short: the daemon's sockets live here
compose=(docker-compose -p "$project" -f deploy/docker-compose.yml -f deploy/docker-compose.ci.yml)
export DOCKER_HOST="unix://$state/docker.sock"
export DOCKER_BUILDKIT=0 # the classic builder needs no buildx plugin and no registry
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

log "installing docker.io, docker-compose, debootstrap"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null

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

if ! docker image inspect "$base_image" >/dev/null 2>&1; then
    if [ ! -s "$base_tar" ]; then
        log "debootstrapping a bookworm minbase with python3 (about a minute)"
        rootfs=$state/rootfs
        debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
            bookworm "$rootfs" >"$state/debootstrap.log" 2>&1 ||
            { tail -n 20 "$state/debootstrap.log" >&2; exit 1; }
        rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
        tar -C "$rootfs" -c . >"$base_tar.part"
        mv "$base_tar.part" "$base_tar"
        rm -rf "$rootfs"
    fi
    log "importing $base_tar as $base_image"
    docker import "$base_tar" "$base_image" >/dev/null
fi

log "building the wheelhouse on the host"
make venv >/dev/null
.venv/bin/python -m pip wheel --quiet --disable-pip-version-check \
    -w "$state/wheelhouse" -c constraints.txt . >"$state/wheel.log" 2>&1 ||
    { tail -n 20 "$state/wheel.log" >&2; exit 1; }

commit=$(git rev-parse HEAD 2>/dev/null || echo unknown)
for role in simulator sidecar service; do
    log "building oauth3-$role:local offline (base $base_image, commit $commit)"
    tar --exclude=__pycache__ -c deploy/Dockerfile deploy/phala-app.yaml pyproject.toml README.md \
        constraints.txt oauth3 -C "$state" wheelhouse |
        docker build --force-rm -f deploy/Dockerfile --target "$role" \
            --build-arg BASE_IMAGE="$base_image" --build-arg WHEELHOUSE=wheelhouse \
            --build-arg GIT_COMMIT="$commit" -t "oauth3-$role:local" - >"$state/build.log" 2>&1 ||
        { tail -n 30 "$state/build.log" >&2; exit 1; }
done

"${compose[@]}" down -v --remove-orphans >/dev/null 2>&1 || true
log "make e2e"
set +e
OAUTH3_E2E_PROJECT=$project OAUTH3_E2E_GIT_COMMIT=$commit make e2e
status=$?
set -e
if [ "$status" -eq 5 ]; then
    echo "e2e: pytest collected no e2e tests" >&2
    exit 1
fi
exit "$status"
