"""Types of the optional compiled helpers (``_speedups.c``).

See ``snapshot._walk`` and ``frames._split_in_python``, their specifications.
"""

from collections.abc import Callable
from typing import Any

from genesys_mux.core.frames import Notification
from genesys_mux.core.snapshot import ConversationFacts, _Walked

def bind(
    participant: type,
    communication: type,
    detail: type,
    ref: type,
    wrapup: type,
    after_call_work: type,
    media_names: tuple[str, ...],
    /,
) -> None: ...
def bind_digest(encode: Callable[[Any], bytes], sha256: Callable[[bytes], Any], /) -> None: ...
def walk(conversation_id: str, participants: list[Any], media: str | None, /) -> _Walked | None: ...
def bind_split(notification: type[Notification], excluded_topics: tuple[str, ...], /) -> None: ...
def split(data: bytes | str, /) -> Notification | None: ...
def is_utf8(data: bytes, /) -> bool: ...
def sha256(data: bytes, /) -> bytes | None: ...
def use_sha_instructions(use: bool, /) -> bool: ...
def bind_reader(
    conversation: type,
    facts: Callable[..., ConversationFacts],
    decode_text: Callable[[bytes], str],
    /,
) -> None: ...
def read(body: bytes, media: str | None, /) -> ConversationFacts | None: ...
