"""oauth3: attestation service for dstack / Intel TDX on Phala Cloud."""

from importlib.metadata import PackageNotFoundError, version


def package_version() -> str:
    """The installed oauth3 distribution's version (0+unknown from an uninstalled tree)."""
    try:
        return version("oauth3")
    except PackageNotFoundError:
        return "0+unknown"
