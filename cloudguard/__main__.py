"""``python -m cloudguard`` runs the CLI."""

from .cli import main

main()
