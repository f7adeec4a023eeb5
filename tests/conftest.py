"""Hypothesis profiles: a deterministic gate for every run, and exploration on demand.

``gate`` (loaded here, so every run uses it) derandomises: the same examples
every time, chosen from each test's own code, with no example database and
no deadline. A run of the suite then passes or fails on the code alone, not
on which examples this run happened to draw or on how busy the machine was.

``explore`` draws fresh examples on every run and keeps the failures it
finds in the local example database, to be replayed first next time::

    .venv/bin/pytest tests --hypothesis-profile=explore
    .venv/bin/pytest tests/core --hypothesis-profile=explore --hypothesis-seed=1234

Run it after touching a module with property tests, and turn what it finds
into a named test before fixing it, so that every run checks it from then
on.
"""

from hypothesis import settings

# The gate's example counts are the tests' own (their @settings, else 100).
settings.register_profile("gate", derandomize=True, database=None, deadline=None, print_blob=True)
settings.register_profile("explore", deadline=None, print_blob=True)
settings.load_profile("gate")
