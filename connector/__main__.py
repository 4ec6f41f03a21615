"""`python -m connector`: the same entry point as the `connector` command."""

from connector.cli import main

main()
