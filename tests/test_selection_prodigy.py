"""The map's selection in both spellings: the engine's and Prodigy's.

Filters with bare fields, AND/OR/NOT in any case, ``&&``/``||``/``!``, ``=``,
``in``, ``matches`` and Prodigy's functions; ``sort_by`` with NULLS and bare
fields (nulls last by default whatever the direction, stable); ``distinct``
after filter and sort, before offset and max_items; a bad expression is one
``FILE:LINE`` line from ``engine validate``; and real runs that select so.
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.errors import ItemsError
from engine.items.filtering import compile_filter
from engine.items.ordering import distinct, parse_distinct, parse_sort, sort
from engine.items.selection import select
from engine.workflow.spec import MapSpec
from tests.engine_helpers import engine_in_process, records, run_workflow, write_workflow

DEBTS = [
    {"file": "a.rs", "severity": "high", "score": {"final": 9.5}, "tags": ["perf"], "n": 3},
    {"file": "b.rs", "severity": "low", "score": {"final": 2}, "tags": [], "n": None},
    {"file": "c.py", "severity": "critical", "score": {"final": 7}, "tags": ["sec", "perf"]},
    {"file": "d.py", "severity": "HIGH", "score": {}, "tags": ["sec"], "n": 1},
    {"file": "e.md", "severity": None, "n": 0, "done": False},
    {"file": "f.rs", "severity": "medium", "score": {"final": 5}, "n": 2, "done": True},
]


def _kept(expression: str, items: list[Any] = DEBTS) -> list[str]:
    compiled = compile_filter(expression)
    return [v["file"] for v in items if compiled(v)]


def _select(items: list[Any] = DEBTS, **kw: Any) -> list[Any]:
    spec = MapSpec.model_validate({"items": items, "agent_template": [{"run": "true"}], **kw})
    return select(spec, items)


# --- filter ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        # bare fields, and the same prefixed
        ("severity == 'high'", ["a.rs"]),
        ("item.severity == 'high'", ["a.rs"]),
        ("severity = 'high'", ["a.rs"]),
        ("score.final >= 5", ["a.rs", "c.py", "f.rs"]),
        ("item.score.final >= 5", ["a.rs", "c.py", "f.rs"]),
        ("tags[0] == 'sec'", ["c.py", "d.py"]),
        ("tags.0 == 'perf'", ["a.rs"]),
        ("item['file'] == 'b.rs'", ["b.rs"]),
        # logic, keywords in any case, and the symbols
        ("severity == 'high' || severity == 'critical'", ["a.rs", "c.py"]),
        ("severity == 'high' OR severity == 'critical'", ["a.rs", "c.py"]),
        ("severity == 'high' Or severity == 'critical'", ["a.rs", "c.py"]),
        ("score.final > 1 AND n > 1", ["a.rs", "f.rs"]),
        ("score.final > 1 and n > 1", ["a.rs", "f.rs"]),
        ("score.final > 1 && n > 1", ["a.rs", "f.rs"]),
        ("NOT (score.final > 1)", ["d.py", "e.md"]),
        ("not score.final > 1", ["d.py", "e.md"]),
        ("!(score.final > 1)", ["d.py", "e.md"]),
        ("(n == 1 OR n == 2) AND NOT file == 'd.py'", ["f.rs"]),
        ("n == 3 or n == 2 and severity == 'high'", ["a.rs"]),  # AND binds tighter
        # comparisons: numbers with numbers, strings with strings, JSON equality
        ("n < 2", ["d.py", "e.md"]),
        ("n <= 2", ["d.py", "e.md", "f.rs"]),
        ("n != 1", ["a.rs", "b.rs", "e.md", "f.rs"]),  # null is a value; c.py lacks n
        ("file > 'c'", ["c.py", "d.py", "e.md", "f.rs"]),
        ("n > 'a'", []),
        ("done == false", ["e.md"]),
        ("done == 0", []),  # false is not 0
        ("n == 0", ["e.md"]),
        ("n == 0.0", ["e.md"]),
        ("tags == ['sec', 'perf']", ["c.py"]),
        # a missing field: every comparison false, but == null
        ("severity != 'low'", ["a.rs", "c.py", "d.py", "e.md", "f.rs"]),
        ("n == null", ["b.rs", "c.py"]),
        ("n != null", ["a.rs", "d.py", "e.md", "f.rs"]),
        ("nothing != 'x'", []),
        ("nothing < 5 or nothing >= 5", []),
        # in, contains, matches (found anywhere), =~ (the whole string)
        ("severity in ['high', 'critical']", ["a.rs", "c.py"]),
        ("n in [0, 1]", ["d.py", "e.md"]),
        ("tags contains 'sec'", ["c.py", "d.py"]),
        ("file contains '.r'", ["a.rs", "b.rs", "f.rs"]),
        ("file matches '\\.py$'", ["c.py", "d.py"]),
        ("file MATCHES '^[ab]'", ["a.rs", "b.rs"]),
        ("file matches 'rs'", ["a.rs", "b.rs", "f.rs"]),
        ("file =~ /rs/", []),
        ("file =~ /.\\.rs/", ["a.rs", "b.rs", "f.rs"]),
        ("severity =~ /high/i", ["a.rs", "d.py"]),
        # Prodigy's functions
        ("matches(file, 'py$')", ["c.py", "d.py"]),
        ("search(file, 'py$')", ["c.py", "d.py"]),
        ("match(file, 'py$')", []),
        ("contains(file, 'md')", ["e.md"]),
        ("contains(tags, 'perf')", ["a.rs", "c.py"]),
        ("starts_with(file, 'a')", ["a.rs"]),
        ("ends_with(file, '.rs')", ["a.rs", "b.rs", "f.rs"]),
        ("is_null(severity)", ["e.md"]),
        ("is_null(n)", ["b.rs", "c.py"]),  # missing counts as null
        ("is_not_null(n)", ["a.rs", "d.py", "e.md", "f.rs"]),
        ("!is_null(n) && n > 0", ["a.rs", "d.py", "f.rs"]),
        ("length(tags) == 2", ["c.py"]),
        ("length(tags) > 0", ["a.rs", "c.py", "d.py"]),
        ("length(tags, 1)", ["a.rs", "d.py"]),
        ("length(file) == 4", ["a.rs", "b.rs", "c.py", "d.py", "e.md", "f.rs"]),
        ("is_number(n)", ["a.rs", "d.py", "e.md", "f.rs"]),
        ("is_string(severity)", ["a.rs", "b.rs", "c.py", "d.py", "f.rs"]),
        ("is_array(tags) and is_object(score)", ["a.rs", "b.rs", "c.py", "d.py"]),
        ("is_bool(done)", ["e.md", "f.rs"]),
        # a field alone: present, not null, not false
        ("done", ["f.rs"]),
        ("n", ["a.rs", "d.py", "e.md", "f.rs"]),
        # strings: either quote, escapes
        ('severity == "low"', ["b.rs"]),
        ("file == 'a\\u002ers'", ["a.rs"]),
        ("true", ["a.rs", "b.rs", "c.py", "d.py", "e.md", "f.rs"]),
        ("FALSE", []),
    ],
)
def test_filter_operators(expression: str, expected: list[str]) -> None:
    assert _kept(expression) == expected


def test_filter_on_items_that_are_not_objects() -> None:
    items = ["alpha", "beta", 3, None, ["x"]]
    assert [v for v in items if compile_filter("item =~ /[ab].*a/")(v)] == ["alpha", "beta"]
    assert [v for v in items if compile_filter("item > 2")(v)] == [3]
    assert [v for v in items if compile_filter("severity == 'x' or is_null(item)")(v)] == [None]
    assert [v for v in items if compile_filter("item contains 'x'")(v)] == [["x"]]


def test_patterns_read_from_the_item_run_on_re2() -> None:
    items = [
        {"s": "aaaa", "p": "a+"},
        {"s": "b", "p": "("},  # a bad pattern from the data matches nothing
        {"s": "a" * 40 + "!", "p": "(a+)+$"},  # catastrophic for backtracking: instant here
        {"s": "xa", "p": "^a"},
    ]
    assert [v["s"] for v in items if compile_filter("s matches p")(v)] == ["aaaa"]
    assert [v["s"] for v in items if compile_filter("matches(s, p) or s =~ /x./")(v)] == [
        "aaaa",
        "xa",
    ]


@pytest.mark.parametrize(
    ("expression", "reason"),
    [
        ("severity ==", "unexpected end of expression"),
        ("severity == 'high' AND", "unexpected end of expression"),
        ("severity = = 'x'", "unexpected '=' at character 12"),
        ("severity == 'high", "the string opened at character 13 is not closed"),
        ("a b", "unexpected 'b' at character 3"),
        ("frobnicate(x)", "unknown function 'frobnicate' (known: contains, "),
        ("is_null(a, b)", "is_null() takes 1 argument, not 2"),
        ("contains(a)", "contains() takes 2 arguments, not 1"),
        ("file matches '('", "matches: '(': not a valid regular expression: missing )"),
        ("matches(file, '(a)\\1')", "RE2 syntax"),
        ("file =~ /x/q", "unknown flag 'q'"),
        ("x in [y]", "a list holds only strings, numbers, true, false or null"),
        ("(" * 200 + "a" + ")" * 200, "nested more than 100 levels deep"),
        ("NOT " * 200 + "a", "nested more than 100 levels deep"),
        ("   ", "the expression is empty"),
        ("a.", "unexpected end of expression"),
        ("a.'b' == 1", "expected a field name after '.', found"),
        ("AND a", "unexpected 'AND' at character 1"),
    ],
)
def test_bad_filters_say_why(expression: str, reason: str) -> None:
    with pytest.raises(ItemsError) as caught:
        compile_filter(expression)
    message = str(caught.value)
    assert message.startswith(f"map.filter: cannot parse {expression[:80]!r}: "), message
    assert reason in message


# --- sort and distinct -----------------------------------------------------------------

PRIOS = [
    {"k": "a", "p": 2},
    {"k": "b", "p": None},
    {"k": "c", "p": 5, "g": "x"},
    {"k": "d"},
    {"k": "e", "p": 2, "g": "y"},
    {"k": "f", "p": 1, "g": "x"},
]


def _order(text: str, items: list[Any] = PRIOS) -> list[str]:
    return [v["k"] for v in sort(items, parse_sort(text))]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("p", ["f", "a", "e", "c", "b", "d"]),
        ("item.p", ["f", "a", "e", "c", "b", "d"]),
        ("p ASC", ["f", "a", "e", "c", "b", "d"]),
        ("p asc", ["f", "a", "e", "c", "b", "d"]),
        ("p DESC", ["c", "a", "e", "f", "b", "d"]),  # nulls last whatever the direction
        ("p desc nulls last", ["c", "a", "e", "f", "b", "d"]),
        ("p DESC NULLS FIRST", ["b", "d", "c", "a", "e", "f"]),
        ("p Nulls First", ["b", "d", "f", "a", "e", "c"]),
        ("p DESCENDING", ["c", "a", "e", "f", "b", "d"]),
        ("g, p DESC", ["c", "f", "e", "a", "b", "d"]),
        ("item.g DESC, item.p", ["e", "f", "c", "a", "b", "d"]),
        ("g NULLS FIRST, k DESC", ["d", "b", "a", "f", "c", "e"]),
    ],
)
def test_sort_rules(text: str, expected: list[str]) -> None:
    assert _order(text) == expected


def test_sort_is_stable_in_both_directions_and_orders_types() -> None:
    same = [{"k": str(i), "p": i % 2} for i in range(8)]
    assert _order("p DESC", same) == ["1", "3", "5", "7", "0", "2", "4", "6"]
    assert _order("p", same) == ["0", "2", "4", "6", "1", "3", "5", "7"]
    mixed = [
        {"k": k, "p": p} for k, p in [("s", "x"), ("n", 3), ("b", True), ("l", [1]), ("f", 1.5)]
    ]
    assert _order("p", mixed) == ["b", "f", "n", "s", "l"]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("p SIDEWAYS", "'SIDEWAYS' is not ASC, DESC, NULLS FIRST or NULLS LAST"),
        ("p DESC NULLS", "'NULLS' is not ASC, DESC"),
        ("p NULLS MIDDLE", "'NULLS MIDDLE' is not"),
        ("'p' DESC", "expected a field, found"),
        ("p == 1", "unexpected '=='"),
        (", ,", "names no field"),
    ],
)
def test_bad_sorts_say_why(text: str, reason: str) -> None:
    with pytest.raises(ItemsError, match=r"map\.sort_by: ") as caught:
        parse_sort(text)
    assert reason in str(caught.value)


def test_distinct_keeps_the_first_of_each_value() -> None:
    items = [
        {"k": 1, "f": "a"},
        {"k": 2, "f": "b"},
        {"k": 3, "f": "a"},
        {"k": 4},
        {"k": 5, "f": None},  # missing and null: one value
        {"k": 6, "f": {"x": 1, "y": 2}},
        {"k": 7, "f": {"y": 2, "x": 1}},  # the same object (canonical JSON)
        {"k": 8, "f": 1},
        {"k": 9, "f": True},  # true is not 1
        {"k": 10, "f": "1"},
    ]
    assert [v["k"] for v in distinct(items, parse_distinct("f"))] == [1, 2, 4, 6, 8, 9, 10]
    assert distinct(items, parse_distinct("item.f")) == distinct(items, parse_distinct("f"))
    assert [v["k"] for v in distinct(items, parse_distinct("item"))] == list(range(1, 11))
    with pytest.raises(ItemsError, match=r"map\.distinct: cannot parse 'f DESC': one field"):
        parse_distinct("f DESC")


def test_distinct_comes_after_filter_and_sort_and_before_offset_and_max_items() -> None:
    items = [
        {"id": 1, "file": "x", "p": 1},
        {"id": 2, "file": "y", "p": 9},
        {"id": 3, "file": "x", "p": 8},
        {"id": 4, "file": "z", "p": 5},
        {"id": 5, "file": "y", "p": 0},
        {"id": 6, "file": "w", "p": 7},
    ]
    ids = lambda **kw: [v["id"] for v in _select(items, **kw)]  # noqa: E731
    # sorted first (2 9, 3 8, 6 7, 4 5, 1 1, 5 0), then the first of each file
    assert ids(sort_by="p DESC", distinct="file") == [2, 3, 6, 4]
    # the filter runs before distinct: 2 and 3 are gone, so 5 and 1 hold y and x
    assert ids(filter="p < 8", sort_by="p DESC", distinct="file") == [6, 4, 1, 5]
    # offset and max_items count the distinct items
    assert ids(sort_by="p DESC", distinct="file", offset=1, max_items=2) == [3, 6]
    assert ids(distinct="file", max_items=3) == [1, 2, 4]


# --- properties ------------------------------------------------------------------------

_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.sampled_from(["a", "b", "ab"]))
_ITEMS = st.lists(st.dictionaries(st.sampled_from(["x", "y"]), _VALUES, max_size=2), max_size=12)
_ATOMS = st.sampled_from(
    ["x == 1", "y != 'a'", "x > 0", "is_null(y)", "x in [1, 2, 'a']", "y matches 'a'", "x"]
)


def _spell(words: list[str], case: int) -> str:
    styles = [str.lower, str.upper, str.title]
    keywords = ("and", "or", "not")
    return " ".join(styles[(case + i) % 3](w) if w in keywords else w for i, w in enumerate(words))


@settings(max_examples=150, deadline=None)
@given(_ITEMS, _ATOMS, _ATOMS, st.integers(0, 2))
def test_logic_laws(items: list[Any], a: str, b: str, case: int) -> None:
    fa, fb = compile_filter(a), compile_filter(b)
    both = compile_filter(_spell(["(", a, ")", "and", "(", b, ")"], case))
    either = compile_filter(_spell(["(", a, ")", "or", "(", b, ")"], case))
    neither = compile_filter(_spell(["not", "(", a, ")"], case))
    symbols = compile_filter(f"!({a}) || ({a}) && ({b})")
    for item in items:
        assert both(item) == (fa(item) and fb(item))
        assert either(item) == (fa(item) or fb(item))
        assert neither(item) == (not fa(item))
        assert symbols(item) == ((not fa(item)) or (fa(item) and fb(item)))
    bare = compile_filter(a.replace("x", "item.x").replace("y", "item.y"))
    assert [bare(i) for i in items] == [fa(i) for i in items]


@settings(max_examples=150, deadline=None)
@given(
    st.lists(st.dictionaries(st.just("p"), st.one_of(st.none(), st.integers(-3, 3))), max_size=15),
    st.booleans(),
    st.booleans(),
)
def test_sort_properties(items: list[Any], descending: bool, nulls_first: bool) -> None:
    for number, item in enumerate(items):
        item["i"] = number
    text = f"p {'DESC' if descending else 'ASC'} NULLS {'FIRST' if nulls_first else 'LAST'}"
    out = sort(items, parse_sort(text))
    assert sorted(v["i"] for v in out) == list(range(len(items)))  # a permutation
    nulls = [v for v in out if v.get("p") is None]
    values = [v for v in out if v.get("p") is not None]
    assert out == (nulls + values if nulls_first else values + nulls)
    ps = [v["p"] for v in values]
    assert ps == sorted(ps, reverse=descending)
    for group in (nulls, values):  # stable: equal keys keep the input's order
        for left, right in itertools.pairwise(group):
            if left.get("p") == right.get("p"):
                assert left["i"] < right["i"]


# --- validation and runs -----------------------------------------------------------------


def test_validate_names_the_line_of_a_bad_expression(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """\
        name: t
        map:
          items: [{a: 1}]
          filter: "a == 1 AND b =="
          sort_by: "a DESC NULLS SOMEWHERE"
          distinct: "a b"
          agent_template: [{run: echo}]
        """,
    )
    proc = engine_in_process("validate", "wf.yml", cwd=tmp_path)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    assert "wf.yml:4: map.filter: cannot parse 'a == 1 AND b ==': unexpected end of " in (
        proc.stderr
    )
    assert any(
        line.startswith("wf.yml:5: map.sort_by: cannot parse 'a DESC NULLS SOMEWHERE': ")
        for line in lines
    ), lines
    assert any(
        line.startswith("wf.yml:6: map.distinct: cannot parse 'a b': one field only")
        for line in lines
    ), lines


def test_validate_accepts_prodigy_spellings(tmp_path: Path) -> None:
    write_workflow(
        tmp_path,
        """\
        name: t
        map:
          items: [{file: a, severity: high, score: {final: 7}}, {file: b, severity: low}]
          filter: "severity == 'high' AND score.final >= 5 OR matches(file, '^z')"
          sort_by: "score.final DESC NULLS LAST, file"
          distinct: file
          agent_template: [{run: 'echo "${item.file}"'}]
        """,
    )
    proc = engine_in_process("validate", "wf.yml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


def test_a_run_selects_in_prodigys_order(tmp_path: Path) -> None:
    items = [
        {"file": "a.rs", "severity": "high", "score": 3},
        {"file": "b.rs", "severity": "LOW", "score": 9},
        {"file": "a.rs", "severity": "critical", "score": 8},
        {"file": "c.rs", "severity": "high"},
        {"file": "d.rs", "severity": "high", "score": 7},
        {"file": "b.rs", "severity": "high", "score": 1},
        {"file": "e.rs", "severity": "high", "score": 6},
    ]
    (tmp_path / "debt.json").write_text(json.dumps({"debt_items": items}))
    path = write_workflow(
        tmp_path,
        """\
        name: t
        map:
          input: debt.json
          json_path: "$.debt_items[*]"
          filter: "severity in ['high', 'critical'] AND NOT file == 'e.rs'"
          sort_by: "score DESC"
          distinct: file
          offset: 1
          max_items: 3
          agent_template:
            - run: 'echo "${item.file}"'

        """,
    )
    result = run_workflow(path, tmp_path / "home")
    assert result.status == "completed", result.reason
    # filtered: a 3, a 8, c -, d 7, b 1; sorted: a 8, d 7, a 3, b 1, c -; distinct:
    # a 8, d 7, b 1, c -; offset 1, max 3: d 7, b 1, c (no score: last)
    enqueued = records(result, "item.enqueued")
    assert [(r.data.value["file"], r.data.value.get("score")) for r in enqueued] == [
        ("d.rs", 7),
        ("b.rs", 1),
        ("c.rs", None),
    ]
    (done,) = records(result, "map.enqueued")
    assert done.data.total == 3
    assert done.data.source == "input"
    assert len(records(result, "item.succeeded")) == 3
