"""Check that the quickstart behaved as designed (``make run`` calls this).

    python examples/check_quickstart.py EXIT_CODE [HOME]

The quickstart is designed to finish with 47 items done and 3 in the
dead-letter queue, so `engine run` exits 1 ("finished with failures"); this
script exits 0 when that is exactly what happened, and says what to try next.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def main() -> int:
    code = int(sys.argv[1])
    home = sys.argv[2] if len(sys.argv) > 2 else ".engine"
    engine = str(Path(sys.executable).with_name("engine"))
    status = json.loads(
        subprocess.run(
            [engine, "--home", home, "status", "latest", "--json"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    items = status["items"]
    expected = {"total": 50, "succeeded": 47, "dead": 3, "failed": 0, "pending": 0, "running": 0}
    wrong = {k: (items[k], v) for k, v in expected.items() if items[k] != v}
    if code != 1 or status["status"] != "completed" or wrong:
        print(
            f"quickstart did not behave as designed: exit {code}, status {status['status']}, "
            f"(got, expected): {wrong}",
            file=sys.stderr,
        )
        return 1
    print(
        "\nThe quickstart behaved as designed: 47 items done (3 of them after a retry), "
        "3 in the dead-letter queue.\n"
        "The CLI is .venv/bin/engine (`export PATH=$PWD/.venv/bin:$PATH` to type `engine`); "
        "try the commands above,\n"
        "or `engine stats latest` and `engine audit report latest`."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
