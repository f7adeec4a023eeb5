"""Tests for genesys_mux.regions: region lookup and base URLs."""

from __future__ import annotations

import pytest

from genesys_mux.errors import ConfigError, UnknownRegionError
from genesys_mux.regions import REGIONS, Endpoints, Region, endpoints_for, resolve_region

# The table from the reference, §1, spelled out independently of the module.
EXPECTED = {
    "us_east_1": "mypurecloud.com",
    "us_east_2": "use2.us-gov-pure.cloud",
    "us_west_2": "usw2.pure.cloud",
    "ca_central_1": "cac1.pure.cloud",
    "sa_east_1": "sae1.pure.cloud",
    "mx_central_1": "mxc1.pure.cloud",
    "eu_west_1": "mypurecloud.ie",
    "eu_west_2": "euw2.pure.cloud",
    "eu_central_1": "mypurecloud.de",
    "eu_central_2": "euc2.pure.cloud",
    "eusc_de_east_1": "edee1.eusc-pure.cloud",
    "me_central_1": "mec1.pure.cloud",
    "ap_south_1": "aps1.pure.cloud",
    "ap_southeast_1": "apse1.pure.cloud",
    "ap_southeast_2": "mypurecloud.com.au",
    "ap_northeast_1": "mypurecloud.jp",
    "ap_northeast_2": "apne2.pure.cloud",
    "ap_northeast_3": "apne3.pure.cloud",
}


def test_the_table_has_all_18_regions() -> None:
    assert len(REGIONS) == 18
    assert {r.name: r.domain for r in REGIONS} == EXPECTED


@pytest.mark.parametrize(("name", "domain"), sorted(EXPECTED.items()))
def test_each_region_resolves_every_way(name: str, domain: str) -> None:
    region = Region(name, domain)
    spellings = [
        name,
        name.replace("_", "-"),
        name.upper(),
        f"  {name}  ",
        domain,
        domain.upper(),
        f"api.{domain}",
        f"login.{domain}",
        f"apps.{domain}",
        f"https://api.{domain}",
        f"https://api.{domain}/",
        f"https://login.{domain}",
        f"https://{domain}",
    ]
    for spelling in spellings:
        assert resolve_region(spelling) == region, spelling


@pytest.mark.parametrize(("name", "domain"), sorted(EXPECTED.items()))
def test_region_endpoints(name: str, domain: str) -> None:
    expected = Endpoints(
        login=f"https://login.{domain}",
        api=f"https://api.{domain}",
        streaming=f"wss://streaming.{domain}",
    )
    assert Endpoints.for_region(resolve_region(name)) == expected
    assert endpoints_for(region=name) == expected
    assert endpoints_for(region=domain) == expected
    assert endpoints_for(region=f"https://api.{domain}") == expected


@pytest.mark.parametrize(
    "value",
    [
        "",
        "   ",
        "eu_west_9",
        "mypurecloud.co.uk",
        "europe",
        "https://api.example.com",
        "eu__west_1",
    ],
)
def test_unknown_region_lists_the_choices(value: str) -> None:
    with pytest.raises(UnknownRegionError) as info:
        resolve_region(value)
    message = str(info.value)
    assert repr(value) in message
    assert "GENESYSCLOUD_REGION" in message
    assert "eu_west_1 (mypurecloud.ie)" in message
    assert "ap_northeast_3 (apne3.pure.cloud)" in message
    assert isinstance(info.value, ConfigError)


def test_unknown_region_through_endpoints_for() -> None:
    with pytest.raises(UnknownRegionError):
        endpoints_for(region="mars_north_1")


@pytest.mark.parametrize(
    ("base_url", "base", "streaming"),
    [
        ("http://127.0.0.1:8080/", "http://127.0.0.1:8080", "ws://127.0.0.1:8080"),
        ("http://127.0.0.1:8080", "http://127.0.0.1:8080", "ws://127.0.0.1:8080"),
        ("https://emulator.example:8443", "https://emulator.example:8443", "wss://emulator.example:8443"),
        ("https://emulator.example/", "https://emulator.example", "wss://emulator.example"),
        ("http://localhost:9000/prefix/", "http://localhost:9000/prefix", "ws://localhost:9000/prefix"),
        ("http://[::1]:8080", "http://[::1]:8080", "ws://[::1]:8080"),
        ("HTTPS://Emulator:1", "HTTPS://Emulator:1", "wss://Emulator:1"),
        ("  http://127.0.0.1:8080/ \n", "http://127.0.0.1:8080", "ws://127.0.0.1:8080"),
    ],
)  # fmt: skip
def test_custom_endpoints(base_url: str, base: str, streaming: str) -> None:
    expected = Endpoints(login=base, api=base, streaming=streaming)
    assert Endpoints.custom(base_url) == expected
    assert endpoints_for(base_url=base_url) == expected


@pytest.mark.parametrize(
    "base_url",
    [
        "",
        "127.0.0.1:8080",
        "localhost:8080",
        "ftp://127.0.0.1",
        "ws://127.0.0.1:8080",
        "http://",
        "http:///path",
        "http://[::1",
        "http://127.0.0.1:port",
        "http://127.0.0.1:99999",
        "http://local host:8080",
        "http://local\nhost:8080",
        "http://127.0.0.1:8080/\tx",
    ],
)
def test_bad_base_url_says_what_to_do(base_url: str) -> None:
    with pytest.raises(ConfigError) as info:
        Endpoints.custom(base_url)
    message = str(info.value)
    assert "must look like http://host:port or https://host" in message
    assert "emulator" in message
    assert "give a region" in message


@pytest.mark.parametrize("base_url", ["http://127.0.0.1:8080/?x=1", "http://127.0.0.1:8080/#frag"])
def test_base_url_with_query_or_fragment(base_url: str) -> None:
    with pytest.raises(ConfigError, match="must not carry a query string or fragment"):
        Endpoints.custom(base_url)


@pytest.mark.parametrize(
    "base_url",
    [
        "http://10.1.2.3:8080",
        "http://emulator.example:8080",
        "http://0.0.0.0:8080",
        "http://[2001:db8::1]:8080",
        "http://localhost.example.com",
    ],
)
def test_plain_http_is_refused_beyond_loopback(base_url: str) -> None:
    # The client secret goes in a Basic header to /oauth/token: never in cleartext.
    with pytest.raises(ConfigError) as info:
        Endpoints.custom(base_url)
    message = str(info.value)
    assert "plain http" in message
    assert "use https://, or http only to an emulator on loopback" in message


@pytest.mark.parametrize("base_url", ["http://127.0.0.2:8080", "http://LOCALHOST:1"])
def test_plain_http_is_accepted_on_loopback(base_url: str) -> None:
    assert Endpoints.custom(base_url).streaming.startswith("ws://")


@pytest.mark.parametrize(
    "base_url",
    [
        "https://admin:BaseUrlPw99@emu.example.com/?x=1",
        "https://admin:BaseUrlPw99@emu.example.com:99999",
        "http://admin:BaseUrlPw99@127.0.0.1:1",
        "http://admin:Base/UrlPw99@127.0.0.1:1",
        "http://admin:BaseUrlPw99@[::1",
        "http://BaseUrlPw99@127.0.0.1:1",
        "http://admin:BaseUrlPw99@10.0.0.1:1",
    ],
)
def test_user_info_in_a_base_url_is_refused_and_never_quoted(base_url: str) -> None:
    with pytest.raises(ConfigError) as info:
        endpoints_for(base_url=base_url)
    message = str(info.value)
    assert "must not hold a user name or password" in message
    assert "BaseUrlPw99" not in message
    assert "UrlPw99" not in message


@pytest.mark.parametrize(
    "base_url",
    ["https://emu.example/?token=QueryTok3nValue", "https://emu.example/#QueryTok3nValue"],
)
def test_a_refused_base_url_is_quoted_without_its_query(base_url: str) -> None:
    with pytest.raises(ConfigError, match="must not carry a query string") as info:
        Endpoints.custom(base_url)
    assert "QueryTok3nValue" not in str(info.value)
    assert "'https://emu.example/'" in str(info.value)


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"region": None, "base_url": None},
        {"region": "eu_west_1", "base_url": "http://127.0.0.1:8080"},
        {"region": "", "base_url": ""},
    ],
)
def test_endpoints_for_needs_exactly_one(kwargs: dict[str, str | None]) -> None:
    with pytest.raises(ConfigError, match=r"give exactly one of region .* or base_url") as info:
        endpoints_for(**kwargs)
    assert not isinstance(info.value, UnknownRegionError)


def test_endpoints_are_frozen() -> None:
    endpoints = endpoints_for(region="eu_west_1")
    with pytest.raises(AttributeError):
        endpoints.api = "http://elsewhere"  # type: ignore[misc]
