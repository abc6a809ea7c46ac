"""The small runtime the servers share (service, sidecar, simulator): JSON logs, the request
bookkeeping around each handler, serving on sockets, problem+json, configuration from the
environment, metrics.

Imports nothing else of oauth3; the verifier, installable alone by a client, does not need it.
"""

from importlib.metadata import PackageNotFoundError, version


def package_version(distribution: str) -> str:
    """An installed distribution's version (0+unknown from an uninstalled tree)."""
    try:
        return version(distribution)
    except PackageNotFoundError:
        return "0+unknown"
