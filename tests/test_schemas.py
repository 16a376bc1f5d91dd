"""The checked-in JSON Schemas are what the code generates, and they hold."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
from click.testing import CliRunner

from cli.main import cli
from engine.views.schemas import generate_schemas, render
from ledger.events import EVENT_TYPES
from projections.replay import replay
from tests.conftest import FIXTURE_LEDGER, projections_json

SCHEMAS = Path(__file__).parent.parent / "schemas"


def test_checked_in_schemas_are_current() -> None:
    generated = generate_schemas()
    stale = [
        name
        for name, schema in generated.items()
        if not (SCHEMAS / name).is_file() or (SCHEMAS / name).read_bytes() != render(schema)
    ]
    extra = sorted(
        str(p.relative_to(SCHEMAS))
        for p in SCHEMAS.rglob("*.json")
        if str(p.relative_to(SCHEMAS)) not in generated
    )
    assert not stale and not extra, (
        f"schemas/ is stale (changed: {stale}, no longer generated: {extra}); "
        "run `make schemas` and commit the result"
    )


def test_every_event_type_has_a_schema() -> None:
    names = {p.name.removesuffix(".schema.json") for p in (SCHEMAS / "events").iterdir()}
    assert names == set(EVENT_TYPES)


def test_fixture_ledger_lines_validate_against_the_record_schema() -> None:
    schema = json.loads((SCHEMAS / "record.schema.json").read_text())
    validator = jsonschema.Draft202012Validator(schema)
    for line in FIXTURE_LEDGER.read_text().splitlines():
        record = json.loads(line)
        validator.validate(record)
        per_type = json.loads((SCHEMAS / "events" / f"{record['type']}.schema.json").read_text())
        jsonschema.validate(record, per_type)
    bad = json.loads(FIXTURE_LEDGER.read_text().splitlines()[5])
    bad["data"]["item"] = 5
    assert not validator.is_valid(bad)


def test_projection_output_validates() -> None:
    schema = json.loads((SCHEMAS / "projections.schema.json").read_text())
    jsonschema.validate(json.loads(projections_json(replay(FIXTURE_LEDGER))), schema)


def test_schema_command_writes_the_same_files(tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["schema", "--out", str(tmp_path)])
    assert result.exit_code == 0
    for name, schema in generate_schemas().items():
        assert (tmp_path / name).read_bytes() == render(schema)
