"""How fast the CLI answers: whole processes of `engine --help`, `status`, `runs`.

    .venv/bin/python benchmarks/bench_cli.py [--repeat N] [--engine PATH] [--against PATH]
                                             [--out FILE]

Each command is started N times (default 20) in turn with the others, and the
median wall time of each is reported, side by side with two baselines measured
in the same loop: the bare interpreter (`python -c pass`) and the interpreter
importing click (the floor of any click application). `--against` times a
second `engine` executable (another checkout's) in the same loop. The run asked
about is a small one (10 items of `echo`), made once with the engine itself.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
WORKFLOW = """\
name: small
map:
  input: items.json
  agent_template:
    - run: echo "hello ${item}"
"""
COMMANDS: list[tuple[str, list[str]]] = [
    ("engine --help", ["--help"]),
    ("engine status --help", ["status", "--help"]),
    ("engine status RUN", ["status", "latest"]),
    ("engine status RUN --json", ["status", "latest", "--json"]),
    ("engine runs", ["runs"]),
]


def _small_run(engine: str, home: Path) -> None:
    (home / "items.json").write_text(json.dumps([f"i{n}" for n in range(10)]))
    (home / "wf.yml").write_text(WORKFLOW)
    subprocess.run(
        [engine, "run", "wf.yml", "--no-progress", "--json"],
        cwd=home,
        check=True,
        capture_output=True,
    )


def _wall(argv: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(argv, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def measure(engines: dict[str, str], repeat: int) -> dict[str, float]:
    """Median seconds per row, every row started once per round, in turn."""
    samples: dict[str, list[float]] = {}
    python = sys.executable
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        rows: list[tuple[str, list[str]]] = [
            ("python -c pass", [python, "-c", "pass"]),
            ("python -c 'import click'", [python, "-c", "import click"]),
        ]
        for label, engine in engines.items():
            _small_run(engine, work)
            rows += [(f"{title} ({label})", [engine, *args]) for title, args in COMMANDS]
        for _ in range(repeat):
            for title, argv in rows:
                samples.setdefault(title, []).append(_wall(argv, work))
    return {title: statistics.median(values) for title, values in samples.items()}


def table(medians: dict[str, float], repeat: int) -> str:
    lines = [
        f"| command (median of {repeat}) | wall (ms) |",
        "|---|---:|",
        *(f"| `{title}` | {seconds * 1000:.0f} |" for title, seconds in medians.items()),
    ]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--engine", default=str(Path(sys.executable).parent / "engine"))
    parser.add_argument("--against", help="another `engine` executable, timed side by side")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    engines = {"this": args.engine}
    if args.against:
        engines["against"] = args.against
    env_home = os.environ.pop("ENGINE_HOME", None)
    try:
        text = table(measure(engines, args.repeat), args.repeat)
    finally:
        if env_home is not None:
            os.environ["ENGINE_HOME"] = env_home
    print(text, end="")
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
