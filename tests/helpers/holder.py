"""Hold a run's writer lock until killed: prints 'held' once it has it.

python holder.py RUN_DIR
"""

from __future__ import annotations

import sys
import time

from ledger import LedgerWriter


def main() -> None:
    writer = LedgerWriter.open(sys.argv[1], "locked", create=True, command="holder --test")
    print("held", flush=True)
    try:
        while True:
            time.sleep(60)
    finally:
        writer.close()


if __name__ == "__main__":
    main()
