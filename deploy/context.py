"""Prepare the build context of the role images from one commit, the same bytes every time.

    python deploy/context.py OUT_DIR [--wheel-cache DIR] [--commit REV]

The context holds only what the images are made of:
  Dockerfile          deploy/Dockerfile, as committed
  wheels/             our distributions built from `git archive REV` (never the work tree, never a
                      stale wheelhouse) and the third-party wheels the roles need, downloaded once
                      into the cache and checked against requirements.lock's hashes
  locks/ROLE.lock     the third-party part of the role's dependency closure, with the lock's hashes
  locks/ROLE-oauth3.lock  our wheels for the role, with their hashes
  share/              the Phala manifest rendered for the simulator to measure
  epochs/ROLE         SOURCE_DATE_EPOCH of the role's image: the time of the last commit that
                      changed one of its inputs (each wheel likewise gets its folder's)
Run it with the development venv's Python (it reads the installed distributions' metadata).
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parent.parent
# what each image installs: its role's distribution, whose closure brings the rest
ROLES = {
    "sidecar": ("oauth3-sidecar",),
    "service": ("oauth3-service",),
    "simulator": ("oauth3-simulator",),
}
# what each image is made of: its timestamp is the last commit that changed one of these, the
# folders of our distributions in its closure or what it holds besides them, so an image changes
# only when its own inputs do (a README edit rebuilds nothing)
COMMON_INPUTS = ("requirements.lock", "deploy/Dockerfile", "deploy/context.py")
EXTRA_INPUTS = {"simulator": ("deploy/phala-app.yaml", "phala")}  # the manifest, rendered
OURS = {
    "oauth3-attestation": "attestation",
    "oauth3-runtime": "runtime",
    "oauth3-sidecar": "sidecar",
    "oauth3-service": "service",
    "oauth3-simulator": "simulator",
    "oauth3-verifier": "verifier",
}
# the wheels a cp311 image on x86-64 glibc can install (pip download for that target)
PLATFORMS = (
    "manylinux_2_36_x86_64",
    "manylinux_2_28_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "linux_x86_64",
    "any",
)


def canonical(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def run(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> str:
    """Run a command; on failure print its output and exit 1."""
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        sys.stderr.write(f"{' '.join(args)} failed:\n{done.stdout}{done.stderr}")
        raise SystemExit(1)
    return done.stdout


def read_lock(path: Path) -> dict[str, tuple[str, str]]:
    """requirements.lock by project name: (the `name==version` line, its hash lines)."""
    entries: dict[str, tuple[str, str]] = {}
    name, lines = None, []
    for line in [*path.read_text().splitlines(), ""]:
        if line and not line.startswith((" ", "#")):
            name, lines = canonical(line.split("==")[0]), [line]
        elif name and line.strip().startswith("--hash"):
            lines.append(line)
        elif name:
            pin = lines[0].rstrip(" \\")
            entries[name] = (pin, "\n".join(lines))
            name = None
    return entries


def wheel_requires(wheel: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        text = archive.read(name).decode()
    return [
        line.split(":", 1)[1].strip()
        for line in text.splitlines()
        if line.startswith("Requires-Dist:")
    ]


def closure(roots: Iterable[str], ours: dict[str, Path]) -> set[str]:
    """The distributions `roots` need, transitively: ours as their wheels (built from the commit)
    declare, third-party ones as installed from the lock declare (markers evaluated for the
    image's CPython 3.11 on Linux, extras not taken)."""
    environment = {**default_environment(), "extra": ""}
    needed: set[str] = set()
    todo = [canonical(r) for r in roots]
    while todo:
        name = todo.pop()
        if name in needed:
            continue
        needed.add(name)
        requires = wheel_requires(ours[name]) if name in ours else metadata.requires(name) or []
        for text in requires:
            requirement = Requirement(text)
            if requirement.marker is None or requirement.marker.evaluate(environment):
                todo.append(canonical(requirement.name))
    return needed


def hash_line(wheel: Path) -> str:
    """`name==version --hash=sha256:…` for one wheel file."""
    name, version = wheel.name.split("-")[:2]
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    return f"{canonical(name)}=={version} \\\n    --hash=sha256:{digest}"


def export_commit(commit: str, into: Path) -> Path:
    """The commit's tracked files (`git archive`), with umask-free modes (they go into wheels)."""
    tree = into / "tree"
    tree.mkdir()
    archive = into / "source.tar"
    run("git", "archive", "--format=tar", "-o", str(archive), commit, cwd=REPO)
    with tarfile.open(archive) as source:
        source.extractall(tree, filter="data")
    for path in sorted(tree.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
    return tree


def last_change(commit: str, paths: Iterable[str]) -> str:
    """Unix time of the last commit up to `commit` that changed one of `paths`."""
    return run("git", "log", "-1", "--format=%ct", commit, "--", *paths, cwd=REPO).strip()


def build_ours(tree: Path, commit: str, scratch: Path, out: Path) -> dict[str, Path]:
    """Wheels of our distributions from the exported commit, each dated by the last commit that
    changed its folder: the same source gives the same bytes."""
    wheels: dict[str, Path] = {}
    for dist, folder in OURS.items():
        epoch = last_change(commit, [folder])
        env = {**os.environ, "SOURCE_DATE_EPOCH": epoch, "PYTHONHASHSEED": "0"}
        built = scratch / f"out-{folder}"
        run(
            sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
            "--no-build-isolation", "--no-cache-dir", "--disable-pip-version-check",
            "-w", str(built), str(tree / folder), env=env,
        )  # fmt: skip
        (wheel,) = built.glob("*.whl")
        wheels[dist] = Path(shutil.copy2(wheel, out / wheel.name))
    return wheels


def fetch_third_party(names: set[str], lock: dict[str, tuple[str, str]], cache: Path) -> None:
    """Download (once) the wheels of `names` into the cache, each checked against the lock."""
    cache.mkdir(parents=True, exist_ok=True)
    requirements = cache / "wanted.txt"
    requirements.write_text("\n".join(lock[n][1] for n in sorted(names)) + "\n")
    platforms = [part for p in PLATFORMS for part in ("--platform", p)]
    run(
        sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
        "--require-hashes", "--no-deps", "--only-binary=:all:", "--python-version", "3.11",
        "--implementation", "cp", "--abi", "cp311", *platforms,
        "-d", str(cache), "-r", str(requirements),
    )  # fmt: skip


def wheel_of(name: str, pin: str, cache: Path) -> Path:
    """The cached wheel file that is `pin` (name==version)."""
    version = pin.split("==")[1]
    for wheel in sorted(cache.glob("*.whl")):
        parts = wheel.name.split("-")
        if canonical(parts[0]) == name and parts[1] == version:
            return wheel
    raise SystemExit(f"no wheel for {pin} in {cache}")


def main() -> None:
    """Write the context (see the module docstring)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--wheel-cache", type=Path, default=REPO / "build" / "wheel-cache")
    parser.add_argument("--commit", default="HEAD")
    args = parser.parse_args()
    commit = run("git", "rev-parse", args.commit, cwd=REPO).strip()
    out: Path = args.out
    if out.exists():
        shutil.rmtree(out)
    for folder in ("wheels", "locks", "share", "epochs"):
        (out / folder).mkdir(parents=True)
    with tempfile.TemporaryDirectory() as scratch:
        tree = export_commit(commit, Path(scratch))
        lock = read_lock(tree / "requirements.lock")
        ours = build_ours(tree, commit, Path(scratch), out / "wheels")
        needs = {role: closure(roots, ours) for role, roots in ROLES.items()}
        third_party = {n for names in needs.values() for n in names if n not in OURS}
        missing = sorted(third_party - set(lock))
        if missing:
            raise SystemExit(f"requirements.lock lacks {', '.join(missing)}")
        fetch_third_party(third_party, lock, args.wheel_cache)
        for name in sorted(third_party):
            shutil.copy2(wheel_of(name, lock[name][0], args.wheel_cache), out / "wheels")
        for role, names in needs.items():
            (out / "locks" / f"{role}.lock").write_text(
                "\n".join(lock[n][1] for n in sorted(names) if n not in OURS) + "\n"
            )
            (out / "locks" / f"{role}-oauth3.lock").write_text(
                "\n".join(hash_line(ours[n]) for n in sorted(names) if n in OURS) + "\n"
            )
        run(
            sys.executable, "-m", "oauth3.phala", "render",
            str(tree / "deploy/phala-app.yaml"), "-o", str(out / "share/app-compose.json"),
            "--compose-out", str(out / "share/docker-compose.phala.yml"),
        )  # fmt: skip
        shutil.copy2(tree / "deploy" / "Dockerfile", out / "Dockerfile")
    epochs = {
        role: last_change(
            commit,
            [
                *COMMON_INPUTS,
                *sorted(OURS[n] for n in names if n in OURS),
                *EXTRA_INPUTS.get(role, ()),
            ],
        )
        for role, names in needs.items()
    }
    for role, epoch in epochs.items():
        (out / "epochs" / role).write_text(epoch + "\n")
    (out / "COMMIT").write_text(commit + "\n")
    oldest = min(int(e) for e in epochs.values())
    for path in sorted(out.rglob("*")):
        path.chmod(0o755 if path.is_dir() else 0o644)
        os.utime(path, (oldest, oldest))
    shown = ", ".join(f"{role} {epoch}" for role, epoch in epochs.items())
    sys.stdout.write(f"{out}: commit {commit}; SOURCE_DATE_EPOCH {shown}\n")


if __name__ == "__main__":
    main()
