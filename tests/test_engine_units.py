"""Units of the engine: classification, signatures, backoff, item selection, templates."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from engine.errors import ItemsError
from engine.items.keys import idempotency_key
from engine.items.selection import load_items, select
from engine.map.classify import classify, signature
from engine.map.policy import backoff_delay
from engine.workflow.spec import ClassifyRule, MapSpec, RetrySpec, parse_duration
from engine.workflow.template import TemplateError, render_shell, scan_shell


@pytest.mark.parametrize(
    ("stderr", "code", "sig", "expected"),
    [
        ("Error: 429 Too Many Requests", 1, None, "rate_limited"),
        ("anthropic.RateLimitError: rate limit reached", 1, None, "rate_limited"),
        ("HTTP 503 Service Unavailable", 1, None, "api_error"),
        ("API error: overloaded_error", 1, None, "api_error"),
        ("MemoryError", 1, None, "resource_exhausted"),
        ("write failed: No space left on device", 1, None, "resource_exhausted"),
        ("CONFLICT (content): Merge conflict in a.py", 1, None, "merge_conflict"),
        ("validation failed: missing field", 2, None, "validation_failed"),
        ("ls: cannot access 'x': No such file", 2, None, "command_failed"),
        ("", None, 9, "resource_exhausted"),
        ("", None, 11, "command_failed"),
        ("", None, None, "unknown"),
    ],
)
def test_builtin_classification(
    stderr: str, code: int | None, sig: int | None, expected: str
) -> None:
    c = classify(exit_code=code, signal=sig, stderr_tail=stderr, stdout_tail="")
    assert c.error_type == expected


def test_engine_observations_and_workflow_rules_come_first() -> None:
    base = {"exit_code": 1, "signal": None, "stderr_tail": "429 rate limit", "stdout_tail": ""}
    assert classify(**base, timed_out=True).error_type == "timeout"
    assert classify(**base, hung=True).error_type == "hung"
    assert classify(**base, interrupted=True).error_type == "interrupted"
    rule = ClassifyRule.model_validate({"pattern": "rate limit", "as": "api_error"})
    assert classify(**base, rules=[rule]).error_type == "api_error"


def test_signatures_group_what_varies() -> None:
    a = classify(
        exit_code=1,
        signal=None,
        stderr_tail="error at /home/u/proj/a.py:12 id=3f2a9c81d0 at 2026-01-02T03:04:05Z took 1.5s",
        stdout_tail="",
    )
    b = classify(
        exit_code=1,
        signal=None,
        stderr_tail="error at /srv/other/b.py:99 id=aa11bb22cc at 2025-12-31T23:59:59Z took 30s",
        stdout_tail="",
    )
    assert a.signature == b.signature
    assert signature("timeout", "x") != signature("api_error", "x")
    assert len(a.signature) == 64


def test_backoff_kinds_and_bounds() -> None:
    rng = random.Random(1)
    fixed = RetrySpec(backoff="fixed", initial=2, jitter=False)
    linear = RetrySpec(backoff="linear", initial=2, jitter=False)
    exp = RetrySpec(backoff="exponential", initial=2, multiplier=3, max=20, jitter=False)
    assert [backoff_delay(fixed, n, rng) for n in (1, 2, 3)] == [2, 2, 2]
    assert [backoff_delay(linear, n, rng) for n in (1, 2, 3)] == [2, 4, 6]
    assert [backoff_delay(exp, n, rng) for n in (1, 2, 3, 4)] == [2, 6, 18, 20]
    jittered = RetrySpec(backoff="exponential", initial=2, multiplier=2, max=60, jitter=True)
    for n in range(1, 8):
        full = min(2 * 2 ** (n - 1), 60)
        for _ in range(50):
            assert full / 2 <= backoff_delay(jittered, n, rng) <= full


def test_durations() -> None:
    assert parse_duration("1h30m") == 5400
    assert parse_duration("500ms") == 0.5
    assert parse_duration(7) == 7.0
    assert parse_duration("2.5") == 2.5
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("10 minutes please")


def test_idempotency_key_is_stable_per_item() -> None:
    spec = MapSpec.model_validate({"items": [1], "agent_template": [{"run": "true"}]})
    k1 = idempotency_key(spec, "a", {"x": 1, "y": 2})
    assert k1 == idempotency_key(spec, "a", {"y": 2, "x": 1})
    assert k1.startswith("ik:") and len(k1) == 67
    assert k1 != idempotency_key(spec, "b", {"x": 1, "y": 2})


ITEMS = [
    {"path": "a.py", "size": 200, "lang": "py", "prio": 2, "tags": ["x"], "meta": {"owner": "ann"}},
    {"path": "b.js", "size": 300, "lang": "js", "prio": None, "tags": []},
    {"path": "c.py", "size": 50, "lang": "py", "prio": 5, "tags": ["y"], "meta": {"owner": "bob"}},
    {"path": "d.py", "size": 500, "lang": "py", "prio": 1, "tags": []},
    {"path": "e.md", "size": 120, "lang": "md", "prio": 2, "tags": ["x", "y"]},
]


def _paths(**kw: object) -> list[str]:
    spec = MapSpec.model_validate({"items": ITEMS, "agent_template": [{"run": "true"}], **kw})
    return [v["path"] for v in select(spec, ITEMS)]


@pytest.mark.parametrize(
    ("expr", "expected"),
    [
        ("item.size > 100 and item.lang == 'py'", ["a.py", "d.py"]),
        ("item.size > 100 && item.lang != 'py'", ["b.js", "e.md"]),
        ("item.lang == 'js' or item.size < 100", ["b.js", "c.py"]),
        ("item.lang == 'js' || item.size <= 50", ["b.js", "c.py"]),
        ("not (item.lang == 'py')", ["b.js", "e.md"]),
        ("!(item.size >= 200)", ["c.py", "e.md"]),
        ("item.lang in ['js', 'md']", ["b.js", "e.md"]),
        ("item.meta.owner == 'bob'", ["c.py"]),
        ("is_null(item.prio)", ["b.js"]),
        ("is_null(item.meta)", ["b.js", "d.py", "e.md"]),
        ("contains(item.tags, 'y')", ["c.py", "e.md"]),
        ("item.tags contains 'x'", ["a.py", "e.md"]),
        ("starts_with(item.path, 'd')", ["d.py"]),
        ("ends_with(item.path, '.md')", ["e.md"]),
        ("length(item.tags) == 2", ["e.md"]),
        ("match(item.path, '[a-c][.]py')", ["a.py", "c.py"]),
        ("search(item.path, 'js$')", ["b.js"]),
        ("item.path =~ /[de]\\..*/", ["d.py", "e.md"]),
    ],
)
def test_filter_language(expr: str, expected: list[str]) -> None:
    assert _paths(filter=expr) == expected


def test_sort_offset_max_items() -> None:
    assert _paths(sort_by="item.prio DESC") == ["c.py", "a.py", "e.md", "d.py", "b.js"]
    assert _paths(sort_by="item.prio ASC") == ["d.py", "a.py", "e.md", "c.py", "b.js"]
    assert _paths(sort_by="item.prio ASC NULLS FIRST") == ["b.js", "d.py", "a.py", "e.md", "c.py"]
    assert _paths(sort_by="item.prio DESC NULLS LAST, item.size ASC") == [
        "c.py",
        "e.md",
        "a.py",
        "d.py",
        "b.js",
    ]
    assert _paths(sort_by="item.size DESC", offset=1, max_items=2) == ["b.js", "a.py"]
    assert _paths(json_path="$[?@.lang == 'py']", max_items=1) == ["a.py"]


def test_bad_filter_and_sort_are_clear() -> None:
    with pytest.raises(ItemsError, match=r"map.filter: cannot parse"):
        _paths(filter="item.size >> 3")
    with pytest.raises(ItemsError, match=r"map.sort_by: cannot parse 'size DOWN'"):
        _paths(sort_by="size DOWN")


def test_items_from_files_and_ids(tmp_path: Path) -> None:
    (tmp_path / "items.jsonl").write_text('{"k": 1}\n{"k": 2}\n\n{"k": 1}\nplain text\n')
    spec = MapSpec.model_validate({"input": "items.jsonl", "agent_template": [{"run": "true"}]})
    loaded = load_items(spec, tmp_path, {})
    assert [w.value for w in loaded.items] == [{"k": 1}, {"k": 2}, "plain text"]
    assert [(d.index, first) for d, first in loaded.duplicates] == [(2, 0)]
    assert all(w.id.startswith("sha256:") for w in loaded.items)
    spec = MapSpec.model_validate({"input": "missing.json", "agent_template": [{"run": "true"}]})
    with pytest.raises(ItemsError, match="cannot read"):
        load_items(spec, tmp_path, {})


def test_shell_rendering_quotes_references() -> None:
    command, env = render_shell(
        'cat ${item.f} "${item.f}" | grep "${env.X}"', {"item": {"f": "a b"}, "env": {"X": "$y"}}
    )
    assert command == 'cat "${ENGINE_VAR_1}" "${ENGINE_VAR_1}" | grep "${ENGINE_VAR_2}"'
    assert env == {"ENGINE_VAR_1": "a b", "ENGINE_VAR_2": "$y"}
    assert [p.quoting for p in scan_shell("""a ${x} "b ${x}" 'c ${x}' \\${x}""")] == [
        "none",
        "double",
        "single",
    ]
    with pytest.raises(TemplateError, match="no field 'missing'"):
        render_shell("echo ${item.missing}", {"item": {}})


def test_idempotency_keys_spliced_equal_the_canonical_definition() -> None:
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from engine.items.keys import IdempotencyKeys, idempotency_key
    from engine.workflow.spec import MapSpec

    spec = MapSpec.model_validate(
        {"items": [1], "agent_template": [{"run": "echo ${item}"}], "max_parallel": 3}
    )
    keys = IdempotencyKeys(spec)
    values = st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(),
        lambda inner: (
            st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
        ),
        max_leaves=8,
    )

    @settings(max_examples=200, deadline=None)
    @given(item=st.text(), value=values)
    def same(item: str, value: object) -> None:
        assert keys(item, value) == idempotency_key(spec, item, value)

    same()
