"""The ``genesys-mux`` command line (typer and rich live here, nowhere else)."""
