"""`engine validate`: FILE:LINE: field: what (fix), exit 2; starters from `engine init` run.

Everything `engine run` would refuse is found in one pass: the schema, every
template against its phase, unsafe placements, expressions, the map's input
file and its items, the steps' programs (warnings), with `--json` too.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ENGINE, FIXTURES
from tests.engine_helpers import engine_in_process, records, run_workflow, write_workflow

BROKEN = sorted((FIXTURES / "broken").iterdir())


@pytest.mark.parametrize("path", BROKEN, ids=[p.name for p in BROKEN])
def test_broken_workflows(path: Path, snapshot) -> None:
    proc = engine_in_process("validate", path.name, cwd=path.parent)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert "Traceback" not in proc.stderr
    assert proc.stderr == snapshot


def test_valid_workflow(tmp_path: Path) -> None:
    proc = subprocess.run(
        [ENGINE, "validate", str(Path(__file__).parent.parent / "examples" / "quickstart.yml")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "workflow 'quickstart'" in proc.stdout


@pytest.mark.parametrize("template", ["map-reduce", "agent", "shell"])
def test_init_templates_run_as_written(tmp_path: Path, template: str) -> None:
    subprocess.run(
        [ENGINE, "init", "--template", template, str(tmp_path)], check=True, capture_output=True
    )
    text = (tmp_path / "workflow.yml").read_text()
    assert text.startswith("#")  # commented
    proc = subprocess.run(
        [ENGINE, "--home", str(tmp_path / "home"), "run", "workflow.yml", "--no-progress"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    again = subprocess.run(
        [ENGINE, "init", str(tmp_path)], capture_output=True, text=True, check=False
    )
    assert again.returncode == 2 and "already exists" in again.stderr


# --- everything `engine run` would refuse, in one pass ------------------------------------


def _validate(
    directory: Path, text: str, *args: str, name: str = "wf.yml"
) -> subprocess.CompletedProcess[str]:
    write_workflow(directory, text, name)
    return engine_in_process("validate", *args, name, cwd=directory)


def _lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert "Traceback" not in proc.stderr
    return proc.stderr.splitlines()


def test_filter_and_sort_are_parsed_with_the_schema_broken_elsewhere(tmp_path: Path) -> None:
    proc = _validate(
        tmp_path,
        """\
        name: t
        map:
          items: [{a: 1}]
          max_paralel: 2
          filter: "item.a >"
          sort_by: "item.a UPWARDS"
          agent_template: [{run: echo}]
        """,
    )
    assert proc.returncode == 2
    lines = _lines(proc)
    assert any(line.startswith("wf.yml:4: map.max_paralel: unknown key") for line in lines)
    assert any(line.startswith("wf.yml:5: map.filter: cannot parse 'item.a >'") for line in lines)
    assert any(line.startswith("wf.yml:6: map.sort_by: cannot parse") for line in lines)


def test_the_filter_is_applied_to_the_items_at_validation(tmp_path: Path) -> None:
    """A field that only the filtered-out items lack is no problem; the kept ones decide."""
    proc = _validate(
        tmp_path,
        """\
        name: t
        map:
          items: [{path: a, size: 5}, {size: 1}]
          filter: "item.size > 2"
          agent_template: [{run: 'echo "${item.path}"'}]
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""


@pytest.mark.parametrize(
    ("template", "phase", "expected"),
    [
        ("${map.succesful}", "reduce", "did you mean ${map.successful}?"),
        ("${claude.output}", "map", "${claude} is known only after an earlier claude step"),
        ("${claude.stderr}", "map", "${claude} is known only after an earlier claude step"),
        ("${last.stdout}", "map", "did you mean ${last.output}?"),
        ("${x|default:y}", "map", "neither a variable of the engine nor a shell parameter"),
        ("${cmd:...}", "map", "neither a variable of the engine nor a shell parameter"),
        ("${item.n:-3}", "map", 'set a shell variable first: v="${item.n}"'),
        ("${attempt.n}", "map", "${attempt} is a value, it has no fields"),
        ("${itme.n}", "map", "did you mean ${item.n}?"),
        ("${map.total}", "map", "${map} is known only in reduce"),
        ("${run.name}", "setup", "${run} has id"),
    ],
)
def test_unknown_variables_are_errors_with_the_nearest_name(
    tmp_path: Path, template: str, phase: str, expected: str
) -> None:
    step = f"{{run: 'echo \"{template}\"'}}"
    where = {"setup": f"setup: [{step}]\n", "reduce": f"reduce: [{step}]\n"}.get(phase, "")
    agent_template = f"[{{run: echo}}, {step}]" if phase == "map" else "[{run: echo}]"
    proc = _validate(
        tmp_path,
        f"name: t\n{where}map:\n  items: [{{n: 1}}]\n  agent_template: {agent_template}\n",
    )
    assert proc.returncode == 2, proc.stderr
    (line,) = _lines(proc)
    assert expected in line
    assert line.startswith("wf.yml:")


def test_a_template_that_no_program_would_substitute_is_refused(tmp_path: Path) -> None:
    """No shell reads an argv element or a step's env: ${x|...} would reach the program as is."""
    proc = _validate(
        tmp_path,
        """\
        name: t
        map:
          items: [1]
          agent_template:
            - argv: [echo, "${item|upper}"]
              env: {V: "${env.A:-b}"}
              cwd: "${item}"
        """,
    )
    assert proc.returncode == 2
    lines = _lines(proc)
    assert len(lines) == 3
    assert "argv: ${item|upper} is not a variable: it would be passed as it is" in lines[0]
    assert "env.V: ${env.A:-b} is not a variable" in lines[1]
    assert "cwd: cwd is not a template" in lines[2]


def test_shell_parameters_of_the_shell_own_still_pass(tmp_path: Path) -> None:
    proc = _validate(
        tmp_path,
        """\
        name: t
        map:
          items: [1]
          agent_template:
            - run: 'v="${item}"; echo "${v:-x}" ${#v} ${HOME:+set} ${1-none} "${v%%.*}"'
        """,
    )
    assert proc.returncode == 0, proc.stderr


def test_item_fields_are_checked_against_an_input_file(tmp_path: Path) -> None:
    (tmp_path / "items.jsonl").write_text(
        "".join(
            json.dumps({"path": f"f{i}.py", **({"owner": "x"} if i < 3 else {})}) + "\n"
            for i in range(10)
        )
    )
    text = """\
        name: t
        map:
          input: items.jsonl
          agent_template:
            - run: echo "${item.path}" "${item.owner}"
        """
    proc = _validate(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    (line,) = _lines(proc)
    assert line.startswith("wf.yml:5: map.agent_template[0].run: warning: ${item.owner}: 7 of 10")
    proc = _validate(tmp_path, text.replace("item.path", "item.paht"))
    assert proc.returncode == 2
    assert "${item.paht}: no item has it (did you mean ${item.path}?" in proc.stderr


def test_an_id_field_some_item_lacks_is_an_error(tmp_path: Path) -> None:
    proc = _validate(
        tmp_path,
        """\
        name: t
        map:
          items: [{path: a}, {name: b}]
          id: "${item.path}"
          agent_template: [{run: 'echo "${item.name}"'}]
        """,
    )
    assert proc.returncode == 2
    lines = _lines(proc)
    assert lines[0].startswith("wf.yml:4: map.id: item 1: ${item.path}")
    assert "warning: ${item.name}: 1 of 2 items lack it, at index 0" in lines[1]


def test_a_command_source_is_not_run_at_validation(tmp_path: Path) -> None:
    proc = _validate(
        tmp_path,
        """\
        name: t
        map:
          command: "touch ran && echo '{\\"a\\": 1}'"
          agent_template: [{run: 'echo "${item.zzz}"'}]
        """,
    )
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "ran").exists()


def test_the_items_are_read_within_the_limits(tmp_path: Path) -> None:
    (tmp_path / "items.json").write_text(json.dumps(list(range(50))))
    write_workflow(
        tmp_path, "name: t\nmap:\n  input: items.json\n  agent_template: [{run: echo}]\n"
    )
    proc = subprocess.run(
        [ENGINE, "validate", "wf.yml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
        env={**os.environ, "ENGINE_MAX_ITEMS": "10"},
    )
    assert proc.returncode == 2
    assert "more than 10 items" in proc.stderr


@pytest.mark.parametrize(
    ("setup", "code", "expected"),
    [
        ("", 2, "wf.yml:3: map.input: no file 'files.json' (check the path"),
        ("setup: [{run: 'echo [1] > files.json'}]\n", 0, ""),
        ("setup: [{run: 'echo hi'}]\n", 0, "warning: no file 'files.json' yet"),
    ],
    ids=["no-setup", "setup-makes-it", "setup-does-not-mention-it"],
)
def test_a_missing_input_file(tmp_path: Path, setup: str, code: int, expected: str) -> None:
    proc = _validate(
        tmp_path, f"name: t\n{setup}map:\n  input: files.json\n  agent_template: [{{run: echo}}]\n"
    )
    assert proc.returncode == code, proc.stderr
    assert expected in proc.stderr


def test_an_input_that_reads_like_a_command_points_to_map_command(tmp_path: Path) -> None:
    proc = _validate(
        tmp_path, "name: t\nmap:\n  input: echo a b c\n  agent_template: [{run: echo}]\n"
    )
    assert proc.returncode == 2
    assert "it reads like a command" in proc.stderr
    assert "write map.command: echo a b c" in proc.stderr


@pytest.mark.parametrize(
    ("key", "where", "expected"),
    [
        ("agent_timeout_secs: 600", "map", "did you mean map.timeout?"),
        ("working_dir: src", "step", "did you mean 'cwd'?"),
        ("capture: out", "step", "did you mean 'capture_output'?"),
        ("max_concurrency: 3", "map", "did you mean map.max_parallel?"),
        ("max_parallel: 3", "top", "did you mean map.max_parallel?"),
    ],
)
def test_other_tools_spellings_get_our_name_and_are_not_read(
    tmp_path: Path, key: str, where: str, expected: str
) -> None:
    top = f"{key}\n" if where == "top" else ""
    in_map = f"  {key}\n" if where == "map" else ""
    in_step = f"\n      {key}" if where == "step" else ""
    proc = _validate(
        tmp_path,
        f"name: t\n{top}map:\n  items: [1]\n{in_map}  agent_template:\n    - run: echo{in_step}\n",
    )
    assert proc.returncode == 2
    (line,) = _lines(proc)
    assert "unknown key" in line and expected in line


def test_a_program_not_on_path_is_a_warning(tmp_path: Path) -> None:
    proc = _validate(
        tmp_path,
        """\
        name: t
        map:
          items: [1]
          agent_template:
            - argv: [no-such-program-i11, x]
            - run: cd . && no-such-program-i11    # not the first word: not looked up
            - run: ./made-by-an-earlier-step
        """,
    )
    assert proc.returncode == 0, proc.stderr
    (line,) = _lines(proc)
    assert line.startswith("wf.yml:5: map.agent_template[0].argv: warning: program ")
    assert "'no-such-program-i11' is not found on PATH" in line
    assert "engine run --allow-missing" in line


def test_the_safe_form_of_arithmetic_validates_and_keeps_values_out_of_code(
    tmp_path: Path,
) -> None:
    """The form the refusal names: numbers compute; anything else stops, and is never run."""
    marker = tmp_path / "pwned"
    items = [{"n": "41"}, {"n": f"a[$(touch {marker})]"}]
    path = write_workflow(
        tmp_path,
        f"""\
        name: t
        map:
          items: {json.dumps(items)}
          retry: {{max_attempts: 1}}
          agent_template:
            - run: >-
                n="${{item.n}}"; case $n in ''|*[!0-9]*) exit 2;; esac; echo $((n + 1))
              output: text
            - run: >-
                bash -c 'n="$1"; case $n in ""|*[!0-9]*) exit 2;; esac; echo $((n + 1))' _
                "${{item.n}}"
              output: text
        """,
    )
    proc = subprocess.run(
        [ENGINE, "validate", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = run_workflow(path, tmp_path / "home")
    assert result.projections.items.counts["succeeded"] == 1
    assert result.projections.items.counts["dead"] == 1
    (done,) = records(result, "item.succeeded")
    assert done.data.result == "42"
    assert not marker.exists()


def test_validate_json(tmp_path: Path) -> None:
    proc = _validate(
        tmp_path,
        """\
        name: t
        map:
          items: [{a: 1}, {b: 2}]
          agent_template: [{run: 'echo "${item.a}" "${map.total}"'}]
        """,
        "--json",
    )
    assert proc.returncode == 2
    report = json.loads(proc.stdout)
    assert report["ok"] is False and report["file"] == "wf.yml" and report["workflow"] == "t"
    assert report["errors"] == [
        {
            "file": "wf.yml",
            "line": 4,
            "field": "map.agent_template[0].run",
            "message": "unknown variable ${map.total} here",
            "hint": "known: attempt, env, item, item_id, item_index, item_total, run; "
            "${map} is known only in reduce, merge",
        }
    ]
    (warning,) = report["warnings"]
    assert warning["message"].startswith("${item.a}: 1 of 2 items lack it")
    assert warning["hint"].startswith("filter them out")
    good = _validate(
        tmp_path, "name: t\nmap:\n  items: [1]\n  agent_template: [{run: echo}]\n", "--json"
    )
    assert good.returncode == 0
    assert json.loads(good.stdout) == {
        "ok": True,
        "file": "wf.yml",
        "workflow": "t",
        "errors": [],
        "warnings": [],
    }
    broken = subprocess.run(
        [ENGINE, "validate", "--json", "nothing.yml"],
        capture_output=True,
        text=True,
        check=False,
        cwd=tmp_path,
    )
    assert broken.returncode == 2
    (error,) = json.loads(broken.stdout)["errors"]
    assert error["file"] == "nothing.yml" and error["line"] is None
    assert "cannot read the workflow file" in error["message"]
    syntax = _validate(tmp_path, "name: [\n", "--json")
    assert syntax.returncode == 2
    assert json.loads(syntax.stdout)["errors"][0]["message"].startswith("not valid YAML")


def test_every_declared_field_is_what_a_run_gives(tmp_path: Path) -> None:
    """Validation accepts exactly the fields the contexts hold: each renders in a real run."""
    from engine.workflow.variables import VARIABLES

    def uses(*roots: str) -> str:
        names = [
            f"{v.root}.{f}" for v in VARIABLES if v.root in roots for f in sorted(v.fields or ())
        ]
        return " ".join(f'"${{{n}}}"' for n in names)

    path = write_workflow(
        tmp_path,
        f"""\
        name: fields
        agent: {{command: echo}}
        map:
          items: [1]
          retry: {{max_attempts: 1}}
          on_item_failure: ignore
          agent_template:
            - run: echo first
            - claude: hello
            - run: echo {uses("last", "shell", "claude", "run")} > item.out
            - run: exit 3
              on_failure:
                - run: echo {uses("last", "shell", "claude")} > handler.out
        reduce:
          - run: echo {uses("map", "run")} > reduce.out
        """,
    )
    proc = subprocess.run(
        [ENGINE, "validate", str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    result = run_workflow(path, tmp_path / "home")
    assert result.status == "completed", result.reason
    # last: the claude step's exit code, output, stderr; shell: the first step's; run.id
    assert (tmp_path / "item.out").read_text().startswith("0 hello  0 first  0 hello fields-")
    assert (tmp_path / "handler.out").read_text() == "3   3   0 hello\n"
    reduced = (tmp_path / "reduce.out").read_text()
    assert '"status":{"Failed":' in reduced  # map.agent_results, its failed item included
    assert " 0.00 0.0 0 1 fields-" in reduced  # success_percent, success_rate, counts, run.id


def test_the_previous_step_is_known_only_where_one_ran(tmp_path: Path) -> None:
    """A setup or reduce step runs alone, and an item's first step has nothing before it."""
    proc = _validate(
        tmp_path,
        """\
        name: t
        setup:
          - run: echo a
          - run: echo "${last.output}"
        map:
          items: [1]
          agent_template:
            - run: echo "${last.output}"
              on_failure: [{run: 'echo "${last.exit_code}"'}]
        reduce:
          - run: "false"
            on_failure: [{run: 'echo "${shell.output}"'}]
        """,
    )
    assert proc.returncode == 2
    lines = _lines(proc)
    assert [line.split(":")[1] for line in lines] == ["4", "8"]
    assert all("${last} is known only after an earlier step of the same item" in x for x in lines)
