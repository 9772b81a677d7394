"""``python -m archiver`` runs the ``exotel-archiver`` command."""

from archiver.cli import main

main()
