"""The library example of docs/getting-started.md, runnable against the emulator.

    genesys-mux emulator --port 8080 &
    GENESYSCLOUD_OAUTHCLIENT_ID=demo-client GENESYSCLOUD_OAUTHCLIENT_SECRET=demo-secret \\
        python examples/quickstart.py --base-url http://127.0.0.1:8080 --events 20

Against a tenant, set GENESYSCLOUD_REGION instead of --base-url and pass
--queue with one of your queue ids.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import urllib.request

from genesys_mux import Gap, Multiplexer, StreamConfig


def first_emulator_queue(base_url: str) -> str:
    """A queue id from the emulator's control surface (the emulator only)."""
    with urllib.request.urlopen(f"{base_url}/__emulator__/org") as answer:  # noqa: S310 - a URL we were given
        return str(json.load(answer)["queues"][0]["id"])


async def main(base_url: str | None, queue_id: str, events: int) -> None:
    async with Multiplexer(base_url=base_url, max_streams=10, buffer_threshold=500) as mux:
        await mux.add_stream(
            {
                "id": "voice-main",
                "filter": {"channelType": "voice", "state": "active"},
                "priority": 1,
            }
        )
        # Built and validated ahead: model_validate takes the same dict, and
        # type-checks without pydantic's mypy plugin (see docs/library.md).
        await mux.add_stream(
            StreamConfig.model_validate(
                {
                    "id": "chat-support",
                    "filter": {"channelType": "chat", "queueId": queue_id},
                    "priority": 2,
                }
            )
        )
        seen = 0
        async for item in mux.events():  # StreamEvent | Gap, priority-merged
            if isinstance(item, Gap):
                print(
                    f"{item.stream_id}: may have missed {len(item.topics)} topics "
                    f"for {item.duration_s:.1f} s"
                )
                continue
            purposes = [p["purpose"] for p in item.body["participants"]]
            latency_ms = (item.latency_s or 0.0) * 1000  # set when a stream hands it over
            print(
                f"{item.stream_id:<13} #{item.sequence:<4} {item.transition or '-':<6} "
                f"{item.conversation_id} {'/'.join(purposes)} {latency_ms:.1f} ms"
            )
            seen += 1
            if seen >= events:
                return


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base-url", help="the emulator's URL; omit to use GENESYSCLOUD_REGION")
    parser.add_argument("--queue", help="queue id for chat-support (default: the emulator's first)")
    parser.add_argument("--events", type=int, default=20, help="stop after this many events")
    args = parser.parse_args()
    queue = args.queue or (first_emulator_queue(args.base_url) if args.base_url else None)
    if queue is None:
        parser.error("--queue is required against a tenant")
    asyncio.run(main(args.base_url, queue, args.events))
