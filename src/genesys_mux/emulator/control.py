"""The emulator's control surface: ``/__emulator__/...``, never part of the Genesys API.

Theory of operation
-------------------
Tests, demos and benchmarks drive the emulator through these routes (the
control-surface table in docs/emulator.md lists them): register clients, look at and
change the org, set, freeze or blast traffic, inject faults, read the ledger
and the request log, and reset. :class:`ControlSurface` holds one handler
per route, bound to the emulator it controls, and the blast task it starts.

Bodies are JSON objects. A bad one is answered 400 in plain text: the
Genesys error shape is for the emulated API alone. The faults themselves
live in :mod:`genesys_mux.emulator.faults`; the ``faults`` route only looks
one up by name and runs it.

The blast sends pre-encoded frames through :meth:`Emulator.publish
<genesys_mux.emulator.app.Emulator.publish>` as fast as the sockets drain
or at a fixed rate; what each frame holds is
:meth:`Emulator.blast_body <genesys_mux.emulator.app.Emulator.blast_body>`,
which a subclass may override.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import msgspec
from aiohttp import web

from genesys_mux.core.timestamps import format_iso
from genesys_mux.core.topics import validate_id
from genesys_mux.emulator.faults import FAULTS
from genesys_mux.emulator.org import Publication
from genesys_mux.emulator.platform import ClientApp
from genesys_mux.emulator.responses import json_response
from genesys_mux.errors import InvalidIdError

if TYPE_CHECKING:
    from genesys_mux.emulator.app import Emulator

__all__ = ["ControlSurface"]


class ControlSurface:
    """The ``/__emulator__/...`` handlers of one emulator, and the blast they start."""

    def __init__(self, emulator: Emulator) -> None:
        self.emulator = emulator
        #: The running blast, if any.
        self.blast: asyncio.Task[None] | None = None

    def add_routes(self, router: web.UrlDispatcher) -> None:
        """Route every ``/__emulator__/...`` call to its handler here."""
        c = "/__emulator__"
        router.add_post(f"{c}/clients", self.clients)
        router.add_get(f"{c}/org", self.org)
        router.add_post(f"{c}/queues", self.add_queue)
        router.add_delete(f"{c}/queues/{{queue_id}}", self.delete_queue)
        router.add_get(f"{c}/channels", self.channels)
        router.add_post(f"{c}/traffic", self.traffic)
        router.add_post(f"{c}/faults", self.faults)
        router.add_get(f"{c}/ledger", self.ledger)
        router.add_get(f"{c}/requests", self.requests)
        router.add_post(f"{c}/reset", self.reset)

    # -- handlers -------------------------------------------------------

    async def clients(self, request: web.Request) -> web.Response:
        """``POST /__emulator__/clients``: register an OAuth client."""
        data = await _control_body(request)
        try:
            client = ClientApp(
                client_id=validate_id(str(data["client_id"]), "client_id"),
                client_secret=str(data["client_secret"]),
                permissions=frozenset(str(p) for p in data.get("permissions", ["*"])),
                token_lifetime_s=int(data.get("token_lifetime_s", 86399)),
                channels=None if data.get("channels") is None else int(data["channels"]),
                scopes=None
                if data.get("scopes") is None
                else frozenset(str(scope) for scope in data["scopes"]),
            )
            if client.channels is not None and client.channels < 1:
                raise ValueError("channels must be at least 1")
        except (KeyError, TypeError, ValueError, InvalidIdError) as exc:
            raise web.HTTPBadRequest(
                text=f"register a client with client_id, client_secret, optional permissions "
                f"(list), token_lifetime_s (int) and channels (int, its channel budget): {exc}"
            ) from None
        self.emulator.platform.register_client(client)
        return json_response(
            {"client_id": client.client_id, "permissions": sorted(client.permissions)}, 201
        )

    async def org(self, request: web.Request) -> web.Response:
        """``GET /__emulator__/org``: the queues and users of the simulated org."""
        return json_response(self.emulator.centre.org())

    async def add_queue(self, request: web.Request) -> web.Response:
        """``POST /__emulator__/queues``: add a queue to the org."""
        data = await _control_body(request)
        name = data.get("name")
        emulator = self.emulator
        queue = emulator.centre.add_queue(
            str(name) if name is not None else None, emulator.sim_now()
        )
        return json_response(queue.to_api(emulator.epoch), 201)

    async def delete_queue(self, request: web.Request) -> web.Response:
        """``DELETE /__emulator__/queues/{id}``: delete a queue from the org."""
        queue_id = request.match_info["queue_id"]
        if not self.emulator.centre.remove_queue(queue_id):
            raise web.HTTPNotFound(text=f"no queue {queue_id[:64]!r}")
        return json_response({"deleted": queue_id})

    async def channels(self, request: web.Request) -> web.Response:
        """``GET /__emulator__/channels``: every channel, connected or not."""
        links = self.emulator.links
        return json_response(
            [
                {
                    "id": c.id,
                    "client_id": c.client_id,
                    "topic_count": len(c.topics),
                    "connected": c.id in links,
                    "expires": format_iso(c.expires_at),
                    "created": format_iso(c.created_at),
                    # The most REST subscription calls ever under way at once.
                    "most_subscription_calls": self.emulator.most_subscription_calls.get(c.id, 0),
                }
                for c in self.emulator.platform.channels.values()
            ]
        )

    async def traffic(self, request: web.Request) -> web.Response:
        """``POST /__emulator__/traffic``: set the rate, freeze or resume, blast."""
        data = await _control_body(request)
        emulator = self.emulator
        now = time.time()
        if "rate" in data:
            rate = float(data["rate"])
            if rate < 0:
                raise web.HTTPBadRequest(text="rate must be >= 0 conversations per second")
            emulator.centre.set_rate(rate, emulator.sim_now(now))
        if "running" in data:
            emulator.set_running(bool(data["running"]), now)
        if "blast" in data:
            self.start_blast(data["blast"])
        return json_response(
            {
                "running": emulator.running,
                "blasting": self.blast is not None and not self.blast.done(),
            }
        )

    async def faults(self, request: web.Request) -> web.Response:
        """``POST /__emulator__/faults``: inject the fault named in the body."""
        data = await _control_body(request)
        fault = data.get("fault")
        handler = FAULTS.get(str(fault))
        if handler is None:
            raise web.HTTPBadRequest(
                text=f"unknown fault {fault!r}; known: {', '.join(sorted(FAULTS))}"
            )
        try:
            applied = handler(self.emulator, data)
        except (TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(text=f"bad parameters for fault {fault}: {exc}") from None
        return json_response({"fault": fault, "applied": applied})

    async def ledger(self, request: web.Request) -> web.Response:
        """``GET /__emulator__/ledger``: the notification frames sent."""
        ledger = self.emulator.ledger
        channel_id = request.query.get("channel_id")
        since = int(request.query.get("since", "0"))
        entries = [
            e.to_json()
            for e in ledger.entries
            if e.seq > since and (channel_id is None or e.channel_id == channel_id)
        ]
        return json_response({"entries": entries, "next_seq": ledger.next_seq})

    async def requests(self, request: web.Request) -> web.Response:
        """``GET /__emulator__/requests``: the API requests served."""
        return json_response({"requests": list(self.emulator.requests)})

    async def reset(self, request: web.Request) -> web.Response:
        """``POST /__emulator__/reset``: start again from the settings."""
        self.emulator.reset()
        return json_response({"reset": True})

    # -- blast ----------------------------------------------------------

    def start_blast(self, spec: Any) -> None:
        """Stop the running blast, and start the one ``spec`` describes unless it says stop."""
        if not isinstance(spec, dict):
            raise web.HTTPBadRequest(
                text="blast must be an object: {topic, rate, count, size} or {stop: true}"
            )
        self.stop_blast()
        if spec.get("stop"):
            return
        try:
            topic = str(spec["topic"])
            rate = float(spec.get("rate", 0))
            count = int(spec["count"]) if spec.get("count") is not None else None
            size = int(spec.get("size", 2048))
        except (KeyError, TypeError, ValueError) as exc:
            raise web.HTTPBadRequest(
                text=f"blast needs a topic, and numeric rate/count/size: {exc}"
            ) from None
        self.blast = asyncio.create_task(
            self._run_blast(topic, rate, count, size), name="emulator-blast"
        )

    def stop_blast(self) -> None:
        """Cancel the running blast, if any."""
        if self.blast is not None:
            self.blast.cancel()
            self.blast = None

    async def _run_blast(self, topic: str, rate: float, count: int | None, size: int) -> None:
        """Send pre-encoded, distinct conversation frames on ``topic``.

        ``rate`` is frames per second; 0 means as fast as the sockets drain.
        Each frame differs only in a fixed-width counter, so building one is
        a byte concatenation and a benchmark measures the client, not us.
        """
        emulator = self.emulator
        head, tail, prefix = emulator.blast_body(topic, size)
        loop = asyncio.get_running_loop()
        started = loop.time()
        sent = 0
        # At a fixed rate, a batch covers at most ~10 ms of frames, so the
        # rate holds at any scale instead of arriving in 256-frame bursts.
        batch = 256 if rate <= 0 else max(1, min(256, int(rate / 100)))
        while count is None or sent < count:
            n = batch if count is None else min(batch, count - sent)
            pubs = []
            for i in range(sent, sent + n):
                counter = b"%012d" % i
                pubs.append(
                    Publication(
                        (topic,),
                        head + counter + tail,
                        prefix + counter.decode(),
                        f"00000000-0000-4000-8000-{i % 10**12:012d}",
                        0.0,
                    )
                )
            emulator.publish(pubs)
            sent += n
            if rate > 0:
                await asyncio.sleep(max(0.0, started + sent / rate - loop.time()))
            else:
                # Let the writers drain before producing more, so memory stays flat.
                # Polling, not an event: a link may die while we wait, and
                # a missed wake-up here would stall a benchmark forever.
                while any(link.queue.qsize() > 4 * batch for link in emulator.links.values()):  # noqa: ASYNC110
                    await asyncio.sleep(0.001)
                await asyncio.sleep(0)


async def _control_body(request: web.Request) -> dict[str, Any]:
    raw = await request.read()
    if not raw:
        return {}
    try:
        data = msgspec.json.decode(raw)
    except msgspec.DecodeError:
        raise web.HTTPBadRequest(text="control requests take a JSON object body") from None
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="control requests take a JSON object body")
    return data
