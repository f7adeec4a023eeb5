"""``python -m genesys_mux`` runs the command line."""

from genesys_mux.cli import main

main()
