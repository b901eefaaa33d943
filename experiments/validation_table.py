"""The closing-note table of issue 5: every malformed input the test suite tries, with the
exception type and message tensorfact raises for it.

The cases are the test suite's own (``tests/test_tensorfact/test_validation.py::CASES``, each
asserted there for type and message, and for leaving the input unchanged); this script runs
them again and writes the table.

    python experiments/validation_table.py --out results/validation

Writes ``validation_table.md`` (Markdown) and ``validation_table.json`` to ``--out`` and prints
the Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from tests.test_tensorfact.test_validation import markdown_table, table_rows  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "results" / "validation")
    out = parser.parse_args(argv).out
    rows = table_rows()
    table = markdown_table(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "validation_table.md").write_text(table + "\n")
    records = [{"input": p, "exception": k, "message": m} for p, k, m in rows]
    (out / "validation_table.json").write_text(json.dumps(records, indent=1) + "\n")
    print(table)
    print(f"\n{len(rows)} malformed inputs; written to {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
