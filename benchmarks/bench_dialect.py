"""What reading a workflow in the Prodigy dialect costs: every corpus workflow loaded as
Prodigy wrote it, side by side with the same workflow written in the engine's format.

    .venv/bin/python benchmarks/bench_dialect.py [--repeat N] [--out FILE]

For each workflow of ``tests/fixtures/prodigy/``, the engine's own form is the
translation's document written out as YAML; both files are loaded
(``load_workflow``: parse, translate when it is Prodigy's, validate, check
templates) in this process, one after the other, and the median of N loads of each
is kept. What runs afterwards is the same spec either way: only loading
differs.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from engine.workflow.load import load_workflow  # noqa: E402
from engine.workflow.prodigy import Reading, translate  # noqa: E402

CORPUS = ROOT / "tests" / "fixtures" / "prodigy"


def _median_load(path: Path, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        load_workflow(path)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=51)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for source in sorted(p for p in CORPUS.glob("*.yml") if p.name != "expected.yml"):
            document = yaml.safe_load(source.read_text())
            native, _ = translate(document, Reading(directory=CORPUS))
            copy = Path(scratch) / source.name
            copy.write_text(yaml.safe_dump(native, sort_keys=False))
            load_workflow(source), load_workflow(copy)  # warm: imports, caches
            prodigy = _median_load(source, args.repeat)
            engine = _median_load(copy, args.repeat)
            rows.append((source.name, prodigy, engine))
    total_p = sum(r[1] for r in rows)
    total_e = sum(r[2] for r in rows)
    lines = [
        f"Loading each workflow, median of {args.repeat} loads (ms); ratio = Prodigy's / the "
        "engine's format.",
        "",
        "| workflow | as Prodigy wrote it | in the engine's format | ratio |",
        "|---|---:|---:|---:|",
        *(f"| {n} | {p * 1e3:.2f} | {e * 1e3:.2f} | {p / e:.2f}x |" for n, p, e in rows),
        f"| **all {len(rows)}** | {total_p * 1e3:.1f} | {total_e * 1e3:.1f} | "
        f"{total_p / total_e:.2f}x |",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        args.out.write_text(text)


if __name__ == "__main__":
    main()
