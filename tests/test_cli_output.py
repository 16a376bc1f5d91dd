"""Output as Unix users expect: a closed pipe ends quietly, tables fit a terminal and
cut nothing elsewhere, every printing command has JSON, `runs` filters, human times."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import struct
import subprocess
import termios
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from cli.render import fit, human_duration, human_time, table_lines
from engine.views.query import NAMED
from ledger import LedgerWriter
from ledger.events import (
    Event,
    ItemEnqueued,
    RunCompleted,
    RunCreated,
    RunFailed,
    RunPaused,
    RunStarted,
)
from ledger.times import rfc3339
from tests.conftest import ENGINE
from tests.engine_helpers import DEADLINE, engine_in_process, run_workflow, write_workflow

TS = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")
LONG_ERROR = (
    "validation failed: the field customer.address.postcode is not a valid postcode "
    "for the country given (see the schema of the address record)"
)
LONG_ITEM = "bad-item-with-a-rather-long-identifier-that-goes-on-and-on"


def engine(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The CLI in this process (as the real one, stdout not a terminal): fast enough to
    ask every command; what needs a real pipe or terminal runs the console script."""
    return engine_in_process("--home", str(home), *args)


def on_terminal(home: Path, *args: str, columns: int) -> tuple[int, str]:
    """Run with stdout on a terminal (a pty) ``columns`` wide; its exit code and output."""
    code, out, _err = on_terminal_with_stderr(home, *args, columns=columns)
    return code, out


def on_terminal_with_stderr(home: Path, *args: str, columns: int) -> tuple[int, str, str]:
    """stdout on a terminal (a pty) ``columns`` wide, stderr a pipe: code, stdout, stderr."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(
        [ENGINE, "--home", str(home), *args],
        stdout=slave,
        stderr=subprocess.PIPE,
        env={**os.environ, "COLUMNS": str(columns), "TERM": "dumb"},
    )
    os.close(slave)
    out = bytearray()
    try:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the command closed its terminal
                break
            if not chunk:
                break
            out.extend(chunk)
        assert proc.stderr is not None
        err = proc.stderr.read().decode()
        code = proc.wait(timeout=DEADLINE)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()
    return code, out.decode().replace("\r\n", "\n"), err


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A real run with a long item id and a long error in its dead-letter queue."""
    base = tmp_path_factory.mktemp("wide")
    wf = write_workflow(
        base,
        f"""
        name: wide
        map:
          items: [ok-1, {LONG_ITEM}]
          id: "${{item}}"
          retry: {{max_attempts: 1}}
          classify:
            - {{pattern: "validation failed", as: validation_failed}}
          agent_template:
            - run: |
                case "$ENGINE_ITEM_ID" in
                  ok-*) echo fine ;;
                  *) echo "{LONG_ERROR}" >&2; exit 2 ;;
                esac
        """,
    )
    result = run_workflow(wf, base / "home")
    assert result.exit_code == 1
    return base / "home", result.run_id


# --- a closed pipe -------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [
        ["query", "--list"],
        ["runs"],
        ["runs", "--json"],
        ["status", "latest"],
        ["tail", "latest", "--all"],
        ["replay", "latest"],
        ["dlq", "list", "latest"],
        ["query", "latest", "failures by signature"],
        ["stats", "latest"],
        ["--help"],
        ["dlq", "--help"],
    ],
)
def test_a_closed_pipe_ends_quietly_with_exit_0(wide: tuple[Path, str], args: list[str]) -> None:
    """stdout's reader is gone before anything is written (`engine ... | true`)."""
    home, _run = wide
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [ENGINE, "--home", str(home), *args],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (0, "")


@pytest.mark.parametrize(("items", "code"), [("[ok]", 0), ("[ok, bad]", 1)])
def test_a_run_whose_summary_meets_a_closed_pipe_keeps_its_exit_code(
    tmp_path: Path, items: str, code: int
) -> None:
    """`engine run wf.yml | true`: the run had ended before its summary was cut, so it
    exits as it would unpiped (0, or 1 for a failed item), quietly."""
    workflow = write_workflow(
        tmp_path,
        f"""
        name: piped
        map:
          items: {items}
          agent_template:
            - run: test "${{item}}" = ok
        """,
    )
    read, write = os.pipe()
    os.close(read)
    try:
        proc = subprocess.run(
            [ENGINE, "--home", str(tmp_path / "home"), "run", str(workflow), "--no-progress"],
            stdout=write,
            stderr=subprocess.PIPE,
            text=True,
            timeout=DEADLINE,
            check=False,
        )
    finally:
        os.close(write)
    assert (proc.returncode, proc.stderr) == (code, "")


def test_head_of_a_long_tail(tmp_path: Path) -> None:
    """`engine tail RUN --all | head -1` on a ledger far larger than a pipe's buffer."""
    writer = LedgerWriter.open(tmp_path / "runs" / "big", "big", create=True)
    writer.append_many([ItemEnqueued(item=f"item-{i:05d}", index=i) for i in range(5000)])
    writer.close()
    proc = subprocess.run(
        ["bash", "-c", f'set -o pipefail; "{ENGINE}" --home "{tmp_path}" tail big --all | head -1'],
        capture_output=True,
        text=True,
        timeout=DEADLINE,
        check=False,
    )
    assert (proc.returncode, proc.stderr) == (0, "")
    assert proc.stdout.count("\n") == 1 and "lock.acquired" in proc.stdout


# --- widths ----------------------------------------------------------------------------


def test_in_a_pipe_no_value_is_cut(wide: tuple[Path, str]) -> None:
    home, run = wide
    listed = engine(home, "dlq", "list", run)
    assert listed.returncode == 0, listed.stderr
    assert "…" not in listed.stdout
    row = next(line for line in listed.stdout.splitlines() if line.startswith(LONG_ITEM))
    assert "validation_failed" in row.split() and row.endswith(LONG_ERROR)
    tail = engine(home, "tail", run, "--type", "item.failed").stdout
    assert f"{LONG_ITEM}#1 " in tail and f"message={LONG_ERROR} " in tail
    names = engine(home, "query", "--list").stdout.splitlines()
    width = max(len(name) for name in NAMED)
    assert names == [f"{q.name:<{width}}  {q.summary}" for q in NAMED.values()]
    for name in NAMED:
        out = engine(home, "query", run, name)
        assert out.returncode == 0 and "…" not in out.stdout, (name, out.stdout)


def test_on_a_terminal_tables_fit_its_width(wide: tuple[Path, str]) -> None:
    home, run = wide
    code, out = on_terminal(home, "dlq", "list", run, columns=80)
    assert code == 0, out
    lines = out.splitlines()
    assert lines and all(len(line) <= 80 for line in lines), out
    row = next(line for line in lines if line.startswith(LONG_ITEM[:8]))
    assert row.startswith(LONG_ITEM + " ")  # the id is never cut: other columns give way
    code, out = on_terminal(home, "tail", run, "--type", "item.failed", columns=80)
    assert code == 0 and LONG_ERROR not in out and f"message={LONG_ERROR[:59]}…" in out
    code, out = on_terminal(home, "query", "--list", columns=60)
    assert code == 0
    by_name = {q.name: q.summary for q in NAMED.values()}
    cut = 0
    for line in out.splitlines():
        assert len(line) <= 60, line
        name = next(n for n in by_name if line.startswith(n + " "))
        shown = line[len(name) :].strip()
        if shown.endswith("…"):
            cut += 1
            kept = shown[:-1]
            summary = by_name[name]
            assert summary.startswith(kept) and summary[len(kept)] == " ", line  # at a word
        else:
            assert shown == by_name[name]
    assert cut, out
    for name in NAMED:
        code, out = on_terminal(home, "query", run, name, columns=80)
        assert code == 0 and all(len(line) <= 80 for line in out.splitlines()), (name, out)


def test_table_lines_and_fit() -> None:
    rows = [["a", "x" * 30], ["bb", "short"]]
    whole, hidden = table_lines(["K", "TEXT"], rows, width=None, text={"TEXT"})
    assert whole[1] == "a   " + "x" * 30 and not hidden
    fitted, _ = table_lines(["K", "TEXT"], rows, width=24, text={"TEXT"}, rule=True)
    assert all(len(line) <= 24 for line in fitted) and fitted[1].startswith("--")
    assert fitted[2].endswith("…")
    assert fit("one two three four", 16) == "one two three…"  # at a word when one is near
    assert fit("abcdefghijkl", 6) == "abcde…"


# --- JSON from every command that prints -----------------------------------------------


def test_every_printing_command_has_json(wide: tuple[Path, str], tmp_path: Path) -> None:
    home, run = wide
    documents = [
        ["status", run, "--json"],
        ["runs", "--json"],
        ["replay", run, "--json"],
        ["stats", run, "--json"],
        ["query", "--list", "--format", "json"],
        ["query", "--list", "--json"],
        ["query", run, "failures by signature", "--json"],
        ["query", run, "dlq", "--format", "json"],
        ["dlq", "list", run, "--json"],
        ["dlq", "show", run, LONG_ITEM, "--json"],
        ["audit", "verify", run, "--json"],
        ["audit", "report", run, "--format", "json"],
        ["schema"],
        ["init", str(tmp_path / "starter"), "--json"],
    ]
    for args in documents:
        proc = engine(home, *args)
        assert proc.returncode == 0, (args, proc.stderr)
        json.loads(proc.stdout)
    listed = json.loads(engine(home, "query", "--list", "--json").stdout)
    assert [q["name"] for q in listed] == list(NAMED) and all(q["summary"] for q in listed)
    assert json.loads(engine(home, "init", str(tmp_path / "s2"), "--json").stdout)["written"]
    for args in (["tail", run, "--all", "--json"], ["dlq", "export", run]):
        proc = engine(home, *args)
        assert proc.returncode == 0 and [json.loads(line) for line in proc.stdout.splitlines()]
    signature = json.loads(engine(home, "dlq", "list", run, "--json").stdout)[0]["signature"]
    acked = engine(home, "patterns", "ack", signature[:16], "--note", "fixed", "--json")
    assert acked.returncode == 0, acked.stderr
    assert json.loads(acked.stdout)["signature"] == signature


def test_dlq_purge_has_json(tmp_path: Path) -> None:
    wf = write_workflow(
        tmp_path,
        """
        name: purge
        map:
          items: [a]
          id: "${item}"
          retry: {max_attempts: 1}
          agent_template: [{run: "exit 3"}]
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    proc = engine(tmp_path / "home", "dlq", "purge", result.run_id, "--all", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"run_id": result.run_id, "purged": ["a"]}


# --- runs: --limit, --status; human times ---------------------------------------------


def _ledger(
    home: Path, run_id: str, clock: list[float], steps: list[tuple[float, Event]]
) -> LedgerWriter:
    """A run's ledger with each record at ``now - ago`` (the writer is left open)."""
    now = time.time()
    clock[0] = now - steps[0][0]
    writer = LedgerWriter.open(
        home / "runs" / run_id, run_id, create=True, clock=lambda: rfc3339(clock[0])
    )
    for ago, event in steps:
        clock[0] = now - ago
        writer.append(event)
    return writer


def _created(name: str) -> RunCreated:
    return RunCreated(workflow_name=name, workflow_path=f"{name}.yml", workflow_hash="sha256:0")


def test_runs_limit_status_and_human_times(tmp_path: Path) -> None:
    home = tmp_path / "home"
    clock = [0.0]
    started = RunStarted(pid=1, host="h")
    for run_id, steps in (
        ("old", [(3672, _created("old")), (3672, started), (3600, RunCompleted(succeeded=1))]),
        ("broke", [(600, _created("broke")), (600, started), (590, RunFailed(reason="boom"))]),
        ("gone", [(300, _created("gone")), (300, started)]),  # its engine was killed
    ):
        _ledger(home, run_id, clock, steps).close()
    held = _ledger(
        home, "held", clock, [(120, _created("held")), (120, started), (60, RunPaused())]
    )
    try:

        def ids(*args: str) -> list[str]:
            proc = engine(home, "runs", "--json", *args)
            assert proc.returncode == 0, proc.stderr
            return [r["run_id"] for r in json.loads(proc.stdout)]

        assert ids() == ["old", "broke", "gone", "held"]
        assert ids("--limit", "2") == ["gone", "held"]  # the newest two, oldest first
        assert ids("--status", "paused") == ["held"]
        assert ids("--status", "failed", "--status", "interrupted") == ["broke", "gone"]
        assert ids("--status", "completed", "--limit", "1") == ["old"]
        views = json.loads(engine(home, "runs", "--json").stdout)
        assert all(TS.fullmatch(v["started_at"]) for v in views)  # JSON keeps RFC 3339
        table = engine(home, "runs").stdout.splitlines()
        assert table[0].split() == ["RUN", "STATUS", "ITEMS", "DONE", "DEAD", "STARTED", "TOOK"]
        old = next(line for line in table if line.startswith("old "))
        assert "1h01m ago" in old and old.endswith("1m12s")
        broke = next(line for line in table if line.startswith("broke "))
        assert "10m ago" in broke and broke.endswith("10s")
        status = engine(home, "status", "old").stdout
        assert re.search(r"started   1h01m ago \(\S+\)  finished 1h00m ago  took 1m12s", status)
        bad = engine(home, "runs", "--status", "sleeping")
        assert bad.returncode == 2 and len(bad.stderr.splitlines()) == 1
        assert "Traceback" not in bad.stderr
    finally:
        held.close()


def test_dlq_list_shows_when_items_died(wide: tuple[Path, str]) -> None:
    home, run = wide
    out = engine(home, "dlq", "list", run).stdout.splitlines()
    assert out[0].split()[:7] == ["ITEM", "ATT", "ERROR", "TYPE", "SIGNATURE", "TRIAGE", "DEAD"]
    assert re.search(r"  (just now|\d+s ago|\d+m ago)  ", out[1]), out[1]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (None, "-"),
        (0.25, "250ms"),
        (4.24, "4.2s"),
        (16.5, "16.5s"),
        (9.0, "9s"),
        (72, "1m12s"),
        (3723, "1h02m"),
        (2 * 86400 + 4 * 3600, "2d04h"),
    ],
)
def test_human_duration(seconds: float | None, text: str) -> None:
    assert human_duration(seconds) == text


@pytest.mark.parametrize(
    ("ago", "text"),
    [
        (0.2, "just now"),
        (42, "42s ago"),
        (180, "3m ago"),
        (2 * 3600 + 1200, "2h20m ago"),
        (15 * 3600, "15h ago"),
        (3 * 86400, "3d ago"),
        (-5, "in 5s"),
        (40 * 86400, "2026-01-01"),
    ],
)
def test_human_time(ago: float, text: str) -> None:
    now = 1767225600.0 + 40 * 86400  # 40 days after 2026-01-01T00:00:00Z
    assert human_time(rfc3339(now - ago), now) == text


def test_human_time_of_none_and_of_text() -> None:
    show: Callable[[str | None], str] = human_time
    assert show(None) == "-" and show("not a time") == "not a time"
