"""Injection, adversarially: every placement of a value times every hostile payload.

For each pair either validation refuses the placement (exit 2, located), or
the command runs the value as data only: no ``PWNED`` file appears, and the
command prints exactly the value's bytes. Single quotes are made safe (the
reference closes them around a double-quoted expansion); in arithmetic a
value that is not a whole number stops the command before it runs. Most pairs are checked by
rendering and running the shell directly (one shell per placement, every
payload in its own command group); a workflow of refused placements goes through
``engine validate`` and one of safe placements through a real run.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from engine.workflow.template import (
    TemplateError,
    argv_problems,
    render_argv,
    render_shell,
    shell_problems,
)
from tests.conftest import ENGINE
from tests.engine_helpers import records, run_workflow

PAYLOADS = [
    "$(touch PWNED)",
    "`touch PWNED`",
    "; touch PWNED",
    "&& touch PWNED",
    "|| touch PWNED",
    "| touch PWNED",
    "& touch PWNED &",
    "\ntouch PWNED\n",
    "x\ntouch PWNED",
    "EOF\ntouch PWNED\nEOF",
    "'; touch PWNED; '",
    '"; touch PWNED; "',
    "x' \"$(touch PWNED)\" '",
    '\\"; touch PWNED; \\"',
    "\\$(touch PWNED)",
    "\\`touch PWNED\\`",
    "$((1+1)) a[$(touch PWNED)]",
    "${IFS}touch${IFS}PWNED",
    "$HOME ${HOME} ~ ~root",
    "*",
    "[a-z]* ?",
    "{a,b} !! !x",
    "'",
    '"',
    "\\",
    "\\\\n\\",
    "a  b\t\tc  ",
    " ",
    "",
    "-n",
    "--help",
    "%s %d %n",
    "# comment",
    ")",
    "}",
    "ünïcødé ☃ 日本語 \u200b\U0001f600",
    "\x01\x02\x1b[31m\x7f",
]

Expect = Callable[[str], str]


def exact(v: str) -> str:
    return v


def substituted(v: str) -> str:
    """What ``$( )`` and backticks keep: all but the trailing newlines."""
    return v.rstrip("\n")


def line(v: str) -> str:
    return v + "\n"


@dataclass(frozen=True)
class Shell:
    template: str
    expect: Expect | None = exact
    """None: validation must refuse the placement."""


P = "printf '%s'"
SHELL_PLACEMENTS = [
    # the command's own shell
    Shell(f"{P} ${{item}}"),
    Shell(f'{P} "${{item}}"'),
    Shell(f"{P} pre${{item}}post", lambda v: f"pre{v}post"),
    Shell(f'x=${{item}}; {P} "$x"'),
    Shell(f'for x in ${{item}}; do {P} "$x"; done'),
    Shell(f"case ${{item}} in *) {P} ${{item}};; esac"),
    Shell(f"({P} ${{item}})"),
    Shell(f"{{ {P} ${{item}}; }}"),
    Shell(f"{P} ${{item}} | cat"),
    Shell(f'{P} "${{UNSET_ENGINE_TEST:-${{item}}}}"'),
    Shell(f"{P} ${{item}} # and ${{item}} in a comment"),
    # command substitution: a fresh quoting context
    Shell(f'{P} "$({P} ${{item}})"', substituted),
    Shell(f'{P} "$({P} "${{item}}")"', substituted),
    Shell(f'{P} "$({P} "$({P} ${{item}})")"', substituted),
    Shell(f'{P} "`{P} ${{item}}`"', substituted),
    Shell(f'x=`{P} ${{item}}`; {P} "$x"', substituted),
    Shell(f'x=$({P} ${{item}}); {P} "$x"', substituted),
    Shell(f'{P} "$(case a in a) {P} ${{item}};; esac)"', substituted),
    Shell(f'{P} "$(case a in (a) {P} ${{item}};; esac)"', substituted),
    # here-documents
    Shell("cat <<EOF\n${item}\nEOF", line),
    Shell("cat <<-EOF\n\t${item}\n\tEOF", line),
    Shell(f"sh <<EOF\n{P} ${{item}}\nEOF"),
    Shell(f"sh <<'EOF'\n{P} ${{item}}\nEOF"),
    Shell(f'bash -s <<EOF\n{P} "${{item}}"\nEOF'),
    Shell(f'bash -c "bash <<< \\"{P} ${{item}}\\""'),
    Shell(f'bash -c "bash -s <<< \'{P} \\"${{item}}\\"\'"'),
    Shell(f"sh - <<EOF\n{P} ${{item}}\nEOF"),
    Shell(f"sh /dev/stdin <<EOF\n{P} ${{item}}\nEOF"),
    Shell(f"bash /dev/fd/0 <<EOF\n{P} ${{item}}\nEOF"),
    Shell(f". /dev/stdin <<EOF\n{P} ${{item}}\nEOF"),
    Shell(f'${{SHELL:-sh}} -c "{P} ${{item}}"'),
    # nested shells: the inner shell expands a reference
    Shell(f'bash -c "{P} ${{item}}"'),
    Shell(f'bash -c "{P} \\"${{item}}\\""'),
    Shell("bash -c 'printf \"%s\" ${item}'"),
    Shell('sh -c \'printf "%s" "${item}"\''),
    Shell(f'sh -ec "{P} ${{item}}"'),
    Shell(f'bash -o pipefail -c "{P} ${{item}}"'),
    Shell(f'/bin/sh -c -- "{P} ${{item}}"'),
    Shell(f'bash -c "sh -c \\"{P} ${{item}}\\""'),
    Shell('bash -c "cat <<EOF\n${item}\nEOF"', line),
    Shell('bash -c "cat <<< ${item}"', line),
    Shell(f'bash -c "x=\\$({P} ${{item}}); {P} \\"\\$x\\""', substituted),
    Shell(f'bash -c "x=\\`{P} ${{item}}\\`; {P} \\"\\$x\\""', substituted),
    Shell(f'{P} "$(bash -c "{P} ${{item}}")"', substituted),
    Shell(f'env A=1 sh -c "{P} ${{item}}"'),
    Shell(f'timeout 60 sh -c "{P} ${{item}}"'),
    Shell(f'find . -maxdepth 0 -exec sh -c "{P} ${{item}}" \\;'),
    Shell(f'echo x | xargs sh -c "{P} ${{item}}"'),
    Shell('bash -c \'printf "%s" "$1"\' _ ${item}'),
    Shell(f"flock lock sh -c '{P} \"$1\"' _ ${{item}}"),
    Shell(f'eval "{P} ${{item}}"'),
    Shell(f"eval {P} ${{item}}"),
    Shell(f'if eval "{P} ${{item}}"; then :; fi'),
    Shell(f'(trap "{P} ${{item}}" EXIT; :)'),
    Shell(f'export X=${{item}}; {P} "$X"'),
    Shell(
        f'IFS= read -r x <<EOF\n${{item}}\nEOF\n{P} "$x"',
        lambda v: v.split("\n")[0],
    ),
    # single quotes: the reference closes them, expands in double quotes, opens them again
    Shell(f"{P} '${{item}}'"),
    Shell(f"{P} 'pre ${{item}} post'", lambda v: f"pre {v} post"),
    Shell(f"{P} '${{item}}${{item}}'", lambda v: v + v),
    Shell(f"x='${{item}}'; {P} \"$x\""),
    Shell(f"case '${{item}}' in *) {P} '${{item}}';; esac"),
    Shell(f"{P} \"$({P} '${{item}}')\"", substituted),
    Shell(f"{P} \"`{P} '${{item}}'`\"", substituted),
    Shell(f"bash -c \"{P} '${{item}}'\""),
    Shell(f"bash -c \"{P} 'a '${{item}}' b'\"", lambda v: f"a {v} b"),
    Shell(f"sh -c '{P} '\"'\"'${{item}}'\"'\"''"),
    Shell(f'bash -c "sh -c \\"{P} \'${{item}}\'\\""'),
    Shell(f"bash -c 'sh -c \"{P} '\"'\"'${{item}}'\"'\"'\"'"),
    Shell(f"eval \"{P} '${{item}}'\""),
    Shell(f"eval '{P} '\"'\"'${{item}}'\"'\"''"),
    Shell(f'eval "sh -c \\"{P} \'${{item}}\'\\""'),
    Shell(f"(trap \"{P} '${{item}}'\" EXIT; :)"),
    Shell(f"sh <<EOF\n{P} '${{item}}'\nEOF"),
    Shell(f"sh <<'EOF'\n{P} '${{item}}'\nEOF"),
    Shell(f"bash -c \"sh <<'EOF'\n{P} '${{item}}'\nEOF\""),
    # a quoted here-document read by a program: written unquoted, its body escaped
    Shell("cat <<'EOF'\n${item}\nEOF", line),
    Shell('cat <<"EOF"\n${item}\nEOF', line),
    Shell("cat <<\\EOF\n${item}\nEOF", line),
    Shell(
        "cat <<-'EOF'\n\t$HOME `x` \\ \\$ '${item}'\n\tEOF", lambda v: f"$HOME `x` \\ \\$ '{v}'\n"
    ),
    Shell(f"{P} \"$(cat <<'EOF'\n${{item}}\nEOF\n)\"", substituted),
    # refused: no shell would expand the value as data here
    Shell(f"{P} $'${{item}}'", None),
    Shell(f"bash -c \"{P} $'${{item}}'\"", None),
    Shell(f'bash -c "{P} \\\\${{item}}"', None),
    Shell("bash -c \"cat <<'EOF'\n${item}\nEOF\"", None),
    Shell("x=`cat <<'EOF'\n${item}\nEOF\n`", None),
    Shell("python3 <<'EOF'\nprint('${item}')\nEOF", None),
    Shell("python3 - <<EOF\nprint('${item}')\nEOF", None),
    Shell("perl <<< 'print \"${item}\"'", None),
    Shell(f"{P} $(( $({P} ${{item}}) + 1 ))", None),
    Shell("read ${item} </dev/null", None),
    Shell('bash -c "unset ${item}"', None),
    Shell("export ${item}", None),
    Shell("printf -v ${item} %s x", None),
    Shell('bash -c "[[ -v ${item} ]]"', None),
    Shell(f'bash -c "{P} $({P} ${{item}})"', None),
    Shell(f'eval "$({P} ${{item}})"', None),
    Shell(f"sh <<EOF\n{P} `{P} ${{item}}`\nEOF", None),
    Shell(f'python3 -c "print($({P} ${{item}}))"', None),
    Shell(f'sudo sh -c "{P} ${{item}}"', None),
    Shell(f'env -i sh -c "{P} ${{item}}"', None),
    Shell(f"env -S 'sh -c' \"{P} ${{item}}\"", None),
    Shell(f"env --split-string='sh -c' \"{P} ${{item}}\"", None),
    Shell(f'docker exec box sh -c "{P} ${{item}}"', None),
    Shell("python3 -c \"print('${item}')\"", None),
    Shell("perl -e \"print '${item}'\"", None),
    Shell("node -e \"console.log('${item}')\"", None),
    Shell('awk "BEGIN { print \\"${item}\\" }"', None),
    Shell('ssh -p 22 host "echo ${item}"', None),
    Shell('su nobody -c "echo ${item}"', None),
    Shell('flock lock -c "echo ${item}"', None),
    Shell("watch -n 1 echo ${item}", None),
    Shell('fish -c "echo ${item}"', None),
]


@dataclass(frozen=True)
class Arithmetic:
    template: str
    expect: Callable[[int], str]
    """What the command prints for a whole number."""


NUMBERS = ["7", "0", "42", "12345678901"]
ARITHMETIC_PLACEMENTS = [
    Arithmetic("printf %s $(( ${item} + 1 ))", lambda n: str(n + 1)),
    Arithmetic('printf %s "$(( ${item} * 2 ))"', lambda n: str(n * 2)),
    Arithmetic('x=$(( ${item} )); printf %s "$x"', str),
    Arithmetic("printf %s $((${item}-1))", lambda n: str(n - 1)),
    Arithmetic('printf %s "$(printf %s $(( ${item} )))"', str),
    Arithmetic("sh <<EOF\nprintf %s $(( ${item} + 1 ))\nEOF", lambda n: str(n + 1)),
    Arithmetic("sh <<EOF\nprintf %s \\$(( ${item} + 1 ))\nEOF", lambda n: str(n + 1)),
    Arithmetic(
        'bash -c "(( ${item} > 5 )) && printf big || printf small"',
        lambda n: "big" if n > 5 else "small",
    ),
    Arithmetic('bash -c "let x=${item}+1; printf %s \\$x"', lambda n: str(n + 1)),
    Arithmetic("bash -c \"let 'x=${item}*3'; printf %s \\$x\"", lambda n: str(n * 3)),
    Arithmetic(
        'bash -c "[[ ${item} -eq 7 ]] && printf seven || printf other"',
        lambda n: "seven" if n == 7 else "other",
    ),
    Arithmetic('bash -c "declare -i x=${item}; printf %s \\$x"', str),
    Arithmetic('bash -c "a[${item}]=v; printf %s \\${!a[*]}"', str),
    Arithmetic('bash -c "a=(); a[${item}]=x; printf %s \\"\\${a[${item}]}\\""', lambda n: "x"),
    Arithmetic(
        'bash -c "for (( i=0; i<${item} && i<3; i++ )); do printf i; done"',
        lambda n: "i" * min(n, 3),
    ),
    Arithmetic("bash -c 'printf %s $(( ${item} + 1 ))'", lambda n: str(n + 1)),
    Arithmetic("bash -c 'printf %s $[${item} + 1]'", lambda n: str(n + 1)),
]


@dataclass(frozen=True)
class Argv:
    words: tuple[str, ...]
    literal: int = 0
    """Leading words kept as they are (an agent's command line; the prompt follows)."""
    expect: Expect | None = exact


ARGV_PLACEMENTS = [
    Argv(("printf", "%s", "${item}")),
    Argv(("sh", "-c", f"{P} ${{item}}")),
    Argv(("bash", "-c", 'printf "%s" "${item}"')),
    Argv(("sh", "-c", 'printf "%s" "$1"', "_", "${item}")),
    Argv(("env", "sh", "-c", f"{P} ${{item}}")),
    Argv(("bash", "-c", f'eval "{P} ${{item}}"')),
    # an agent whose command is a shell: the prompt is its command string
    Argv(("sh", "-c", f"{P} ${{item}}"), literal=2),
    Argv(("bash", "-lc", f"{P} ${{item}}"), literal=2),
    Argv(("sh", "-c", 'printf "%s" "$0"', "${item}"), literal=3),
    Argv(("sh", "-c", f"{P} '${{item}}'")),
    Argv(("sh", "-c", f"{P} '${{item}}'"), literal=2),
    Argv(("bash", "-c", f"eval \"{P} '${{item}}'\"")),
    Argv(("sh", "-c", f"{P} $'${{item}}'"), expect=None),
    Argv(("sudo", "sh", "-c", f"{P} ${{item}}"), expect=None),
    Argv(("python3", "-c", "print('${item}')"), expect=None),
]


def _start_batch(workdir: Path, commands: list[tuple[str, bool]]) -> subprocess.Popen[bytes]:
    """Run one command per payload, in one shell: ``(command, takes the value in ENGINE_VAR_1)``."""
    script = []
    for k, (command, by_reference) in enumerate(commands):
        export = f'export ENGINE_VAR_1="$ENGINE_TEST_P{k}"\n' if by_reference else ""
        script.append(f"{{\n{export}{command}\n}} >out-{k} 2>err-{k}\n")
    env = {**os.environ, **{f"ENGINE_TEST_P{k}": p for k, p in enumerate(PAYLOADS)}}
    return subprocess.Popen(["/bin/sh", "-c", "".join(script)], cwd=workdir, env=env)


def _check_outputs(workdir: Path, shown: str, expect: Expect) -> list[str]:
    failures = []
    if list(workdir.rglob("PWNED")):
        failures.append(f"{shown!r}: a PWNED file appeared")
    for k, payload in enumerate(PAYLOADS):
        out = workdir / f"out-{k}"
        got = out.read_bytes() if out.exists() else None
        if got != expect(payload).encode():
            err_file = workdir / f"err-{k}"
            err = err_file.read_bytes()[:200] if err_file.exists() else None
            failures.append(f"{shown!r} with {payload!r}: printed {got!r} (stderr {err!r})")
    return failures


def _workdir(tmp_path: Path, n: int) -> Path:
    workdir = tmp_path / f"w{n}"
    workdir.mkdir()
    for name in ("a-file", "b-file"):  # so that a stray glob shows
        (workdir / name).write_text("")
    return workdir


def test_every_placement_times_every_payload(tmp_path: Path, capsys) -> None:
    failures: list[str] = []
    batches: list[tuple[subprocess.Popen[bytes], Path, Shell | Argv]] = []
    refused = safe = 0
    for n, placement in enumerate(SHELL_PLACEMENTS):
        rendered: set[str] = set()
        for payload in PAYLOADS:
            try:
                command, env = render_shell(placement.template, {"item": payload})
            except TemplateError:
                rendered.add("refused")
                continue
            rendered.add(command)
            assert list(env) == ["ENGINE_VAR_1"] and env["ENGINE_VAR_1"] == payload
        problems = shell_problems(placement.template)
        # The value never changes the command's text, nor whether it is refused.
        assert len(rendered) == 1, (placement.template, rendered)
        if placement.expect is None:
            assert rendered == {"refused"} and problems, placement.template
            refused += len(PAYLOADS)
            continue
        assert not problems and rendered != {"refused"}, (placement.template, problems)
        workdir = _workdir(tmp_path, n)
        batches.append(
            (_start_batch(workdir, [(rendered.pop(), True)] * len(PAYLOADS)), workdir, placement)
        )
        safe += len(PAYLOADS)
    for n, argv in enumerate(ARGV_PLACEMENTS, start=len(SHELL_PLACEMENTS)):
        problems = argv_problems(argv.words, literal=argv.literal)
        if argv.expect is None:
            assert problems, argv
            with pytest.raises(TemplateError):
                render_argv(argv.words, {"item": "x"}, literal=argv.literal)
            refused += len(PAYLOADS)
            continue
        assert not problems, (argv, problems)
        commands = []
        for payload in PAYLOADS:
            words, env = render_argv(argv.words, {"item": payload}, literal=argv.literal)
            assert set(env) <= {"ENGINE_VAR_1"} and all(v == payload for v in env.values())
            commands.append((shlex.join(words), bool(env)))  # the words exactly, as an exec
        workdir = _workdir(tmp_path, n)
        batches.append((_start_batch(workdir, commands), workdir, argv))
        safe += len(PAYLOADS)
    for process, workdir, placed in batches:
        process.wait(timeout=120)
        assert placed.expect is not None
        shown = placed.template if isinstance(placed, Shell) else " ".join(placed.words)
        failures += _check_outputs(workdir, shown, placed.expect)
    placements = len(SHELL_PLACEMENTS) + len(ARGV_PLACEMENTS)
    with capsys.disabled():
        print(
            f"\ninjection suite: {placements} placements x {len(PAYLOADS)} payloads = "
            f"{placements * len(PAYLOADS)} pairs: {refused} refused at validation, "
            f"{safe} ran as data only, {len(failures)} failed"
        )
    assert refused + safe == placements * len(PAYLOADS)
    assert not failures, "\n".join(failures[:20])


def test_arithmetic_takes_numbers_and_runs_nothing_else(tmp_path: Path) -> None:
    # A whole number computes; any other value stops the command before it runs
    # (bash would run the $(...) of a value a[$(...)] while evaluating it).
    failures: list[str] = []
    for n, placement in enumerate(ARITHMETIC_PLACEMENTS):
        assert not shell_problems(placement.template), placement.template
        for payload in [*PAYLOADS, "7 ", "+7", "0x1f", "1e3", "7.5", "٣", "-", "--7"]:
            with pytest.raises(TemplateError, match="not a whole number"):
                render_shell(placement.template, {"item": payload})
        commands = []
        rendered = set()
        for number in NUMBERS:
            command, env = render_shell(placement.template, {"item": number})
            assert env == {"ENGINE_VAR_1": number}
            rendered.add(command)
            commands.append((command, number))
        assert len(rendered) == 1, rendered
        workdir = _workdir(tmp_path, n)
        for command, number in commands:
            proc = subprocess.run(
                ["/bin/sh", "-c", command],
                cwd=workdir,
                env={**os.environ, "ENGINE_VAR_1": number},
                capture_output=True,
                check=False,
            )
            want = placement.expect(int(number)).encode()
            if proc.stdout != want:
                failures.append(
                    f"{placement.template!r} with {number}: {proc.stdout!r} {proc.stderr!r}"
                )
    assert not failures, "\n".join(failures)


def test_refused_placements_are_located_exit_2_through_the_cli(tmp_path: Path) -> None:
    refused = [p.template for p in SHELL_PLACEMENTS if p.expect is None]
    steps = [{"run": t} for t in refused] + [
        {"argv": list(a.words)} for a in ARGV_PLACEMENTS if a.expect is None and not a.literal
    ]
    text = "name: refused\nmap:\n  items: [a]\n  agent_template:\n"
    for step in steps:
        key, value = next(iter(step.items()))
        text += f"    - {key}: {json.dumps(value)}\n"
    (tmp_path / "wf.yml").write_text(text)
    proc = subprocess.run(
        [ENGINE, "validate", "wf.yml"], cwd=tmp_path, capture_output=True, text=True, check=False
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    for k, step in enumerate(steps):
        key = next(iter(step))
        where = f"wf.yml:{5 + k}: map.agent_template[{k}].{key}: ${{item}} "
        assert sum(ln.startswith(where) for ln in lines) >= 1, (where, lines)
    assert not list(tmp_path.rglob("PWNED"))


END_TO_END = {
    "dollar": f'{P} "$({P} ${{item.v}})" > dollar-${{item.n}}',
    "bash": f'bash -c "{P} ${{item.v}} > bash-${{item.n}}"',
    "single": "sh -c 'printf \"%s\" ${item.v} > single-${item.n}'",
    "eval": f'eval "{P} ${{item.v}} > eval-${{item.n}}"',
    "heredoc": f"sh <<EOF\n{P} ${{item.v}} > heredoc-${{item.n}}\nEOF",
    "quoted": f"{P} '${{item.v}}' > quoted-${{item.n}}",
    "in-bash": f"bash -c \"{P} '${{item.v}}' > in-bash-${{item.n}}\"",
    "in-eval": f"eval '{P} '\\''${{item.v}}'\\'' > in-eval-${{item.n}}'",
    "cat": "cat <<'EOF' > cat-${item.n}\n${item.v}\nEOF",
}


def test_a_real_run_keeps_every_payload_data(tmp_path: Path) -> None:
    (tmp_path / "items.json").write_text(
        json.dumps([{"v": v, "n": i} for i, v in enumerate(PAYLOADS)])
    )
    steps = [{"run": c} for c in END_TO_END.values()]
    steps.append({"argv": ["sh", "-c", f"{P} ${{item.v}} > argv-${{item.n}}"]})
    steps.append({"claude": f"{P} ${{item.v}} > agent-${{item.n}}"})
    workflow = {
        "name": "hostile",
        "agent": {"command": "sh -c"},
        "map": {
            "input": "items.json",
            "id": "item-${item.n}",
            "max_parallel": 4,
            "agent_template": steps,
        },
    }
    (tmp_path / "wf.json").write_text(json.dumps(workflow))
    result = run_workflow(tmp_path / "wf.json", tmp_path / "home")
    assert result.exit_code == 0, [r.data for r in records(result, "item.failed")][:3]
    assert not list(tmp_path.rglob("PWNED"))
    for prefix in [*END_TO_END, "argv", "agent"]:
        expect = {"dollar": substituted, "cat": line}.get(prefix, exact)
        for i, payload in enumerate(PAYLOADS):
            got = (tmp_path / f"{prefix}-{i}").read_bytes()
            assert got == expect(payload).encode(), (prefix, payload, got)


def _escape_around_variables(text: str, chars: str) -> str:
    """Backslash ``chars`` in ``text`` as its author would, leaving ``${item}`` as written."""
    out = []
    for k, part in enumerate(text.split("${item}")):
        out.append("${item}" if k else "")
        out.append("".join("\\" + c if c in chars else c for c in part))
    return "".join(out)


IN_DOUBLE_QUOTES = '\\$`"'
"""What a person backslashes to put a command inside double quotes (or eval's)."""
IN_HEREDOC = "\\$`"
"""... inside an unquoted here-document or backticks."""


def _random_nesting(rng, depth: int) -> tuple[str, bool]:
    """A command printing ``${item}`` through ``depth`` random layers; and whether a
    layer is a substitution (which drops trailing newlines)."""
    if depth == 0:
        return rng.choice(
            ["printf %s ${item}", 'printf %s "${item}"', "printf %s '${item}'"]
        ), False
    inner, substitution = _random_nesting(rng, depth - 1)
    choice = rng.randrange(7)
    if choice == 0:
        return (
            f'bash -c "{_escape_around_variables(inner, IN_DOUBLE_QUOTES)}"',
            substitution,
        )
    if choice == 1:  # a quote inside is written '\'' (close, a quoted quote, open)
        return "sh -c '" + inner.replace("'", "'\\''") + "'", substitution
    if choice == 2:
        return f'eval "{_escape_around_variables(inner, IN_DOUBLE_QUOTES)}"', substitution
    if choice == 3 and "EOF" not in inner:
        return f"sh <<EOF\n{_escape_around_variables(inner, IN_HEREDOC)}\nEOF\n", substitution
    if choice == 4 and "EOF" not in inner:
        return f"sh <<'EOF'\n{inner}\nEOF\n", substitution
    if choice == 5:
        return f'printf %s "$({inner})"', True
    if "`" not in inner:
        return f'x=`{_escape_around_variables(inner, IN_HEREDOC)}`; printf %s "$x"', True
    return f"{{ {inner}\n}}", substitution


def test_random_nestings_keep_values_data(tmp_path: Path, rng, capsys) -> None:
    # Layers the suite above does not list: shells in substitutions in here-
    # documents in eval..., each escaped as a person would write it.
    batches = []
    for n in range(40):
        template, substitution = _random_nesting(rng, rng.randint(2, 4))
        assert not shell_problems(template), template
        command, _ = render_shell(template, {"item": "x"})
        workdir = _workdir(tmp_path, n)
        batches.append(
            (
                _start_batch(workdir, [(command, True)] * len(PAYLOADS)),
                workdir,
                template,
                substitution,
            )
        )
    failures = []
    for process, workdir, template, substitution in batches:
        process.wait(timeout=120)
        failures += _check_outputs(workdir, template, substituted if substitution else exact)
    with capsys.disabled():
        print(f"\nrandom nestings: 40 commands x {len(PAYLOADS)} payloads, {len(failures)} failed")
    assert not failures, "\n".join(failures[:10])
