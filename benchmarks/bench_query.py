"""`failures by signature` over a 1,000,000-event ledger (100,000 failures).

    .venv/bin/python benchmarks/bench_query.py [--events N] [--repeat N] [--out FILE]

Side by side on the same file, each in a fresh process, median of N:

* DuckDB, as `engine query` runs it (the `events` view over the NDJSON file,
  the named query's SQL);
* a plain Python scan with the standard `json` module: every line decoded,
  failures grouped by (signature, error type) with count, distinct items,
  first and last seen and an example message.

Times are for answering (opening the file to having the rows), after the
interpreter and the imports; the whole `engine query` command, process
start-up included, is timed too.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_ledger import make_ledger

DUCKDB_CHILD = """
import json, sys, time
from pathlib import Path
from engine.views.query import connect, run_named
import duckdb
t = time.perf_counter()
result = run_named(connect([Path(sys.argv[1])]), "failures by signature")
print(json.dumps({"seconds": time.perf_counter() - t, "rows": len(result.rows),
                  "failures": sum(r[2] for r in result.rows)}))
"""

PYTHON_CHILD = """
import json, sys, time
t = time.perf_counter()
groups = {}
with open(sys.argv[1], "rb") as f:
    for line in f:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a torn last line
        if rec.get("type") != "item.failed":
            continue
        d = rec["data"]
        key = (d["signature"], d["error_type"])
        g = groups.get(key)
        if g is None:
            groups[key] = g = {"count": 0, "items": set(), "first": rec["ts"], "last": rec["ts"],
                               "example": d.get("message", "")}
        g["count"] += 1
        g["items"].add(rec["run"] + "/" + d["item"])
        g["first"] = min(g["first"], rec["ts"])
        g["last"] = max(g["last"], rec["ts"])
rows = sorted(groups.items(), key=lambda kv: -kv[1]["count"])
print(json.dumps({"seconds": time.perf_counter() - t, "rows": len(rows),
                  "failures": sum(g["count"] for _, g in rows)}))
"""


def child(code: str, ledger: Path) -> dict[str, float]:
    out = subprocess.run(
        [sys.executable, "-c", code, str(ledger)], capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout)  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-query-"))
    ledger = work / "runs" / "bench" / "ledger.ndjson"
    ledger.parent.mkdir(parents=True)
    make_ledger(ledger, args.events)
    size_mb = ledger.stat().st_size / 2**20
    duck, py, cli = [], [], []
    failures = None
    for _ in range(args.repeat):
        d = child(DUCKDB_CHILD, ledger)
        p = child(PYTHON_CHILD, ledger)
        assert d["rows"] == p["rows"] and d["failures"] == p["failures"], (d, p)
        failures = d["failures"]
        duck.append(d["seconds"])
        py.append(p["seconds"])
        t = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "cli", "--home", str(work), "query", "bench",
             "failures by signature", "--format", "json"],
            capture_output=True, check=True,
        )  # fmt: skip
        cli.append(time.perf_counter() - t)
    shutil.rmtree(work)
    d, p, c = (statistics.median(x) for x in (duck, py, cli))
    lines = [
        f"## Query ({time.strftime('%Y-%m-%d')}, `failures by signature`, {args.events:,} events, "
        f"{failures:,} failures, {size_mb:.0f} MB, median of {args.repeat})",
        "",
        "| runner | seconds | events/s | vs Python |",
        "|---|---|---|---|",
        f"| DuckDB (`engine query`'s view and SQL) | {d:.3f} | {args.events / d:,.0f} | "
        f"{p / d:.1f}x |",
        f"| Python `json` scan, grouped in a dict | {p:.3f} | {args.events / p:,.0f} | 1.0x |",
        f"| whole `engine query` command (process start-up included) | {c:.3f} | | |",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
