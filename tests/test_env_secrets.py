"""A secret ``env`` entry (``{value: ..., secret: true}``): used by commands, recorded nowhere.

Real engines (subprocesses) run a workflow whose ``env`` holds a secret the
commands print to stdout, stderr and their JSON result. The command sees the
value; no file under the home (the run directory with its ledger, logs,
frozen workflow and snapshot; the content store) holds it in any form. The
run's copy of the workflow has ``***`` in its place, and the recorded hash
is that copy's. An engine killed (SIGKILL) mid-run is resumed: with the
workflow file still there (the value comes from it), with the file gone and
the variable exported (from the environment), and, with neither, refused in
one line that says ``export NAME=...``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets as _secrets
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from engine.errors import ResumeRefused
from engine.run import RunOptions, resume_run
from engine.workflow.environment import masked_text
from engine.workflow.reading import load_yaml
from engine.workflow.spec import Workflow
from ledger import LedgerReader
from ledger.events import RunCreated
from tests.conftest import ENGINE
from tests.engine_helpers import DEADLINE, ledger_has, run_workflow, wait_for
from tests.test_adversarial_secrets import Leaks

AGENT = r"""
import json, os, sys, time
n = int(sys.argv[1])
token = os.environ.get("API_TOKEN", "<unset>")
name = os.path.join("seen", f"{n}-{os.environ['ENGINE_ATTEMPT']}")
with open(name + ".tmp", "w") as f:  # whole or not at all: the engine may be killed
    f.write(token)
os.replace(name + ".tmp", name)
print(f"token={token}", file=sys.stderr, flush=True)
if n > 0:  # items after the first wait until the test lets them finish
    deadline = time.monotonic() + 120
    while not os.path.exists("release") and time.monotonic() < deadline:
        time.sleep(0.02)
print(json.dumps({"n": n, "token": token, "plain": os.environ["PLAIN"]}))
"""

WORKFLOW = """
name: envsecret
env:
  API_TOKEN: {{value: {secret}, secret: true}}
  PLAIN: visible
map:
  items: [{{n: 0}}, {{n: 1}}, {{n: 2}}, {{n: 3}}]
  id: "i${{item.n}}"
  max_parallel: 2
  agent_template:
    - argv: ["{py}", agent.py, "${{item.n}}"]
      output: json
"""


def _engine(
    home: Path, *args: str, cwd: Path, env: dict[str, str]
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ENGINE, "--home", str(home), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=env,
        timeout=DEADLINE * 2,
        check=False,
    )


@pytest.fixture
def work(tmp_path: Path) -> tuple[Path, Path, str, dict[str, str]]:
    secret = f"tok'en\"-{_secrets.token_hex(6)}-ü"
    work = tmp_path / "work"
    (work / "seen").mkdir(parents=True)
    (work / "agent.py").write_text(AGENT)
    (work / "wf.yml").write_text(WORKFLOW.format(secret=json.dumps(secret), py=sys.executable))
    env = {k: v for k, v in os.environ.items() if k != "API_TOKEN"}
    return work, tmp_path / "home", secret, env


def _created(run_dir: Path) -> RunCreated:
    for record in LedgerReader(run_dir / "ledger.ndjson").records():
        if isinstance(record.data, RunCreated):
            return record.data
    raise AssertionError("no run.created")


def _no_trace(home: Path, secret: str) -> None:
    leaks = Leaks({"API_TOKEN": secret})
    leaks.scan_tree(home)
    assert leaks.files >= 10
    assert not leaks.found, leaks.found


def _seen(work: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in (work / "seen").iterdir() if p.suffix != ".tmp"}


def test_a_secret_env_value_reaches_the_command_and_is_recorded_nowhere(
    work: tuple[Path, Path, str, dict[str, str]],
) -> None:
    path, home, secret, env = work
    (path / "release").write_text("")
    done = _engine(home, "run", "wf.yml", "--run-id", "s1", "--no-progress", cwd=path, env=env)
    assert done.returncode == 0, done.stderr
    assert set(_seen(path).values()) == {secret}  # every attempt saw the value
    assert secret not in done.stdout + done.stderr
    run_dir = home / "runs" / "s1"
    logs = [p.read_bytes() for p in run_dir.rglob("*stderr*") if p.is_file()]
    assert len(logs) == 4 and all(b"token=***" in log for log in logs)  # masked, not dropped
    frozen = (run_dir / "workflow.yml").read_text()
    assert 'API_TOKEN: {value: "***", secret: true}' in frozen
    assert "PLAIN: visible" in frozen  # the rest as written
    created = _created(run_dir)
    assert created.workflow == frozen
    digest = hashlib.sha256(frozen.encode()).hexdigest()
    assert created.workflow_hash == f"sha256:{digest}"  # the hash is the kept copy's
    verify = _engine(home, "audit", "verify", "s1", cwd=path, env=env)
    status = _engine(home, "status", "s1", "--json", cwd=path, env=env)
    results = _engine(home, "query", "s1", "--sql", "SELECT * FROM events", cwd=path, env=env)
    for shown in (verify, status, results):
        assert shown.returncode == 0 and secret not in shown.stdout
    _no_trace(home, secret)


def _killed_mid_run(path: Path, home: Path, env: dict[str, str], run_id: str) -> None:
    """Start the run, let the first item succeed and two more start, then SIGKILL the engine."""
    proc = subprocess.Popen(
        [ENGINE, "--home", str(home), "run", "wf.yml", "--run-id", run_id, "--no-progress"],
        cwd=path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        ledger = home / "runs" / run_id / "ledger.ndjson"
        wait_for(
            lambda: (
                ledger_has(ledger, "item.succeeded") and ledger_has(ledger, "item.dispatched", 3)
            ),
            what="the first item to succeed and two more to start",
        )
    finally:
        proc.kill()
        proc.wait(timeout=DEADLINE)
    assert not ledger_has(home / "runs" / run_id / "ledger.ndjson", "run.completed")
    (path / "release").write_text("")


def test_resume_after_sigkill_takes_the_secret_from_the_environment_or_refuses(
    work: tuple[Path, Path, str, dict[str, str]],
) -> None:
    path, home, secret, env = work
    _killed_mid_run(path, home, env, "s2")
    moved = path.parent / "elsewhere.yml"
    shutil.move(path / "wf.yml", moved)  # the workflow file is gone: only the frozen copy

    refused = _engine(home, "resume", "s2", "--no-progress", cwd=path, env=env)
    assert refused.returncode == 2, refused.stderr
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 1 and "export API_TOKEN=VALUE" in lines[0], refused.stderr
    assert "Traceback" not in refused.stderr

    rotated = secret + "-2"
    done = _engine(
        home, "resume", "s2", "--no-progress", cwd=path, env={**env, "API_TOKEN": rotated}
    )
    assert done.returncode == 0, done.stderr
    last = _last_attempts(_seen(path))
    assert last[0] == secret  # succeeded before the kill, not run again
    assert [last[n] for n in (1, 2, 3)] == [rotated] * 3  # run by the resume
    _no_trace(home, secret)
    _no_trace(home, rotated)


def _last_attempts(seen: dict[str, str]) -> dict[int, str]:
    """What each item's last attempt saw."""
    out: dict[int, tuple[int, str]] = {}
    for name, value in seen.items():
        n, attempt = (int(x) for x in name.split("-"))
        if n not in out or out[n][0] < attempt:
            out[n] = (attempt, value)
    return {n: value for n, (_, value) in out.items()}


def test_resume_after_sigkill_takes_the_secret_from_the_unchanged_workflow_file(
    work: tuple[Path, Path, str, dict[str, str]],
) -> None:
    path, home, secret, env = work
    _killed_mid_run(path, home, env, "s3")
    done = _engine(home, "resume", "s3", "--no-progress", cwd=path, env=env)
    assert done.returncode == 0, done.stderr
    assert set(_seen(path).values()) == {secret}
    assert sorted(_last_attempts(_seen(path))) == [0, 1, 2, 3]
    _no_trace(home, secret)


def _masked(text: str) -> str:
    return masked_text(text, Workflow.model_validate(load_yaml(text)))


def test_the_kept_copy_masks_each_secret_entry_and_keeps_the_rest() -> None:
    text = (
        "name: m  # keep this comment\n"
        "secrets: [LISTED]\n"
        "env:\n"
        "  A: {value: 'alpha-secret', secret: true}\n"
        "  B:\n"
        "    value: |\n"
        "      block-secret\n"
        "      second line\n"
        "    secret: true\n"
        "  LISTED: listed-secret   # a plain entry whose name secrets lists\n"
        "  C: {value: not-secret, secret: false}\n"
        "profiles:\n"
        "  dev: {description: shown, D: {value: dev-secret, secret: true}, E: shown-too}\n"
        "setup:\n"
        "  - run: echo alpha-secret  # the value elsewhere is masked as well\n"
    )
    masked = _masked(text)
    for secret in ("alpha-secret", "block-secret", "listed-secret", "dev-secret"):
        assert secret not in masked
    data = load_yaml(masked)
    assert data["env"] == {
        "A": {"value": "***", "secret": True},
        "B": {"value": "***", "secret": True},
        "LISTED": "***",
        "C": {"value": "not-secret", "secret": False},
    }
    assert data["profiles"]["dev"] == {
        "description": "shown",
        "D": {"value": "***", "secret": True},
        "E": "shown-too",
    }
    assert "# keep this comment" in masked and data["setup"] == [{"run": "echo ***"}]
    assert _masked(masked) == masked  # the copy is its own copy: the same hash
    assert _masked("name: p\nenv: {A: a}\nsetup: [{run: 'true'}]\n") == (
        "name: p\nenv: {A: a}\nsetup: [{run: 'true'}]\n"  # no secret: the file as it is
    )


def test_a_json_workflow_is_masked_as_json() -> None:
    text = json.dumps(
        {
            "name": "j",
            "env": {"T": {"value": "json-secret", "secret": True}},
            "setup": [{"run": "true"}],
        },
        indent=2,
    )
    masked = _masked(text)
    assert json.loads(masked)["env"] == {"T": {"value": "***", "secret": True}}


RESUMABLE = """
name: changes
env:
  TOKEN: {{value: {token}, secret: true}}
map:
  items: [{{n: 0}}, {{n: 1}}]
  max_parallel: {parallel}
  retry: {{max_attempts: 1}}
  agent_template:
    - run: 'test -e "ok-${{item.n}}" && echo "$TOKEN" > "seen-${{item.n}}"'
"""


def test_a_changed_secret_value_alone_is_the_same_workflow(tmp_path: Path) -> None:
    wf = tmp_path / "wf.yml"
    wf.write_text(RESUMABLE.format(token="first-token-123", parallel=1))
    (tmp_path / "ok-0").write_text("")
    result = run_workflow(wf, tmp_path / "home", run_id="c")
    assert len(result.projections.dlq.dead) == 1
    assert (tmp_path / "seen-0").read_text() == "first-token-123\n"

    # Another setting changed: refused, and the list of changes shows no secret.
    wf.write_text(RESUMABLE.format(token="second-token-456", parallel=2))
    with pytest.raises(ResumeRefused) as info:
        asyncio.run(resume_run(result.run_dir, RunOptions(include_dlq=True)))
    assert "map.max_parallel: 1 -> 2" in str(info.value)
    assert "first-token" not in str(info.value) and "second-token" not in str(info.value)

    # Only the secret's value changed: the same workflow; the file's value is used.
    wf.write_text(RESUMABLE.format(token="second-token-456", parallel=1))
    (tmp_path / "ok-1").write_text("")
    again = asyncio.run(resume_run(result.run_dir, RunOptions(include_dlq=True)))
    assert again.status == "completed" and not again.projections.dlq.dead
    assert (tmp_path / "seen-1").read_text() == "second-token-456\n"
    for path in (tmp_path / "home").rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert b"first-token-123" not in data and b"second-token-456" not in data, path


def test_on_resume_the_environment_variable_wins_over_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TOKEN", raising=False)
    wf = tmp_path / "wf.yml"
    wf.write_text(RESUMABLE.format(token="file-token-123", parallel=1))
    (tmp_path / "ok-0").write_text("")
    result = run_workflow(wf, tmp_path / "home", run_id="w")
    assert (tmp_path / "seen-0").read_text() == "file-token-123\n"
    monkeypatch.setenv("TOKEN", "rotated-token-789")  # e.g. the first one expired
    (tmp_path / "ok-1").write_text("")
    again = asyncio.run(resume_run(result.run_dir, RunOptions(include_dlq=True)))
    assert again.status == "completed" and not again.projections.dlq.dead
    assert (tmp_path / "seen-1").read_text() == "rotated-token-789\n"
    ledger = (result.run_dir / "ledger.ndjson").read_bytes()
    assert b"rotated-token-789" not in ledger and b"file-token-123" not in ledger
