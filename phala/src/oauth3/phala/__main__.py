"""`python -m oauth3.phala` runs `oauth3-phala`."""

from .cli import main

main()
