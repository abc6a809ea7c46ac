#!/usr/bin/env bash
# Build the role images (sidecar, service, simulator) of one commit reproducibly with buildah,
# and print their digests. Run as root (buildah's chroot isolation); `make images` calls this.
#
#   BASE_IMAGE=NAME@sha256:<64 hex> deploy/images.sh [--twice] [--export DIR] [--commit REV]
#   deploy/images.sh --local-base ...   (development and CI: a Debian bookworm base made here)
#
# The images are built from deploy/context.py's context (wheels from `git archive REV`, hashed
# locks, the rendered manifest), each with --timestamp = the last commit that changed its inputs.
# --twice builds every role a second time from a fresh context and fails unless the image IDs
# match. --export writes DIR/oauth3-ROLE.tar (docker-archive) for `docker load`.
# Everything buildah stores stays under $OAUTH3_BUILD (default ./build); the debootstrapped base
# and downloaded wheels are cached in $OAUTH3_CACHE (default ./build/cache).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

twice=0
export_dir=""
local_base=0
commit=HEAD
while [ $# -gt 0 ]; do
    case $1 in
        --twice) twice=1 ;;
        --export) export_dir=$2; shift ;;
        --local-base) local_base=1 ;;
        --commit) commit=$2; shift ;;
        *) echo "images.sh: unknown option $1" >&2; exit 2 ;;
    esac
    shift
done
[ "$(id -u)" -eq 0 ] || { echo "images.sh: run as root (buildah uses chroot isolation)" >&2; exit 2; }

build=${OAUTH3_BUILD:-$repo/build}
cache=${OAUTH3_CACHE:-$build/cache}
base_name=localhost/oauth3-base:bookworm
roles=(sidecar service simulator)
mkdir -p "$build/tmp" "$cache"
export TMPDIR=$build/tmp
# buildah otherwise keeps network lock files under /etc: point them at the build folder
printf '[network]\nnetwork_config_dir = "%s"\n' "$build/net" >"$build/containers.conf"
export CONTAINERS_CONF=$build/containers.conf
bh() { buildah --root "$build/storage" --runroot "$build/run" --storage-driver vfs "$@"; }
has_image() { bh inspect --type image --format '{{.FromImageID}}' "$1" >/dev/null 2>&1; }
log() { echo "== images: $*" >&2; }

need=()
command -v buildah >/dev/null || need+=(buildah)
[ "$local_base" -eq 0 ] || command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi

# --- the base, pinned by digest -------------------------------------------------------------
if [ "$local_base" -eq 1 ]; then
    if ! has_image "$base_name"; then
        rootfs_tar=$cache/bookworm-base.tar
        if [ ! -s "$rootfs_tar" ]; then
            log "debootstrapping a Debian bookworm base with python3 (about a minute)"
            rootfs=$build/rootfs
            rm -rf "$rootfs"
            debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
                bookworm "$rootfs" >"$build/debootstrap.log" 2>&1 ||
                { tail -n 20 "$build/debootstrap.log" >&2; exit 1; }
            bash deploy/base-rootfs.sh "$rootfs" "$rootfs_tar.part"
            mv "$rootfs_tar.part" "$rootfs_tar"
            rm -rf "$rootfs"
        fi
        log "committing $base_name from $rootfs_tar"
        c=$(bh from scratch)
        bh add "$c" "$rootfs_tar" / >/dev/null
        bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
            --env LANG=C.UTF-8 --cmd /bin/bash "$c"
        bh commit --quiet --timestamp 0 --rm "$c" "$base_name" >/dev/null
    fi
    BASE_IMAGE=${base_name%:*}@$(bh images --digests --format '{{.Digest}}' "$base_name")
fi
: "${BASE_IMAGE:?set BASE_IMAGE=NAME@sha256:<digest> (or pass --local-base for development)}"
if ! [[ $BASE_IMAGE =~ ^[^@[:space:]]+@sha256:[0-9a-f]{64}$ ]]; then
    echo "images.sh: BASE_IMAGE=$BASE_IMAGE is not pinned by digest (NAME@sha256:<64 hex>)" >&2
    exit 2
fi
has_image "$BASE_IMAGE" || bh pull --quiet "$BASE_IMAGE" >/dev/null

# --- build ------------------------------------------------------------------------------------
context() { # a fresh context for the commit
    .venv/bin/python deploy/context.py "$1" --commit "$commit" --wheel-cache "$cache/wheels" >&2
}

build_role() { # ROLE CONTEXT TAG -> prints the image ID
    local role=$1 ctx=$2 tag=$3 epoch
    epoch=$(cat "$ctx/epochs/$role")
    local args=(--build-arg "BASE=$BASE_IMAGE" --build-arg "ROLE=$role"
        --build-arg "SOURCE_DATE_EPOCH=$epoch")
    if [ "$role" = service ]; then
        args+=(--build-arg "GIT_COMMIT=$(cat "$ctx/COMMIT")")
    fi
    bh bud --quiet --isolation chroot --pull=never --layers=false --timestamp "$epoch" \
        "${args[@]}" --target "$role" --iidfile "$build/iid" -t "$tag" "$ctx" >"$build/bud-$role.log" 2>&1 ||
        { tail -n 30 "$build/bud-$role.log" >&2; exit 1; }
    cat "$build/iid"
}

log "context for $(git rev-parse --short "$commit") (base $BASE_IMAGE)"
context "$build/context"
declare -A ids
for role in "${roles[@]}"; do
    log "building oauth3-$role:local"
    ids[$role]=$(build_role "$role" "$build/context" "oauth3-$role:local")
done
if [ "$twice" -eq 1 ]; then
    log "second build of every role, from a fresh context"
    context "$build/context-again"
    find "$build/context-again" -exec touch {} + # another mtime changes nothing
    for role in "${roles[@]}"; do
        again=$(build_role "$role" "$build/context-again" "oauth3-$role:again")
        bh rmi "oauth3-$role:again" >/dev/null
        if [ "$again" != "${ids[$role]}" ]; then
            echo "images.sh: oauth3-$role is NOT reproducible: ${ids[$role]} then $again" >&2
            exit 1
        fi
        log "oauth3-$role: both builds gave ${ids[$role]}"
    done
    rm -rf "$build/context-again"
fi

if [ -n "$export_dir" ]; then
    mkdir -p "$export_dir"
    for role in "${roles[@]}"; do
        rm -f "$export_dir/oauth3-$role.tar"
        bh push --quiet "oauth3-$role:local" \
            "docker-archive:$export_dir/oauth3-$role.tar:oauth3-$role:local" >/dev/null
    done
fi

printf '%-10s %-73s %s\n' role "image ID (config digest)" size
for role in "${roles[@]}"; do
    size=$(bh images --format '{{.Size}}' "oauth3-$role:local")
    printf '%-10s %-73s %s\n' "$role" "${ids[$role]}" "$size"
done
echo "base       $BASE_IMAGE"
echo "commit     $(cat "$build/context/COMMIT")"
