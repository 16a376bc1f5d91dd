"""Prodigy's error policy in the engine's terms: where a failed item goes, retries, limits.

``error_policy`` (and the same keys at the top of the file, which override
it) becomes the map's ``on_item_failure``, ``retry``, ``max_failures``,
``failure_threshold`` and ``error_collection``, and the workflow's
``circuit_breaker``. Part of the Prodigy dialect (:mod:`engine.workflow.prodigy`).
"""

from __future__ import annotations

import re
from typing import Any

from engine.workflow.problems import Loc
from engine.workflow.prodigy_common import JITTER_FACTOR, Translation, backoff
from engine.workflow.spec import ERROR_TYPES

__all__ = ["error_policy"]

_ON_ITEM_FAILURE = {"dlq": "dlq", "skip": "ignore", "stop": "fail", "retry": "dlq"}


def error_policy(data: dict[str, Any], spec: Any, out: Translation) -> dict[str, Any] | None:
    """``error_policy`` and its top-level forms on the map; the circuit breaker it names."""
    policy = data.get("error_policy")
    here: Loc = ("error_policy",)
    if policy is not None and not out.expect(policy, (dict,), here, "a mapping"):
        policy = None
    policy = dict(policy) if isinstance(policy, dict) else {}
    if policy:
        out.rest(
            policy,
            here,
            "error_policy",
            set(_POLICY_KEYS) | {"circuit_breaker", "retry_config"},
        )
    places = {key: (*here, key) for key in policy}
    for key in _POLICY_KEYS:
        if key in data:
            policy[key], places[key] = data[key], (key,)
    if not isinstance(spec, dict):
        return None
    action = policy.get("on_item_failure", "dlq")
    if isinstance(action, dict) and list(action) == ["custom"]:
        action = f"custom {action['custom']}"
    if not out.expect(
        action,
        (str,),
        places.get("on_item_failure", here),
        "dlq, retry, skip, stop, a handler's name or {custom: NAME}",
    ):
        action = "dlq"
    if "continue_on_failure" in policy:
        out.expect(
            policy["continue_on_failure"], (bool,), places["continue_on_failure"], "true or false"
        )
    if isinstance(action, str) and action not in _ON_ITEM_FAILURE:
        out.warn(
            places["on_item_failure"],
            f"on_item_failure {action!r}: custom handlers are not run; a failed item is "
            "left failed (not in the DLQ), as Prodigy skips it",
        )
    spec["on_item_failure"] = _ON_ITEM_FAILURE.get(action, "ignore")
    retry = policy.get("retry_config")
    if retry is not None and not out.expect(retry, (dict,), (*here, "retry_config"), "a mapping"):
        retry = None
    if action == "retry" and not isinstance(retry, dict):
        spec["on_item_failure"] = "ignore"  # Prodigy: retry without retry_config skips the item
    if isinstance(retry, dict):
        spec["retry"] = _retry_config(retry, (*here, "retry_config"), out)
    for key in ("max_failures", "failure_threshold"):
        if key in policy:
            spec[key] = policy[key]
            out.came_from(("map", key), places[key])
    if policy.get("continue_on_failure") is False and "max_failures" not in policy:
        spec["max_failures"] = 1
    collection = policy.get("error_collection")
    if isinstance(collection, dict) and isinstance(collection.get("batched"), dict):
        collection = f"batched:{collection['batched'].get('size', '')}"
    if isinstance(collection, str) and not _COLLECTION.fullmatch(collection):
        out.warn(
            places.get("error_collection", here),
            f"error_collection {collection[:40]!r} is not aggregate, immediate or batched:N: "
            "read as aggregate, as Prodigy reads it",
        )
        collection = "aggregate"
    if collection is not None:
        spec["error_collection"] = collection
        out.came_from(("map", "error_collection"), places["error_collection"])
    return _circuit(policy.get("circuit_breaker"), (*here, "circuit_breaker"), out)


_COLLECTION = re.compile(r"aggregate|immediate|batched:[1-9][0-9]{0,6}")
_POLICY_KEYS = (
    "on_item_failure",
    "continue_on_failure",
    "max_failures",
    "failure_threshold",
    "error_collection",
)


def _retry_config(raw: dict[str, Any], loc: Loc, out: Translation) -> dict[str, Any]:
    out.rest(
        raw,
        loc,
        "retry_config",
        {"max_attempts", "backoff", "jitter", "jitter_factor", "max_delay"},
    )
    made: dict[str, Any] = {
        "max_attempts": raw.get("max_attempts", 3),
        "retry_on": list(ERROR_TYPES),
    }
    made["jitter"] = raw.get("jitter", False)
    if "jitter_factor" in raw or made["jitter"] is True:
        made["jitter_factor"] = raw.get("jitter_factor", JITTER_FACTOR)
    if "max_delay" in raw:
        made["max"] = raw["max_delay"]
    made["initial"] = 1
    made.update(backoff(raw.get("backoff", {"exponential": {}}), (*loc, "backoff"), out))
    out.came_from(("map", "retry"), loc)
    return made


_CIRCUIT_ON = [t for t in ERROR_TYPES if t != "interrupted"]
"""Prodigy's circuit counts every failure; an attempt the engine's own stop cut short is none."""


def _circuit(raw: Any, loc: Loc, out: Translation) -> dict[str, Any] | None:
    if raw is None or not out.expect(raw, (dict,), loc, "a mapping"):
        return None
    out.rest(
        raw,
        loc,
        "circuit_breaker",
        {"failure_threshold", "success_threshold", "timeout", "half_open_requests"},
    )
    made: dict[str, Any] = {
        "on": _CIRCUIT_ON,
        "success_threshold": 3,
        "half_open_requests": 3,
    }
    names = {"failure_threshold": "threshold", "timeout": "cooldown"}
    for key in ("failure_threshold", "success_threshold", "timeout", "half_open_requests"):
        if key in raw:
            made[names.get(key, key)] = raw[key]
            out.came_from(("circuit_breaker", names.get(key, key)), (*loc, key))
    return made
