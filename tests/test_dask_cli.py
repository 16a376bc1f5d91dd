"""The dask executor from the command line and the workflow: chosen, recorded, refused.

Real `engine` processes. What needs no cluster (the extra missing, a bad address,
isolation) is checked without one; a run on the cluster of tests/dask_cluster.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from engine.workflow.load import load_workflow
from ledger.reader import LedgerReader
from tests.conftest import ENGINE
from tests.dask_cluster import DaskCluster
from tests.engine_helpers import DEADLINE, write_workflow

WORKFLOW = """\
name: small
map:
  input: items.json
  agent_template:
    - run: echo "hello ${item}"
"""

# Runs the CLI in this process, then says which modules it imported.
PROBE = """\
import json, sys
blocked = sys.argv.pop(1) == "block"
if blocked:  # as if the dask extra were not installed
    sys.modules["distributed"] = None
from cli.main import main
code = 0
try:
    main()
except SystemExit as exc:
    code = exc.code
print(json.dumps({"code": code, "distributed": sys.modules.get("distributed") is not None}))
"""


def _probe(tmp_path: Path, *args: str, block: bool = False) -> tuple[dict[str, object], str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, "block" if block else "free", *args],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    return json.loads(done.stdout.splitlines()[-1]), done.stderr


def _workflow(tmp_path: Path, extra: str = "") -> Path:
    (tmp_path / "items.json").write_text(json.dumps(["a", "b"]))
    return write_workflow(tmp_path, WORKFLOW + extra)


def test_help_and_a_local_run_never_import_distributed(tmp_path: Path) -> None:
    seen, _ = _probe(tmp_path, "--help")
    assert seen == {"code": 0, "distributed": False}
    wf = _workflow(tmp_path)
    seen, stderr = _probe(tmp_path, "run", str(wf), "--no-progress")
    assert seen == {"code": 0, "distributed": False}, stderr


def test_without_the_extra_the_dask_executor_is_one_line_naming_it(tmp_path: Path) -> None:
    wf = _workflow(tmp_path)
    for executor in ("dask://127.0.0.1:9", "dask"):
        seen, stderr = _probe(tmp_path, "run", str(wf), "--executor", executor, block=True)
        assert seen["code"] == 2, stderr
        (line,) = stderr.strip().splitlines()
        assert "the dask executor needs the dask extra: pip install 'engine[dask]'" in line
    # Nothing was created: the run is refused before it starts.
    assert not (tmp_path / ".engine" / "runs").exists() or not any(
        (tmp_path / ".engine" / "runs").iterdir()
    )


def _engine(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENGINE, *args],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--executor", "dask://nohost"], "is not one of local, dask, or dask://HOST:PORT"),
        (["--executor", "spark"], "is not one of local, dask, or dask://HOST:PORT"),
        (["--executor", "local", "--workers", "2"], "--workers is for --executor dask"),
    ],
)
def test_a_bad_executor_option_is_refused(tmp_path: Path, args: list[str], says: str) -> None:
    done = _engine(tmp_path, "run", str(_workflow(tmp_path)), *args)
    assert done.returncode == 2 and says in done.stderr, done.stderr


def test_the_workflow_executor_field(tmp_path: Path) -> None:
    spec = load_workflow(_workflow(tmp_path, "executor: dask://127.0.0.1:8786\n")).spec
    assert spec.executor is not None and spec.executor.address == "dask://127.0.0.1:8786"
    wf = write_workflow(tmp_path, WORKFLOW + "executor: {address: dask, workers: 3}\n", "w2.yml")
    executor = load_workflow(wf).spec.executor
    assert executor is not None and executor.workers == 3
    for value in ("dask://x", "{address: 'dask://a b:1'}", "foo"):
        bad = write_workflow(tmp_path, WORKFLOW + f"executor: {value}\n", "bad.yml")
        done = _engine(tmp_path, "validate", str(bad))
        assert done.returncode == 2 and "bad.yml:" in done.stderr
        assert "is not one of local, dask, or dask://HOST:PORT" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1, done.stderr  # one line, one error


def test_worktree_isolation_with_dask_is_refused_in_one_line(tmp_path: Path) -> None:
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    wf = write_workflow(
        tmp_path,
        WORKFLOW.replace("map:\n", "map:\n  isolation: worktree\n"),
    )
    (tmp_path / "items.json").write_text(json.dumps(["a"]))
    done = _engine(tmp_path, "run", str(wf), "--executor", "dask://127.0.0.1:9")
    assert done.returncode == 2, done.stderr
    (line,) = done.stderr.strip().splitlines()
    assert "map.isolation: worktree runs only on the local executor" in line


def _executor_recorded(home: Path) -> str:
    (run_dir,) = (home / "runs").iterdir()
    for record in LedgerReader(run_dir / "ledger.ndjson").records():
        if record.type == "run.started":
            return str(record.data.executor)  # type: ignore[union-attr]
    raise AssertionError("no run.started")


def test_a_run_and_its_resume_on_the_cluster_from_the_command_line(
    dask_cluster: DaskCluster, tmp_path: Path
) -> None:
    wf = _workflow(tmp_path)
    done = _engine(tmp_path, "run", str(wf), "--executor", dask_cluster.address, "--run-id", "r1")
    assert done.returncode == 0, done.stderr
    assert _executor_recorded(tmp_path / ".engine") == dask_cluster.address
    # The workflow's executor: does the same; the option wins over it.
    wf2 = write_workflow(tmp_path, WORKFLOW + "executor: dask://127.0.0.1:9\n", "w2.yml")
    done = _engine(tmp_path, "--home", "h2", "run", str(wf2), "--executor", dask_cluster.address)
    assert done.returncode == 0, done.stderr
    assert _executor_recorded(tmp_path / "h2") == dask_cluster.address
    done = _engine(tmp_path, "resume", "r1", "--executor", dask_cluster.address)
    assert done.returncode == 2 and "completed" in done.stderr  # nothing left to resume


# Each attempt waits (30 s at most) until all three have started: only a cluster
# with as many slots as -j lets them all finish.
TOGETHER = """\
name: together
map:
  input: items.json
  retry: {max_attempts: 1}
  agent_template:
    - run: |
        touch "started/${item}"
        for i in $(seq 300); do [ "$(ls started | wc -l)" -ge 3 ] && exit 0; sleep 0.1; done
        exit 1
"""


def test_executor_dask_starts_a_local_cluster_with_a_slot_per_parallel_attempt(
    tmp_path: Path,
) -> None:
    pytest.importorskip("distributed", reason="the dask extra is not installed")
    (tmp_path / "started").mkdir()
    (tmp_path / "items.json").write_text(json.dumps(["a", "b", "c"]))
    wf = write_workflow(tmp_path, TOGETHER)
    done = _engine(tmp_path, "run", str(wf), "--executor", "dask", "--workers", "1", "-j", "3")
    assert done.returncode == 0, done.stderr
    assert _executor_recorded(tmp_path / ".engine") == "dask-local"
