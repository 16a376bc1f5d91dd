"""The CLI as a reviewer found it: identifiers never cut and left-out columns named,
hashes whole in a pipe, one unknown-item wording, the progress interval read only when
used, engine time as `took`, control commands' exits, one JSON-on-error rule, stats
labels, --debug only as parsed."""

from __future__ import annotations

import json
import os
import pty
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from cli.progress import Progress, awaited
from cli.render import table_lines
from ledger import LedgerWriter
from ledger.events import ItemEnqueued, RunAborted, RunCreated, RunStarted
from ledger.times import rfc3339
from projections.replay import replay
from tests.conftest import ENGINE
from tests.engine_helpers import DEADLINE, run_workflow, write_workflow
from tests.test_cli_output import on_terminal, on_terminal_with_stderr

ITEMS = [f"src/module_{name}_with_a_long_path_{i}.py" for i, name in enumerate("abc")]
ERROR = "the review step could not parse the module and gave up after reading it whole"


def engine(home: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, ["--home", str(home), *args], env=env)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def dead(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A run whose items, alike but for their ends, all went to the dead-letter queue."""
    base = tmp_path_factory.mktemp("dead")
    wf = write_workflow(
        base,
        f"""
        name: dead
        map:
          items: {json.dumps(ITEMS)}
          id: "${{item}}"
          retry: {{max_attempts: 2, initial: 10ms, max: 10ms, jitter: false}}
          classify:
            - {{pattern: "could not parse", as: api_error}}
          agent_template:
            - run: echo "{ERROR}" >&2; exit 1
        """,
    )
    result = run_workflow(wf, base / "home")
    assert result.exit_code == 1
    return base / "home", result.run_id


# --- 1: identifiers never shrink; left-out columns are named --------------------------


def test_dlq_list_at_80_columns_keeps_every_item_id_whole(dead: tuple[Path, str]) -> None:
    home, run = dead
    code, out = on_terminal(home, "dlq", "list", run, columns=80)
    assert code == 0, out
    lines = out.splitlines()
    assert all(len(line) <= 80 for line in lines), out
    for item in ITEMS:
        assert any(line.startswith(item + " ") for line in lines), out  # whole, and told apart


def test_a_narrow_terminal_names_the_columns_it_left_out(dead: tuple[Path, str]) -> None:
    home, run = dead
    code, out, err = on_terminal_with_stderr(home, "dlq", "list", run, columns=60)
    assert code == 0, err
    assert all(any(line.startswith(item) for line in out.splitlines()) for item in ITEMS), out
    assert re.fullmatch(r"engine: not shown \(too narrow\): [A-Z ,]+, which --json has\n", err)
    code, out, err = on_terminal_with_stderr(home, "runs", columns=30)
    assert code == 0 and run in out
    assert err.startswith("engine: not shown (too narrow): ") and "which --json has" in err


def test_table_lines_never_cut_a_kept_column() -> None:
    rows = [["id-" + "x" * 30, "ok", "a message " * 5]]
    lines, hidden = table_lines(
        ["ID", "S", "MSG"], rows, width=50, text={"MSG"}, keep={"ID"}, header=False
    )
    assert lines[0].startswith(rows[0][0] + "  ") and not hidden and len(lines[0]) <= 50
    lines, hidden = table_lines(["ID", "S", "MSG"], rows, width=40, keep={"ID"})
    assert hidden == ["MSG"] and rows[0][0] in lines[1]


# --- 2: hashes whole in a pipe; one unknown-item wording -------------------------------


def test_in_a_pipe_hashes_and_keys_are_whole(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path, "name: h\nmap:\n  items: [1, 2]\n  agent_template: [{run: 'true'}]\n"
    )
    run = run_workflow(wf, tmp_path / "home").run_id
    code, out, _ = engine(tmp_path / "home", "tail", run, "--all")
    assert code == 0 and "…" not in out
    assert re.search(r"item\.enqueued +sha256:[0-9a-f]{64} ", out), out
    assert re.search(r"workflow_hash=sha256:[0-9a-f]{64}\b", out)
    assert re.search(r"idempotency_key=ik:[0-9a-f]{64}\b", out) or re.search(
        r"ik:[0-9a-f]{64}", out
    )
    _, term = on_terminal(tmp_path / "home", "tail", run, "--all", columns=200)
    assert re.search(r"sha256:[0-9a-f]{12}…", term)  # a terminal may shorten them


def test_dlq_show_and_logs_say_an_unknown_item_alike(dead: tuple[Path, str]) -> None:
    home, run = dead
    said = {}
    for command in ("dlq", "show"), ("logs",):
        code, out, err = engine(home, *command, run, "src/module_a")
        assert code == 2 and out == "", err
        said[command] = err
    assert said[("dlq", "show")] == said[("logs",)]
    assert said[("logs",)] == (
        f"engine: error: run {run} has no item 'src/module_a' (did you mean '{ITEMS[0]}'?)\n"
    )


# --- 3: ENGINE_PROGRESS_INTERVAL, read only by the plain line --------------------------


def test_a_bad_interval_refuses_only_the_plain_line(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path, "name: p\nmap:\n  items: [1]\n  agent_template: [{run: 'true'}]\n"
    )
    env = {**os.environ, "ENGINE_PROGRESS_INTERVAL": "soon"}
    home = str(tmp_path / "home")
    quiet = subprocess.run(
        [ENGINE, "--home", home, "run", str(wf), "--no-progress"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=DEADLINE,
    )
    assert quiet.returncode == 0, quiet.stderr
    master, slave = pty.openpty()
    live = subprocess.run(
        [ENGINE, "--home", home, "run", str(wf)],
        stdout=subprocess.DEVNULL,
        stderr=slave,
        env=env,
        check=False,
        timeout=DEADLINE,
    )
    os.close(slave)
    os.close(master)
    assert live.returncode == 0
    over = subprocess.run(
        [ENGINE, "--home", home, "run", str(wf)],
        capture_output=True,
        text=True,
        check=False,
        timeout=DEADLINE,
        env={**os.environ, "ENGINE_PROGRESS_INTERVAL": "1e9"},
    )
    assert over.returncode == 2
    assert over.stderr.count("\n") == 1 and "over the cap of 86400 seconds" in over.stderr


# --- 4: took is the engines' time ------------------------------------------------------


def _clock(times: list[int]) -> Callable[[], str]:
    pending = iter(times)
    return lambda: rfc3339(1_800_000_000 + next(pending))


def test_took_is_engine_time_in_status_and_runs(tmp_path: Path) -> None:
    home = tmp_path / "home"
    created = RunCreated(workflow_name="w", workflow_path="w.yml", workflow_hash="sha256:0")
    # interrupted: started long ago, its engine killed 10 s in; nobody holds it
    with LedgerWriter.open(
        home / "runs" / "cut", "cut", create=True, clock=_clock([0, 0, 10])
    ) as w:
        w.append(created)
        w.append_many([RunStarted(pid=1, host="h"), ItemEnqueued(item="a", index=0)])
    # two sessions of 10 s and 5 s, a day apart
    run_dir = home / "runs" / "two"
    with LedgerWriter.open(run_dir, "two", create=True, clock=_clock([0, 0, 10])) as w:
        w.append(created)
        w.append_many([RunStarted(pid=1, host="h"), RunAborted(reason="stop")])
    with LedgerWriter.open(run_dir, "two", clock=_clock([86400, 86405])) as w:
        w.append(RunAborted(reason="again"))
    for run, took in (("cut", 10.0), ("two", 15.0)):
        code, out, _ = engine(home, "status", run, "--json")
        assert code == 0 and json.loads(out)["took_s"] == took
        assert f"took {took:g}s" in engine(home, "status", run)[1]
    code, out, _ = engine(home, "runs")
    rows = {line.split()[0]: line.split()[-1] for line in out.splitlines()[1:]}
    assert rows == {"cut": "10s", "two": "15s"}, out


# --- 5 and 7: control commands' exits, JSON only on success ----------------------------


def test_cancel_of_an_aborted_run_is_already_so_and_errors_print_no_json(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with LedgerWriter.open(home / "runs" / "r", "r", create=True) as w:
        w.append(RunCreated(workflow_name="w", workflow_path="w.yml", workflow_hash="sha256:0"))
        w.append_many([RunStarted(pid=1, host="h"), RunAborted(reason="x")])
    code, out, err = engine(home, "cancel", "r", "--json")
    answer = json.loads(out)
    assert code == 0 and answer["already"] is True and answer["confirmed"] is True, err
    assert "aborted already" in answer["message"]
    code, out, err = engine(home, "pause", "r", "--json")
    assert (code, out) == (2, "") and err.count("\n") == 1 and "not running" in err
    for name in ("pause", "unpause", "cancel"):
        helped = engine(home, name, "--help")[1]
        assert "2 if" in helped and "before the engine takes the request" in " ".join(
            helped.split()
        )


# --- 6: one count, both lines ----------------------------------------------------------


def test_both_progress_lines_count_alike(dead: tuple[Path, str]) -> None:
    home, run = dead
    p = replay(home / "runs" / run / "ledger.ndjson")
    progress = Progress(None, mode="plain", clock=lambda: 100.0)  # type: ignore[arg-type]
    progress.eta.started = 90.0
    plain = progress.plain_line(p)
    assert plain.startswith(f"engine: {len(ITEMS)}/{len(ITEMS)} done · {len(ITEMS)} failed"), plain
    from rich.console import Console

    with open(os.devnull, "w") as sink:
        progress.console = Console(width=200, file=sink)
        live = progress.render(p).renderables[0].plain  # type: ignore[attr-defined]
    n = len(ITEMS)
    assert live.startswith(f"{n}/{n} done  ok 0  failed {n} (dead {n})"), live
    assert awaited("map:\n  command: ls\n") == "map.command to list the items"
    assert awaited("setup: [{run: x}]\nmap:\n  input: f.json\n") == (
        "the setup steps, then the items of map.input"
    )


# --- 8: stats labels and durations -----------------------------------------------------


def test_stats_and_query_show_durations_alike(dead: tuple[Path, str]) -> None:
    home, run = dead
    out = engine(home, "stats", run)[1]
    labels = [line.split()[0] for line in out.splitlines()]
    assert (
        "wall" in labels
        and "busy" in labels
        and not {"wall_s", "busy_s", "backoff_s"} & set(labels)
    )
    assert "wall_s" in json.loads(engine(home, "stats", run, "--json")[1])
    table = engine(home, "query", run, "retries")[1]
    delays = [line.split()[3] for line in table.splitlines()[2:-1]]
    assert delays and all(re.fullmatch(r"\d+ms|[\d.]+s", d) for d in delays), table


# --- 9: --debug as click parsed it -----------------------------------------------------


def test_a_literal_debug_after_double_dash_is_an_argument(tmp_path: Path) -> None:
    home = str(tmp_path / "home")
    literal = subprocess.run(
        [ENGINE, "--home", home, "query", "--", "nope", "--debug"],
        capture_output=True,
        text=True,
        check=False,
        timeout=DEADLINE,
    )
    assert literal.returncode == 2 and "Traceback" not in literal.stderr, literal.stderr
    flag = subprocess.run(
        [ENGINE, "--home", home, "query", "nope", "x", "--debug"],
        capture_output=True,
        text=True,
        check=False,
        timeout=DEADLINE,
    )
    assert flag.returncode == 2 and "Traceback" in flag.stderr
    assert sys.executable  # the console script runs under this interpreter's venv
