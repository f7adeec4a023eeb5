"""Types of the optional compiled walk (``_speedups.c``); see ``snapshot._walk``."""

from typing import Any

from genesys_mux.core.snapshot import _Walked

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
def walk(participants: list[Any], media: str | None, /) -> _Walked | None: ...
