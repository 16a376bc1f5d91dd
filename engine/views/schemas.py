"""JSON Schemas generated from the code: every event type and the projections.

``engine schema --out schemas/`` writes them; a test fails when the checked-in
files differ from what the code generates.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Union

import msgspec

from engine.views.report_model import Report
from ledger.atomic import atomic_write
from ledger.events import RECORD_TYPES
from projections.receipts import Receipt
from projections.replay import ProjectionsView

__all__ = ["generate_schemas", "write_schemas"]

_SCHEMA_URI = "https://json-schema.org/draft/2020-12/schema"


def _schema(tp: Any, title: str, description: str) -> dict[str, Any]:
    schema: dict[str, Any] = {"$schema": _SCHEMA_URI, "title": title, "description": description}
    schema.update(msgspec.json.schema(tp))
    return schema


def generate_schemas() -> dict[str, dict[str, Any]]:
    """Every schema by its file name (relative to the schemas directory)."""
    out: dict[str, dict[str, Any]] = {}
    union = Union[tuple(RECORD_TYPES.values())]  # type: ignore[valid-type]  # noqa: UP007
    out["record.schema.json"] = _schema(
        union, "Ledger record", "Any one line of a ledger (ledger format v1)."
    )
    for event_type, cls in RECORD_TYPES.items():
        out[f"events/{event_type}.schema.json"] = _schema(
            cls, f"{event_type} record", f"A ledger line whose type is {event_type!r}."
        )
    out["projections.schema.json"] = _schema(
        ProjectionsView,
        "Projections",
        "Every projection of a run, as printed by `engine replay --json`.",
    )
    out["report.schema.json"] = _schema(
        Report,
        "Audit report",
        "A run's audit report, as printed by `engine audit report RUN --format json`.",
    )
    out["receipt.schema.json"] = _schema(
        Receipt,
        "Receipt",
        "What the ledger proves of one item that succeeded: a run's receipts/<name>.json.",
    )
    return out


def render(schema: dict[str, Any]) -> bytes:
    return (json.dumps(schema, indent=2, sort_keys=True) + "\n").encode()


def write_schemas(out_dir: Path) -> list[Path]:
    """Write every schema under ``out_dir``; return the paths written."""
    written: list[Path] = []
    for name, schema in generate_schemas().items():
        path = out_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, render(schema), mode=0o644)
        written.append(path)
    return written
