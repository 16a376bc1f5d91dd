"""Single quotes, here-documents and arithmetic, as workflows write them, run for real.

A ``${...}`` inside single quotes reaches the command as data: the engine
closes the quotes around a double-quoted reference. A quoted here-document
read by a program is written unquoted with its body escaped. In arithmetic a
whole number computes and any other value fails the step before it starts.
"""

from __future__ import annotations

import http.server
import json
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.engine_helpers import records, run_workflow, write_workflow

HOSTILE = [
    "'; touch PWNED #",
    "$(touch PWNED)",
    "`touch PWNED`",
    "it's \"quoted\" \\ and \\'",
    "two\nlines; touch PWNED\n",
    "'\"'\"'; touch PWNED; '\"'\"'",
    "EOF\ntouch PWNED\nEOF",
    "* ? [a-z]",
    "",
]


@pytest.fixture
def server() -> Iterator[tuple[int, list[bytes]]]:
    """An HTTP server on the loopback that keeps the body of every POST."""
    bodies: list[bytes] = []

    class Keep(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Keep)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield httpd.server_address[1], bodies
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join()


def test_single_quotes_as_prodigy_workflows_write_them(
    tmp_path: Path, server: tuple[int, list[bytes]]
) -> None:
    port, bodies = server
    items = [
        {"path": path, "body": body, "priority": k % 4}
        for k, (path, body) in enumerate(zip(HOSTILE, reversed(HOSTILE), strict=True))
    ]
    (tmp_path / "items.json").write_text(json.dumps(items))
    (tmp_path / "prios.json").write_text(json.dumps([{"p": p} for p in range(5)]))
    wf = write_workflow(
        tmp_path,
        f"""
        name: quotes
        env: {{PORT: "{port}"}}
        setup:
          - run: >-
              git init -q -b main repo && git -C repo config user.name Tester &&
              git -C repo config user.email tester@example.com &&
              git -C repo commit -q --allow-empty -m start
        map:
          input: items.json
          max_parallel: 1
          agent_template:
            - run: git -C repo commit -q --allow-empty --cleanup=verbatim -m 'fix ${{item.path}}'
            - run: curl -sS -f -o /dev/null -d '${{item.body}}' http://127.0.0.1:${{env.PORT}}/
            - run: >-
                jq -c '[.[] | select(.p >= ${{item.priority}})] | length' prios.json
                > 'jq-${{item_index}}'
        reduce:
          - run: echo 'Processed ${{map.successful}} items of ${{map.total}}' > summary.txt
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0, [r.data for r in records(result, "item.failed")]
    assert not list(tmp_path.rglob("PWNED"))
    log = subprocess.run(
        ["git", "-C", str(tmp_path / "repo"), "log", "--format=%B%x00", "--reverse"],
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    got = [m.removeprefix(b"\n") for m in log[1:-1]]
    # --cleanup=verbatim: the message as given, a newline added if it has none
    assert got == [f"fix {p}".removesuffix("\n").encode() + b"\n" for p in HOSTILE]
    assert bodies == [b.encode() for b in reversed(HOSTILE)]
    for k, item in enumerate(items):
        assert (tmp_path / f"jq-{k}").read_text() == f"{5 - item['priority']}\n"
    n = len(HOSTILE)
    assert (tmp_path / "summary.txt").read_text() == f"Processed {n} items of {n}\n"


def test_arithmetic_computes_numbers_and_fails_any_other_value(tmp_path: Path) -> None:
    values: list[object] = [
        "41",
        7,
        "a[$(touch PWNED)]",
        "1; touch PWNED",
        "$(touch PWNED)",
        "x[`touch PWNED`]",
        "1.5",
        "",
    ]
    (tmp_path / "items.json").write_text(json.dumps([{"n": v} for v in values]))
    wf = write_workflow(
        tmp_path,
        """
        name: sums
        map:
          input: items.json
          retry: {max_attempts: 1}
          agent_template:
            - run: echo $(( ${item.n} + 1 ))
              output: text
        reduce:
          - run: echo "$(( ${map.successful} * 100 / ${map.total} ))%" > rate.txt
          - run: bash -c '[[ ${map.failed} -gt 1 ]] && echo many > failed.txt'
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 1
    assert not list(tmp_path.rglob("PWNED"))
    assert sorted(r.data.result for r in records(result, "item.succeeded")) == ["42", "8"]
    failed = records(result, "item.failed")
    assert len(failed) == len(values) - 2
    for record in failed:
        assert record.data.error_type == "validation_failed", record.data
        assert "not a whole number" in (record.data.message or ""), record.data
    assert (tmp_path / "rate.txt").read_text() == "25%\n"
    assert (tmp_path / "failed.txt").read_text() == "many\n"


def test_a_large_value_in_single_quotes_and_here_documents(tmp_path: Path) -> None:
    # 1 MiB: too large for the environment, so it reaches the shell through a file.
    chunk = "'; touch PWNED # $(touch PWNED) `touch PWNED` \"\\'\n"
    value = (chunk * (2**20 // len(chunk) + 1))[: 2**20]
    (tmp_path / "items.json").write_text(json.dumps([{"v": value}]))
    wf = write_workflow(
        tmp_path,
        """
        name: large
        map:
          input: items.json
          agent_template:
            - run: printf '%s' '${item.v}' > single
            - run: printf '%s' ${item.v} > bare
            - run: "cat <<'EOF' > quoted-heredoc\\n${item.v}\\nEOF"
            - run: "cat <<EOF > heredoc\\n${item.v}\\nEOF"
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0, [r.data for r in records(result, "item.failed")]
    assert not list(tmp_path.rglob("PWNED"))
    assert (tmp_path / "single").read_bytes() == value.encode()
    assert (tmp_path / "bare").read_bytes() == value.encode()
    assert (tmp_path / "quoted-heredoc").read_bytes() == value.encode() + b"\n"
    assert (tmp_path / "heredoc").read_bytes() == value.encode() + b"\n"


def test_output_that_is_not_utf8_reaches_the_next_step_as_the_engine_keeps_it(
    tmp_path: Path,
) -> None:
    raw = b"a\xff\xfe\xc3b'; touch PWNED #\x01 $(touch PWNED)"
    (tmp_path / "raw.bin").write_bytes(raw)
    wf = write_workflow(
        tmp_path,
        """
        name: bytes
        map:
          items: [x]
          agent_template:
            - run: cat raw.bin
              capture_output: raw
            - run: printf '%s' '${raw}' > single
            - run: bash -c "printf '%s' '${raw}' > nested"
            - run: "sh <<'EOF'\\nprintf '%s' '${raw}' > heredoc\\nEOF"
        """,
    )
    result = run_workflow(wf, tmp_path / "home")
    assert result.exit_code == 0, [r.data for r in records(result, "item.failed")]
    assert not list(tmp_path.rglob("PWNED"))
    kept = raw.decode("utf-8", "replace").encode()  # captured output is text
    for name in ("single", "nested", "heredoc"):
        assert (tmp_path / name).read_bytes() == kept, name


def test_an_escaped_variable_is_its_own_text() -> None:
    """``$${name}`` is the text ``${name}``, in plain text and in shell code whatever its
    quoting: never a variable, so nothing is looked up."""
    from engine.workflow.template import render_shell, render_text, template_variables

    assert template_variables("$${a} ${b}") == ["b"]
    assert render_text("$${a} ${b}", {"b": "$${c}"}) == "${a} $${c}"
    command, env = render_shell(
        "V=9; echo '$${V}' $${V} \"$${V}\" ${b}; cat <<'EOF'\n$${V} ${b}\nEOF", {"b": "x"}
    )
    done = subprocess.run(
        ["/bin/sh", "-c", command], env=env, capture_output=True, text=True, check=False
    )
    assert done.stdout == "${V} 9 9 x\n${V} x\n"


def test_env_falls_back_on_the_engines_own_environment() -> None:
    from engine.workflow.template import render_text, value_text
    from engine.workflow.variables import run_context

    context = run_context("r", {"OWN": "1"}, {"HOME": "/home/u", "OWN": "ignored"})
    assert render_text("${env.OWN} ${env.HOME}", context) == "1 /home/u"
    assert value_text(context["env"]) == '{"OWN":"1"}'  # as a whole: the run's own only
