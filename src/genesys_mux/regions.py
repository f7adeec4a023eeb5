"""Genesys Cloud regions and the three base URLs each one implies.

A deployment is named by a domain ``D``: REST lives at ``https://api.D``,
OAuth at ``https://login.D`` and the notification sockets at
``wss://streaming.D``. Users may write the region name (``eu_west_1``,
``eu-west-1``) or the domain (``mypurecloud.ie``), matching the
``GENESYSCLOUD_REGION`` convention of the Genesys CLI and Terraform provider.

A custom base URL (the emulator, or a test double) stands in for all three
hosts at once. Socket URLs are never derived from these bases: the client
always uses the ``connectUri`` a channel comes back with.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from urllib.parse import urlsplit

from genesys_mux.core.redaction import redact_url, url_has_userinfo
from genesys_mux.errors import ConfigError, UnknownRegionError

__all__ = [
    "REGIONS",
    "Endpoints",
    "Region",
    "endpoints_for",
    "is_loopback_host",
    "resolve_region",
]


@dataclass(frozen=True, slots=True)
class Region:
    """One Genesys Cloud region: its AWS-style name and its domain."""

    name: str
    domain: str


REGIONS: tuple[Region, ...] = (
    Region("us_east_1", "mypurecloud.com"),
    Region("us_east_2", "use2.us-gov-pure.cloud"),
    Region("us_west_2", "usw2.pure.cloud"),
    Region("ca_central_1", "cac1.pure.cloud"),
    Region("sa_east_1", "sae1.pure.cloud"),
    Region("mx_central_1", "mxc1.pure.cloud"),
    Region("eu_west_1", "mypurecloud.ie"),
    Region("eu_west_2", "euw2.pure.cloud"),
    Region("eu_central_1", "mypurecloud.de"),
    Region("eu_central_2", "euc2.pure.cloud"),
    Region("eusc_de_east_1", "edee1.eusc-pure.cloud"),
    Region("me_central_1", "mec1.pure.cloud"),
    Region("ap_south_1", "aps1.pure.cloud"),
    Region("ap_southeast_1", "apse1.pure.cloud"),
    Region("ap_southeast_2", "mypurecloud.com.au"),
    Region("ap_northeast_1", "mypurecloud.jp"),
    Region("ap_northeast_2", "apne2.pure.cloud"),
    Region("ap_northeast_3", "apne3.pure.cloud"),
)

_BY_KEY: dict[str, Region] = {}
for _region in REGIONS:
    _BY_KEY[_region.name] = _region
    _BY_KEY[_region.domain] = _region


@dataclass(frozen=True, slots=True)
class Endpoints:
    """Base URLs for the login, REST and streaming hosts (no trailing slash)."""

    login: str
    api: str
    streaming: str

    @classmethod
    def for_region(cls, region: Region) -> Endpoints:
        """The real hosts of ``region``."""
        d = region.domain
        return cls(
            login=f"https://login.{d}", api=f"https://api.{d}", streaming=f"wss://streaming.{d}"
        )

    @classmethod
    def custom(cls, base_url: str) -> Endpoints:
        """One base URL for all three roles, as the emulator serves them.

        Only ``https``, or ``http`` to a loopback host (``127.0.0.1``,
        ``localhost``, ``[::1]``: the emulator), is accepted, with a host, no
        user info and no query or fragment, so that paths can be appended
        safely and the OAuth client secret never crosses a network in
        cleartext. Errors quote the URL without user info, query or fragment.
        """
        base_url = base_url.strip()
        shown = redact_url(base_url)
        usage = (
            f"base URL {shown!r} must look like http://host:port or https://host: "
            "point it at the emulator, or leave it unset and give a region"
        )
        # urlsplit silently drops surrounding spaces and embedded tabs and
        # newlines, so the URL it checks would not be the string we build
        # on: strip the ends, and refuse whitespace inside.
        if any(c.isspace() for c in base_url):
            raise ConfigError(usage)
        # Before anything else is read, so that no message (ours, or a
        # parser's) can quote a password.
        if url_has_userinfo(base_url):
            raise ConfigError(
                f"base URL {shown!r} must not hold a user name or password (user:password@): "
                "remove them; the client signs in with its OAuth client id and secret "
                "(GENESYSCLOUD_OAUTHCLIENT_ID and GENESYSCLOUD_OAUTHCLIENT_SECRET, or a "
                "secrets file), never with credentials in the URL"
            )
        try:
            parts = urlsplit(base_url)
            # The port is parsed lazily; read it so that a bad one fails here
            # rather than at the first request.
            _ = parts.port
        except ValueError as exc:  # "Invalid IPv6 URL", "Port out of range 0-65535"
            raise ConfigError(f"{usage} ({exc})") from exc
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(usage)
        if parts.query or parts.fragment:
            raise ConfigError(f"base URL {shown!r} must not carry a query string or fragment")
        if parts.scheme == "http" and not is_loopback_host(parts.hostname):
            raise ConfigError(
                f"base URL {shown!r} is plain http to {parts.hostname}, not a loopback "
                "host: the OAuth client secret and the access tokens would cross the "
                "network unencrypted; use https://, or http only to an emulator on "
                "loopback (127.0.0.1, localhost or [::1])"
            )
        base = base_url.rstrip("/")
        ws = "wss" if parts.scheme == "https" else "ws"
        return cls(login=base, api=base, streaming=ws + base[len(parts.scheme) :])


def resolve_region(value: str, *, origin: str | None = None) -> Region:
    """Find a region by name (``eu_west_1``, ``eu-west-1``) or domain (``mypurecloud.ie``).

    Raises :class:`UnknownRegionError` listing the accepted values.
    ``origin`` says where the value came from (``[genesys] region in
    mux.toml``); the message then names it as the place to fix, instead of
    advising ``GENESYSCLOUD_REGION``, which does not win over it.
    """
    key = value.strip().lower()
    for prefix in ("https://", "http://"):
        key = key.removeprefix(prefix)
    key = key.rstrip("/")
    for host in ("api.", "login.", "apps."):
        key = key.removeprefix(host)
    region = _BY_KEY.get(key) or _BY_KEY.get(key.replace("-", "_"))
    if region is None:
        known = ", ".join(f"{r.name} ({r.domain})" for r in REGIONS)
        if origin is not None:
            raise UnknownRegionError(
                f"{origin}: unknown Genesys Cloud region {value!r}; use one of: {known}"
            )
        raise UnknownRegionError(
            f"unknown Genesys Cloud region {value!r}; set GENESYSCLOUD_REGION to one of: {known}"
        )
    return region


def endpoints_for(region: str | None = None, base_url: str | None = None) -> Endpoints:
    """Endpoints from a region or a custom base URL; exactly one must be given."""
    if (region is None) == (base_url is None):
        raise ConfigError(
            "give exactly one of region (e.g. 'mypurecloud.com') or base_url "
            "(e.g. 'http://127.0.0.1:8080' for the emulator)"
        )
    if base_url is not None:
        return Endpoints.custom(base_url)
    assert region is not None
    return Endpoints.for_region(resolve_region(region))


def is_loopback_host(host: str) -> bool:
    """True for ``localhost`` and loopback addresses: servers we start bind there by default."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
