#!/usr/bin/env bash
# Turn a debootstrapped Debian rootfs into a deterministic tar for the local development base
# (deploy/images.sh --local-base): two debootstraps of the same archive give the same bytes.
#   deploy/base-rootfs.sh ROOTFS OUT.tar
set -euo pipefail
rootfs=$1
out=$2
# a fixed day for /etc/shadow's "last password change" (debootstrap writes today's)
shadow_day=19000

rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/*.bin \
    "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/*.log "$rootfs"/var/log/apt/*
# ldconfig's aux-cache records inode numbers and ctimes: a cache, rebuilt when needed
rm -f "$rootfs"/var/cache/ldconfig/aux-cache
sed -i -E "s/^([^:]*:[^:]*:)[0-9]*:/\1${shadow_day}:/" "$rootfs"/etc/shadow
rm -f "$rootfs"/etc/shadow- "$rootfs"/etc/gshadow- "$rootfs"/etc/passwd- "$rootfs"/etc/group-
# debootstrap copies this machine's hostname and resolver: engines mount their own at run time.
# An /etc/hosts must exist, or every build step leaves an empty mount point in its layer.
echo localhost >"$rootfs/etc/hostname"
: >"$rootfs/etc/resolv.conf"
printf '127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n' >"$rootfs/etc/hosts"
# the layer's mtimes become 0, which would make Debian's timestamp-based stdlib .pyc files stale
# (recompiled at every start, rewritten into role layers): make them unchecked-hash instead
chroot "$rootfs" /usr/bin/python3 -I - <<'PY'
import importlib.util
import pathlib
import py_compile

for top in ("/usr/lib/python3.11", "/usr/lib/python3/dist-packages"):
    for pyc in sorted(pathlib.Path(top).rglob("__pycache__/*.pyc")):
        source = importlib.util.source_from_cache(str(pyc))
        if pathlib.Path(source).exists():
            py_compile.compile(
                source,
                cfile=str(pyc),
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
PY
tar -C "$rootfs" --sort=name --numeric-owner --xattrs --mtime=@0 \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime -cf "$out" .
