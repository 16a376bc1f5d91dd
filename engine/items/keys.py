"""An item's idempotency key: the same for every attempt of the item, across resumes.

``ik:`` + SHA-256 of the canonical JSON of the map step, the item's id and
its value. Each attempt gets it as ``ENGINE_IDEMPOTENCY_KEY`` and
``item.dispatched`` records it, so a command that an interrupted attempt ran
once can tell, when it runs again, that the work is the same.
"""

from __future__ import annotations

import hashlib
from typing import Any

from engine.items.selection import canonical_json
from engine.workflow.spec import MapSpec

__all__ = ["IdempotencyKeys", "idempotency_key"]


def idempotency_key(map_spec: MapSpec | Any, item_id: str, value: Any) -> str:
    """``ik:`` + SHA-256 of canonical JSON of the map step, the item id and its value.

    ``map_spec`` may also be the map step already dumped to JSON-able data.
    """
    if isinstance(map_spec, MapSpec):
        map_spec = _key_material(map_spec)
    payload = {"map": map_spec, "item": item_id, "value": value}
    return "ik:" + hashlib.sha256(canonical_json(payload)).hexdigest()


_NOT_IN_KEYS = frozenset({"allow_background"})
"""Map settings about supervising the work, not the work: keys stay as they were."""


def _key_material(map_spec: MapSpec) -> Any:
    return map_spec.model_dump(mode="json", by_alias=True, exclude=set(_NOT_IN_KEYS))


class IdempotencyKeys:
    """:func:`idempotency_key` for one map step, its part of the JSON encoded once.

    The canonical JSON of ``{"item", "map", "value"}`` (keys sorted) is the
    item, the map step and the value in that order, so the map step's bytes
    can be spliced in between: the same bytes, the same key.
    """

    def __init__(self, map_spec: MapSpec | Any) -> None:
        if isinstance(map_spec, MapSpec):
            map_spec = _key_material(map_spec)
        self._middle = b',"map":' + canonical_json(map_spec) + b',"value":'

    def __call__(self, item_id: str, value: Any) -> str:
        data = b'{"item":' + canonical_json(item_id) + self._middle + canonical_json(value) + b"}"
        return "ik:" + hashlib.sha256(data).hexdigest()
