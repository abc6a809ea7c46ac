"""Start the local stack (simulator, sidecar, service) as real processes, as `make run` does."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from oauth3.devstack import Child, StackPaths, start_stack, stop_all
from tests.fakes import short_socket_dir

MANIFEST = Path(__file__).resolve().parent.parent / "deploy" / "phala-app.yaml"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class RunningStack:
    """A started stack: its base URL, paths and processes."""

    base_url: str
    pccs_url: str
    paths: StackPaths
    children: list[Child]

    def child(self, name: str) -> Child:
        """The process of one role."""
        return next(c for c in self.children if c.name == name)


@contextmanager
def running_stack(**env: str) -> Iterator[RunningStack]:
    """Start the three processes (extra environment from `env`) and stop them afterwards."""
    paths = StackPaths(short_socket_dir())
    port, pccs_port = free_port(), free_port()
    children = start_stack(
        paths, "127.0.0.1", port, {**os.environ, **env}, pccs_port=pccs_port, manifest=MANIFEST
    )
    try:
        yield RunningStack(
            f"http://127.0.0.1:{port}", f"http://127.0.0.1:{pccs_port}", paths, children
        )
    finally:
        stop_all(children)
