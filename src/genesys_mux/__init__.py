"""genesys-mux."""
