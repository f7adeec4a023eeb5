"""A webhook receiver for genesys-mux's webhook sink: Standard Webhooks, checked.

    WEBHOOK_SECRET=whsec_... python examples/webhook_receiver.py --port 8000

and point a sink at it (the same secret in the variable its ``secret_env``
names)::

    [[streams.sinks]]
    type = "webhook"
    url = "http://127.0.0.1:8000/hook"
    secret_env = "WEBHOOK_SECRET"

Each request is verified before anything else: its signature (under the
secret, or any of several separated by spaces while one is rotated), and
its ``webhook-timestamp``, which may be at most five minutes away from
this machine's clock, so a captured request cannot be replayed later. A
request that fails gets 401. A batch whose ``webhook-id`` was already
taken (the sink sends a batch again when it did not see our answer) is
answered 200 and not processed twice. A batch carrying an
``X-Genesys-Mux-Fence`` smaller than one already seen for its stream comes
from an instance that lost the stream in a cluster, and gets 409.

Prints one line per request on standard output: ``accepted <id> <n>
items``, ``duplicate <id>``, ``refused <reason>`` or ``fenced <id>``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import sys
import time
from collections import OrderedDict

from aiohttp import web

from genesys_mux.errors import ConfigError
from genesys_mux.sinks.webhook import FENCE_HEADER, WebhookVerificationError, parse_secrets, verify

# The standard's own package checks the same signatures, if you prefer it:
#
#     from standardwebhooks import Webhook, WebhookVerificationError
#     Webhook(secret).verify(body, dict(request.headers))  # raises when it fails
#
# (one secret per Webhook; try each while rotating.)

TOLERANCE_S = 300.0
#: How long a webhook-id is remembered. Longer than the tolerance: a batch
#: the sink re-sends (a lost answer, a restart) comes with a fresh timestamp
#: but its old id. Past this, the items' own idempotency_key still identifies
#: repeats for a store that keeps them.
REMEMBER_S = 3600.0


class Receiver:
    """Verifies, de-duplicates and fences webhook requests; hands each batch to ``process``."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.seen: OrderedDict[str, float] = OrderedDict()  # webhook-id -> when taken
        self.fences: dict[str, int] = {}  # stream_id -> largest fencing token

    def process(self, msg_id: str, items: list[dict[str, object]]) -> None:
        """Your code goes here: store the items, say, keyed by their idempotency_key."""
        print(f"accepted {msg_id} {len(items)} items", flush=True)

    def _forget_old(self, now: float) -> None:
        while self.seen and next(iter(self.seen.values())) < now - REMEMBER_S:
            self.seen.popitem(last=False)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()  # the raw bytes: a re-encoded body would not verify
        try:
            msg_id = verify(self.secret, body, request.headers, tolerance_s=TOLERANCE_S)
        except WebhookVerificationError as exc:
            print(f"refused {exc}", flush=True)
            return web.Response(status=401, text="signature or timestamp refused\n")
        now = time.time()
        self._forget_old(now)
        if msg_id in self.seen:
            print(f"duplicate {msg_id}", flush=True)
            return web.Response(status=200)
        items = json.loads(body)["items"]
        fence_header = request.headers.get(FENCE_HEADER)
        if fence_header is not None:
            fence = int(fence_header)
            streams = {str(item["stream_id"]) for item in items}
            if any(fence < self.fences.get(stream, 0) for stream in streams):
                print(f"fenced {msg_id}", flush=True)
                return web.Response(status=409)
            for stream in streams:
                self.fences[stream] = fence
        self.process(msg_id, items)
        # Remembered only once processed: a failure above leaves the sink free to retry.
        self.seen[msg_id] = now
        return web.Response(status=200)


async def serve(secret: str, host: str, port: int, path: str) -> None:
    receiver = Receiver(secret)
    app = web.Application()
    app.router.add_post(path, receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    print(f"listening on http://{host}:{bound}{path}", flush=True)
    try:
        await asyncio.Event().wait()  # until interrupted
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0 picks a free port")
    parser.add_argument("--path", default="/hook")
    args = parser.parse_args()
    secret = os.environ.get("WEBHOOK_SECRET", "")
    if not secret:
        sys.exit("set WEBHOOK_SECRET to the sink's whsec_... secret (several: space-separated)")
    try:
        parse_secrets(secret, label="WEBHOOK_SECRET")  # a bad secret fails now, not per request
    except ConfigError as exc:
        sys.exit(str(exc))
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C is how it stops
        asyncio.run(serve(secret, args.host, args.port, args.path))


if __name__ == "__main__":
    main()
