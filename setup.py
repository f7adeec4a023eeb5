"""The one thing pyproject.toml cannot say yet without an experimental table: the extension.

The compiled snapshot walk is optional: where it does not build (no C
compiler, no Python headers) the install goes on and the package walks in
Python, with the same results (README, "Speed-ups").
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "genesys_mux.core._speedups",
            sources=["src/genesys_mux/core/_speedups.c"],
            optional=True,
        )
    ]
)
