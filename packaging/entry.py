"""Entry point of the frozen daemon: the same `main` as the `envd` console script."""

from envd.cli import main

main()
