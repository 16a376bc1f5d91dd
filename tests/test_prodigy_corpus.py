"""Prodigy's MapReduce workflows, written as its documentation writes them, run unchanged.

Each workflow of ``tests/fixtures/prodigy/`` goes into a fresh git
repository, is validated (``engine validate``: no error, and the warnings
``expected.yml`` names, each once), then run for real (``engine run``, git
worktrees, the Prodigy command line of a stub ``claude`` on ``PATH``), and
gives the outcome Prodigy documents: the exit code, the items by status, the
reduce's lines, the prompts the agent got.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from ledger import LedgerReader, RunLock
from ledger.times import epoch
from tests.conftest import ENGINE, FIXTURES
from tests.engine_helpers import DEADLINE, engine_in_process, git, make_repo, wait_for

pytestmark = pytest.mark.usefixtures("own_git")

CORPUS = FIXTURES / "prodigy"
EXPECTED: dict[str, dict[str, Any]] = yaml.safe_load((CORPUS / "expected.yml").read_text())
STUB_BIN = CORPUS / "bin"


def test_the_corpus_is_the_expected_one() -> None:
    """Every workflow has its expected outcome, and there are at least 20 of them."""
    files = sorted(p.name for p in CORPUS.glob("*.yml") if p.name != "expected.yml")
    assert files == sorted(EXPECTED)
    assert len(files) >= 20


COVERED = {
    "mode and description": r"^mode: mapreduce$[\s\S]*^description:",
    "map.input as a command": r"input: \"find ",
    "agent_timeout_secs": r"agent_timeout_secs:",
    "timeout_config": r"timeout_config:\n\s+agent_timeout_secs:",
    "timeout_config.command_timeouts": r"command_timeouts:",
    "setup: {commands, timeout}": r"setup:\n\s+commands:[\s\S]*?\n\s+timeout:",
    "setup capture_outputs": r"capture_outputs:",
    "reduce: {commands}": r"reduce:\n\s+commands:",
    "max_parallel as ${VAR}": r"max_parallel: \$\{[A-Z_]+\}",
    "agent_timeout_secs as $VAR": r"agent_timeout_secs: \"\$[A-Z_]+\"",
    "error_policy": r"^error_policy:",
    "on_item_failure dlq": r"on_item_failure: dlq",
    "on_item_failure skip": r"on_item_failure: skip",
    "on_item_failure stop": r"on_item_failure: stop",
    "on_item_failure retry": r"on_item_failure: retry",
    "on_item_failure custom": r"on_item_failure:\n\s+custom:",
    "continue_on_failure": r"continue_on_failure: (true|false)",
    "max_failures": r"max_failures:",
    "failure_threshold": r"failure_threshold: 0\.",
    "error_collection aggregate": r"error_collection: aggregate",
    "error_collection immediate": r"error_collection: immediate",
    "error_collection batched": r"error_collection: batched:\d",
    "circuit_breaker": r"circuit_breaker:\n(\s+(failure_threshold|success_threshold|timeout|"
    r"half_open_requests): .*\n){4}",
    "retry_config": r"retry_config:\n\s+max_attempts:",
    "backoff exponential": r"exponential:",
    "backoff fibonacci": r"fibonacci:",
    "backoff linear": r"linear:",
    "backoff fixed": r"backoff: fixed",
    "jitter": r"jitter: true",
    "jitter_factor": r"jitter_factor:",
    "top-level error keys": r"^(on_item_failure|continue_on_failure|error_collection):",
    "step retry": r"^\s+retry:\n\s+attempts:",
    "step max_attempts": r"^\s+max_attempts: \d\n\s+-",
    "on_failure mapping": r"on_failure:\n\s+(claude|shell):",
    "on_failure list": r"on_failure:\n\s+- claude:",
    "on_failure max_attempts": r"on_failure:\n\s+\w+: .*\n\s+max_attempts:",
    "fail_workflow": r"fail_workflow: (true|false)",
    "capture_output true": r"capture_output: true",
    "capture_output false": r"capture_output: false",
    "capture": r"capture: [A-Z_]+",
    "capture_format": r"capture_format: number[\s\S]*capture_format: json[\s\S]*"
    r"capture_format: boolean[\s\S]*capture_format: lines[\s\S]*capture_format: string",
    "${shell.output}": r"\$\{shell\.output\}",
    "${claude.output}": r"\$\{claude\.output\}",
    "${shell.stderr}": r"\$\{shell\.stderr\}",
    "validate": r"validate:\n\s+claude:[\s\S]*result_file:[\s\S]*threshold:[\s\S]*"
    r"on_incomplete:[\s\S]*max_attempts:[\s\S]*fail_workflow:",
    "write_file": r"write_file:\n\s+path:[\s\S]*content:[\s\S]*format: json[\s\S]*"
    r"create_dirs: true",
    "write_file yaml": r"format: yaml",
    "env ${VAR} and $VAR in prompts": r"claude: .*\$[A-Z_]+.*\$\{[A-Z_]+\}",
    "env secret": r"secret: true\n\s+value:",
    "secrets mapping": r"^secrets:\n\s+[A-Z_]+:",
    "secrets as ${env:X}": r"\$\{env:[A-Z_]+\}",
    "profiles": r"^profiles:",
    "env_files": r"^env_files:",
    "bare filter fields": r"filter: \"[a-z]",
    "AND OR NOT": r"filter: .*NOT .*AND .*OR ",
    "and not": r"filter: .* and not ",
    "&&": r"filter: .*&&",
    "||": r"filter: .*\|\|",
    "matches": r"filter: .* matches ",
    "NULLS LAST": r"NULLS LAST",
    "distinct": r"distinct: ",
    "commit_required": r"commit_required: true",
    "merge": r"^merge:\n\s+commands:[\s\S]*timeout:",
    "${merge.*}": r"\$\{merge\.worktree\}[\s\S]*|\$\{merge\.source_branch\}",
    "${merge.session_id}": r"\$\{merge\.session_id\}",
    "${merge.target_branch}": r"\$\{merge\.target_branch\}",
    "${map.results}": r"\$\{map\.results\}",
    "${item_id}": r"\$\{item_id\}",
    "${map.success_rate}": r"\$\{map\.success_rate\}",
    "single quotes": r"'[^'\n]*\$\{item[^'\n]*'",
}
"""Each key of the issue's list, as the corpus writes it somewhere."""


@pytest.mark.parametrize("key", sorted(COVERED))
def test_the_corpus_covers_every_key(key: str) -> None:
    texts = [p.read_text() for p in CORPUS.glob("*.yml") if p.name != "expected.yml"]
    pattern = re.compile(COVERED[key], re.MULTILINE)
    assert any(pattern.search(text) for text in texts), f"no corpus workflow uses {key}"


class Project:
    """A repository holding one corpus workflow, and the engine run in it."""

    def __init__(self, root: Path, name: str) -> None:
        self.expected = EXPECTED[name]
        files = {"README": "a project\n", **self.expected.get("files", {})}
        self.repo = make_repo(root / "repo", files)
        self.workflow = self.repo / name
        shutil.copy(CORPUS / name, self.workflow)
        git(self.repo, "add", name)
        git(self.repo, "commit", "-q", "-m", "the workflow")
        self.home = root / "home"
        self.log = root / "claude.log"
        state = root / "state"
        state.mkdir()
        self.env = {
            **os.environ,
            "PATH": f"{STUB_BIN}{os.pathsep}{os.environ['PATH']}",
            "CLAUDE_STUB_LOG": str(self.log),
            "CLAUDE_STUB_STATE": str(state),
            **self.expected.get("env", {}),
        }

    def engine(self, *args: str, real: bool = False) -> subprocess.CompletedProcess[str]:
        """``engine ARGS`` in the repository: in this process, or (``real``) the console
        script's own process."""
        every = ["--home", str(self.home), *args]
        if not real:
            return engine_in_process(*every, cwd=self.repo, env=self.env)
        return subprocess.run(
            [ENGINE, *every],
            cwd=self.repo,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=240,
            check=False,
        )

    def prompts(self) -> list[dict[str, Any]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]


def _status(project: Project, run_id: str) -> dict[str, Any]:
    done = project.engine("status", run_id, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _most_at_once(ledger: Path) -> int:
    """The most attempts whose processes ran at once, by the ledger: each from its
    dispatch for its duration (a process starts after its dispatch is recorded, and
    its slot is taken again only after it ended, so these spans never overlap more
    than the processes did)."""
    started: dict[tuple[str, int], float] = {}
    spans: list[tuple[float, float]] = []
    for record in LedgerReader(ledger).records():
        key = (getattr(record.data, "item", ""), getattr(record.data, "attempt", 0))
        if record.type == "item.dispatched":
            started[key] = epoch(record.ts)
        elif record.type in ("item.succeeded", "item.failed") and key in started:
            spans.append((started[key], started[key] + record.data.duration))
    edges = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    most = running = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


def _run_id(project: Project) -> str:
    runs = sorted((project.home / "runs").iterdir())
    assert len(runs) == 1, runs
    return runs[0].name


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_prodigy_workflow_runs_unchanged(tmp_path: Path, name: str) -> None:
    project = Project(tmp_path, name)
    expected = project.expected
    checked = project.engine("validate", name, *expected.get("args", []))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    said = checked.stdout + checked.stderr
    for warning in expected.get("warnings", []):
        assert warning in said, f"validate does not warn of {warning}: {said}"

    real = sorted(EXPECTED).index(name) % 4 == 0  # some through the console script
    done = project.engine("run", name, "--no-progress", *expected.get("args", []), real=real)
    output = done.stdout + done.stderr
    assert done.returncode == expected.get("exit", 0), output
    for line in expected.get("output", []):
        assert line in done.stdout, f"{line!r} not in the run's output:\n{output}"
    for line in expected.get("not_output", []):
        assert line not in done.stdout, output
    for line in expected.get("stderr", []):
        assert line in done.stderr, output

    run_id = _run_id(project)
    status = _status(project, run_id)
    counts = {k: v for k, v in status["items"].items() if k != "total" and v}
    assert counts == expected["counts"], status["items"]
    ledger = project.repo / status["run_dir"] / "ledger.ndjson"
    dispatched = [
        r.data.item for r in LedgerReader(ledger).records() if r.type == "item.dispatched"
    ]
    for item, attempts in expected.get("attempts", {}).items():
        assert dispatched.count(item) == attempts, dispatched
    if "max_parallel" in expected:
        assert _most_at_once(ledger) <= expected["max_parallel"]

    prompts = project.prompts()
    for prompt in expected.get("prompts", []):
        assert prompt in [p["prompt"] for p in prompts], prompts
    assert all(p["automation"] == "true" for p in prompts), prompts
    if "agent_order" in expected:
        order = [p["prompt"].split()[1] for p in prompts]
        assert order == expected["agent_order"]
    checkouts = project.home / "worktrees"  # the user's files, which hold what they hold
    for secret in expected.get("secrets", []):
        for path in project.home.rglob("*"):
            if path.is_file() and checkouts not in path.parents:
                assert secret.encode() not in path.read_bytes(), f"{secret} written to {path}"
    if expected.get("merged_to_target"):
        log = git(project.repo, "log", "--format=%s", "main")
        assert "merge engine/" in log, log


def test_commands_run_at_the_repository_root(tmp_path: Path) -> None:
    """Prodigy runs a workflow's commands at the project's root, wherever the file is."""
    repo = make_repo(tmp_path / "repo", {"README": "a project\n", "data/items.json": '["a", "b"]'})
    (repo / "workflows").mkdir()
    (repo / "workflows" / "wf.yml").write_text(
        "name: at-root\n"
        "mode: mapreduce\n"
        "map:\n"
        "  input: data/items.json\n"
        "  agent_template:\n"
        '    - shell: "test -f README && echo ${item} > out-${item}.txt"\n'
        '    - shell: "git add out-${item}.txt && git commit -q -m ${item}"\n'
        "reduce:\n"
        '  - shell: "ls out-*.txt | wc -l | xargs echo files:"\n'
    )
    git(repo, "add", "workflows")
    git(repo, "commit", "-q", "-m", "the workflow")
    done = subprocess.run(
        [ENGINE, "--home", str(tmp_path / "home"), "run", "workflows/wf.yml", "--no-progress"],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "files: 2" in done.stdout


def _succeeded(ledger: Path) -> list[str]:
    return [r.data.item for r in LedgerReader(ledger).records() if r.type == "item.succeeded"]


def test_resume_after_sigkill_finishes_a_prodigy_run(tmp_path: Path) -> None:
    """A Prodigy run killed with SIGKILL mid-map: `engine resume` finishes it, every item
    succeeds once, its work merged once, and reduce sees them all."""
    project = Project(tmp_path, "matches-infix.yml")
    project.env["CLAUDE_STUB_SLEEP"] = "0.3"
    run_id = "killed-prodigy"
    proc = subprocess.Popen(
        [ENGINE, "--home", str(project.home), "run", "matches-infix.yml", "--run-id", run_id],
        cwd=project.repo,
        env=project.env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    ledger = project.home / "runs" / run_id / "ledger.ndjson"
    wait_for(lambda: ledger.exists() and len(_succeeded(ledger)) >= 2, what="two items done")
    proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=DEADLINE)
    assert proc.returncode == -signal.SIGKILL, err.decode()
    assert len(_succeeded(ledger)) < 5
    wait_for(lambda: RunLock(ledger.parent).probe() is None, what="the dead engine's lock")

    done = project.engine("resume", run_id, "--no-progress")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Total files processed: 5" in done.stdout
    assert sorted(_succeeded(ledger)) == [f"item_{n}" for n in range(5)]
    merges = git(
        project.repo, "log", "--format=%(trailers:key=Engine-Item,valueonly)", f"engine/{run_id}"
    ).split()
    assert sorted(merges) == [f"item_{n}" for n in range(5)]
    notes = git(project.repo, "ls-tree", "--name-only", f"engine/{run_id}", "notes/").split()
    assert len(notes) == 5


def test_dlq_retry_runs_a_prodigy_runs_dead_items_again(tmp_path: Path) -> None:
    """An agent that fails on one item: it is in the DLQ (Prodigy retries nothing unless
    asked); once the agent works, `engine dlq retry` runs it again and it succeeds."""
    project = Project(tmp_path, "matches-infix.yml")
    project.env["CLAUDE_STUB_FAIL"] = "item_2"
    done = project.engine("run", "matches-infix.yml", "--no-progress")
    assert done.returncode == 1, done.stdout + done.stderr
    run_id = _run_id(project)
    assert _status(project, run_id)["items"]["dead"] == 1
    listed = project.engine("dlq", "list", run_id, "--json")
    assert "item_2" in listed.stdout

    del project.env["CLAUDE_STUB_FAIL"]
    retried = project.engine("dlq", "retry", run_id, "--all", "--no-progress")
    assert retried.returncode == 0, retried.stdout + retried.stderr
    status = _status(project, run_id)
    assert (status["items"]["succeeded"], status["items"]["dead"]) == (5, 0)
    ledger = project.home / "runs" / run_id / "ledger.ndjson"
    dispatched = [r.data for r in LedgerReader(ledger).records() if r.type == "item.dispatched"]
    assert [d.attempt for d in dispatched if d.item == "item_2"] == [1, 2]
