"""An unknown region is reported with where it came from, since that is where it is fixed.

The file's ``[genesys] region`` wins over ``GENESYSCLOUD_REGION``, and
``listen --region`` does too, so advising the variable for those would not
help (``validate`` and ``run`` are covered in ``test_validate.py``).
"""

from __future__ import annotations

from tests.cli.conftest import run_cli

CREDENTIALS = {"GENESYSCLOUD_OAUTHCLIENT_ID": "x", "GENESYSCLOUD_OAUTHCLIENT_SECRET": "y"}


async def test_listen_names_the_option_or_the_variable_that_holds_a_bad_region() -> None:
    flag = await run_cli(
        "listen", "v2.users.u1.presence", "--region", "nowhere", "--count", "1", env=CREDENTIALS
    )
    assert flag.code == 2, flag.why()
    assert flag.stderr.startswith("error: --region: unknown Genesys Cloud region 'nowhere'; use")
    assert "GENESYSCLOUD_REGION" not in flag.output
    variable = await run_cli(
        "listen",
        "v2.users.u1.presence",
        "--count",
        "1",
        env={**CREDENTIALS, "GENESYSCLOUD_REGION": "nowhere"},
    )
    assert variable.code == 2, variable.why()
    assert variable.stderr.startswith(
        "error: GENESYSCLOUD_REGION in the environment: unknown Genesys Cloud region 'nowhere'"
    )
