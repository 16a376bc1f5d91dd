"""Adversarial: secrets must not leak, whatever a workflow does with them.

Real engines (subprocesses) run workflows that push every secret through
every channel a value can take: stdout and stderr, a JSON result (values and
keys), a setup capture, a failing item's error and stderr tail, an
``on_failure`` step, item values and item ids from ``map.command``, artifact
file names, an artifact error naming a file, the next run's workspace
manifest, a resume's warning, a failing ``map.command`` and a failing setup
step (their errors on the terminal), a reduce step's output, and the command
line (``--var``). The secrets are chosen to defeat naive redaction: quotes,
backslashes, a newline, control characters, non-ASCII, shell and HTML
metacharacters.

Then every file under the home, and the output of every command that shows
a run (status, runs, replay, stats, tail, query, dlq, audit), is searched
for each secret in each form it could be written in: raw, JSON-escaped
(ASCII or not), ``repr``, shell-quoted, CSV-quoted, HTML-escaped and as a
Markdown table cell. The counts are printed.
"""

from __future__ import annotations

import csv
import html
import io
import json
import os
import secrets as _secrets
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from tests.conftest import ENGINE

TIMEOUT = 120

LEAK_SCRIPT = r"""
import json, os, sys

NAMES = json.loads(os.environ["LEAK_NAMES"])
FILE_SAFE = json.loads(os.environ["LEAK_FILE_SAFE"])
values = {n: os.environ.get(n, "") for n in NAMES}


def shout(stream):
    for name, value in values.items():
        print(f"{name}: {value} repr={value!r} json={json.dumps(value)}", file=stream)
    stream.flush()


mode = sys.argv[1]
if mode == "items":
    for i, name in enumerate(NAMES):
        print(json.dumps({"name": f"{i}-{values[name]}", "value": values[name], "n": i}))
    print(json.dumps({"name": "fails", "value": "plain", "n": len(NAMES)}))
elif mode == "step":
    index = int(sys.argv[2])
    shout(sys.stderr)
    shout(sys.stdout)
    os.makedirs("out", exist_ok=True)
    for name in FILE_SAFE:
        with open(f"out/{index}-{values[name]}.txt", "w") as f:
            f.write("artifact\n")
    if index == 0:  # a file outside the workspace: an artifact error that names it
        try:
            os.symlink("../../outside.txt", f"out/0-{values['SEC_QUOTE']}.lnk")
        except FileExistsError:
            pass
    if index == len(NAMES):
        print("error: the server said no to " + " and ".join(values.values()), file=sys.stderr)
        sys.exit(3)
elif mode == "result":
    print(json.dumps({"all": list(values.values()), "keys": {v: v for v in values.values()}}))
elif mode in ("capture", "on_failure", "reduce"):
    shout(sys.stderr)
    print(" | ".join(values.values()))
    print("arguments:", sys.argv[2:])
"""


def _secret_values(tag: str) -> dict[str, str]:
    """Secrets that shell quoting, JSON, CSV, HTML and Markdown each change."""
    return {
        "SEC_QUOTE": f"q'uo\"te {tag}a",
        "SEC_BSL": f"back\\slash\\\\n\\u0041-{tag}b",
        "SEC_NL": f"multi\nline\r\n-{tag}c",
        "SEC_UNI": f"ünï-cødé-€-😀-{tag}d",
        "SEC_CTL": f"ctl\x01\t\x1b[0m\x7f-{tag}e",
        "SEC_SHELL": f"$(id);`id`|&*?[x]${{HOME}}-{tag}f",
        "SEC_HTML": f"<b>&amp;'x'</b>-{tag}g",
        "VAR_TOK": f"v'a r\"$x|{tag}h",
        "VAR_NL": f"--v\\ar\nnl=ü '\"-{tag}i",
    }


GIVEN = ["VAR_TOK", "VAR_NL"]
"""Secrets given with --var (the others come from the environment)."""

FILE_SAFE = ["SEC_QUOTE", "SEC_BSL", "SEC_UNI", "SEC_SHELL", "VAR_TOK"]
"""Secrets that can be part of a file name (no slash, no control character)."""


def _forms(secret: str) -> set[bytes]:
    """Every way ``secret`` could be written by an encoder the engine uses."""
    out = io.StringIO()
    csv.writer(out).writerow([secret])
    texts = {
        secret,
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        shlex.quote(secret),
        out.getvalue().strip("\r\n"),
        html.escape(secret),
        html.escape(secret, quote=False),
        secret.replace("|", "\\|").replace("\n", " "),
    }
    return {t.encode() for t in texts}


WORKFLOW = """
name: leaks
secrets: {names}
cache: {{}}
setup:
  - argv: ["{py}", "leak.py", capture, "${{env.VAR_TOK}}"]
    capture_output: seen
map:
  command: '"{py}" leak.py items'
  id: "${{item.name}}"
  max_parallel: 2
  retry: {{max_attempts: 1}}
  agent_template:
    - argv: ["{py}", leak.py, step, "${{item.n}}", "${{item}}"]
      artifacts: ["out/${{item.n}}-*"]
      on_failure:
        - argv: ["{py}", leak.py, on_failure, "${{item_id}}"]
    - argv: ["{py}", leak.py, result]
      output: json
reduce:
  - argv: ["{py}", leak.py, reduce, "${{seen}}", "${{map.results}}"]
"""

NEXT = """
name: next
secrets: {names}
map:
  command: 'echo "cannot list: $SEC_QUOTE $SEC_UNI" >&2; exit 4'
  agent_template:
    - run: "true"
"""

SETUP_FAILS = """
name: setupfails
secrets: {names}
setup:
  - run: 'echo "login failed for $SEC_HTML $SEC_NL" >&2; exit 5'
"""


class Leaks:
    """Where the secrets were looked for, and any place one was found."""

    def __init__(self, secrets: dict[str, str]) -> None:
        self.forms = {name: _forms(value) for name, value in secrets.items()}
        self.files = 0
        self.outputs = 0
        self.found: list[str] = []

    def check(self, where: str, data: bytes) -> None:
        for name, forms in self.forms.items():
            for form in forms:
                if form in data:
                    self.found.append(f"{name} as {form!r} in {where}")

    def scan_tree(self, root: Path) -> None:
        for path in sorted(root.rglob("*")):
            if path.is_file():
                self.check(str(path.relative_to(root)), path.read_bytes())
                self.files += 1

    def output(self, where: str, stdout: str | bytes, stderr: str | bytes = b"") -> None:
        for text in (stdout, stderr):
            self.check(where, text.encode() if isinstance(text, str) else text)
        self.outputs += 1


def _engine(
    home: Path, env: dict[str, str], *args: str, cwd: Path
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [ENGINE, "--home", str(home), *args],
        capture_output=True,
        env=env,
        cwd=cwd,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[tuple[Path, Path, dict[str, str], dict[str, str]]]:
    tag = _secrets.token_hex(4)
    secrets = _secret_values(tag)
    names = sorted(secrets)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SEC_", "VAR_"))}
    env.update({k: v for k, v in secrets.items() if k not in GIVEN})
    env["LEAK_NAMES"] = json.dumps(names)
    env["LEAK_FILE_SAFE"] = json.dumps(FILE_SAFE)
    work = tmp_path / "work"
    work.mkdir()
    (work / "leak.py").write_text(LEAK_SCRIPT)
    (tmp_path / "outside.txt").write_text("not in the workspace\n")
    listed = json.dumps(names)
    (work / "wf.yml").write_text(WORKFLOW.format(names=listed, py=sys.executable))
    (work / "next.yml").write_text(NEXT.format(names=listed))
    (work / "setup.yml").write_text(SETUP_FAILS.format(names=listed))
    yield work, tmp_path / "home", env, secrets


def test_no_secret_reaches_any_file_or_output(
    workspace: tuple[Path, Path, dict[str, str], dict[str, str]],
    request: pytest.FixtureRequest,
) -> None:
    work, home, env, secrets = workspace
    leaks = Leaks(secrets)
    given = {name: secrets[name] for name in GIVEN}
    var = [a for name, value in given.items() for a in ("--var", f"{name}={value}")]

    # 1. The run: every channel, one item dead-lettered.
    run = _engine(home, env, "run", "wf.yml", "--run-id", "a", *var, "--no-progress", cwd=work)
    leaks.output("engine run", run.stdout, run.stderr)
    assert run.returncode == 1, run.stderr.decode(errors="replace")
    # 2. A resume of it: the workspace changed (artifacts named with secrets).
    # Later runs are given the --var secret again (its environment for a resume):
    # a run knows only the secrets it is given.
    resume = _engine(
        home,
        {**env, **given},
        "resume",
        "a",
        "--include-dlq",
        "--no-progress",
        cwd=work,
    )
    leaks.output("engine resume", resume.stdout, resume.stderr)
    assert resume.returncode == 1 and b"workspace changed" in resume.stderr, resume.stderr
    # 3. The next run's snapshot sees those files; its map.command fails loudly.
    nxt = _engine(home, env, "run", "next.yml", "--run-id", "b", *var, "--no-progress", cwd=work)
    leaks.output("engine run next.yml", nxt.stdout, nxt.stderr)
    assert nxt.returncode != 0, nxt.stderr
    # 4. A setup step that fails with secrets on its stderr.
    bad = _engine(home, env, "run", "setup.yml", "--run-id", "c", *var, "--json", cwd=work)
    leaks.output("engine run setup.yml", bad.stdout, bad.stderr)
    assert bad.returncode == 1, bad.stderr

    # Every command that shows a run (in-process: the same code, faster).
    runner = CliRunner()
    reports = home / "reports"
    reports.mkdir()
    dead_id = "fails"
    assert json.loads(_cli(runner, home, "status", "a", "--json"))["dlq"] == 2
    commands: list[list[str]] = [["runs", "--json"]]
    for rid in ("a", "b", "c"):
        commands += [
            ["status", rid, "--json"],
            ["status", rid],
            ["replay", rid, "--json"],
            ["tail", rid, "-a"],
            ["tail", rid, "-a", "--json"],
            ["audit", "verify", rid],
            ["audit", "report", rid],
        ]
        for fmt in ("md", "json", "html"):
            commands.append(
                ["audit", "report", rid, "--format", fmt, "-o", str(reports / f"{rid}.{fmt}")]
            )
    commands += [
        ["stats", "a", "--json"],
        ["stats", "a"],
        ["tail", "a", "-a", "--item", dead_id],
        ["dlq", "list", "a"],
        ["dlq", "show", "a", dead_id],
        ["dlq", "show", "a", dead_id, "--json"],
        ["dlq", "export", "a"],
        ["dlq", "export", "a", "--format", "csv"],
        ["query", "a", "--sql", "SELECT * FROM events", "--format", "json"],
        ["query", "a", "--sql", "SELECT * FROM events", "--format", "csv"],
        ["query", "--all", "--sql", "SELECT * FROM items", "--format", "table"],
    ]
    for question in (
        "failures by signature",
        "failures by type",
        "attempts by item",
        "slowest items",
        "dlq",
    ):
        commands += [["query", "a", question, "--format", f] for f in ("table", "json", "csv")]
    for args in commands:
        result = runner.invoke(cli, ["--home", str(home), *args], catch_exceptions=False)
        leaks.output("engine " + " ".join(args), result.stdout_bytes, result.stderr_bytes)
        assert result.exit_code in (0, 1), (args, result.output)

    leaks.scan_tree(home)
    vectors = _vector_count()
    forms = sum(len(f) for f in leaks.forms.values())
    counts = (
        f"secret-leak vectors: {vectors} ({len(secrets)} secrets x channels), "
        f"forms searched: {forms}, files scanned: {leaks.files}, "
        f"command outputs scanned: {leaks.outputs}, leaks: {len(leaks.found)}"
    )
    _report(request, counts)
    assert leaks.files >= 40 and leaks.outputs >= 50
    assert not leaks.found, "\n".join(leaks.found[:40])
    # What was said is still said, with the secrets masked.
    assert b"cannot list: *** ***" in nxt.stderr, nxt.stderr
    assert b"login failed for ***" in bad.stdout + bad.stderr


def _report(request: pytest.FixtureRequest, line: str) -> None:
    """A line in the output of pytest, also when output is captured."""
    plugins = request.config.pluginmanager
    reporter = plugins.get_plugin("terminalreporter")
    capture = plugins.get_plugin("capturemanager")
    if reporter is None or capture is None:
        print(line)
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(f"\n{line}")


def _cli(runner: CliRunner, home: Path, *args: str) -> str:
    result = runner.invoke(cli, ["--home", str(home), *args], catch_exceptions=False)
    assert result.exit_code in (0, 1), result.output
    return result.stdout


CHANNELS_ALL = [
    "item stdout",
    "item stderr",
    "json result values",
    "json result keys",
    "setup capture",
    "capture in a reduce argument",
    "map.results in a reduce argument",
    "reduce stdout (engine run's output)",
    "failing item message and stderr tail",
    "on_failure step output",
    "item value from map.command",
    "item id from map.command",
    "an item value in a step argument",
]
CHANNELS_FILE_SAFE = [
    "artifact file name",
    "next run's workspace manifest",
    "resume warning about the workspace",
]
CHANNELS_ONE = [
    "--var on the command line (lock, lock.acquired), two secrets",
    "an artifact error naming a file (SEC_QUOTE, in a repr)",
    "failing map.command stderr on the terminal (SEC_QUOTE, SEC_UNI)",
    "failing setup step stderr (SEC_HTML, SEC_NL)",
]


def _vector_count() -> int:
    n = len(_secret_values("x"))
    return n * len(CHANNELS_ALL) + len(FILE_SAFE) * len(CHANNELS_FILE_SAFE) + 7
