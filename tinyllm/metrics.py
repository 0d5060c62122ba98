"""metrics.jsonl: one JSON object per line, appended and flushed as it happens (ARCHITECTURE.md §5)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


class MetricsWriter:
    """`tensorboard`: an optional second sink (tinyllm.tensorboard.TensorBoardWriter) that gets every row."""

    def __init__(self, path: str | Path, append: bool, tensorboard: Any = None):
        self.path = Path(path)
        self._f = open(self.path, "a" if append else "w", encoding="utf-8")  # noqa: SIM115 - open all run
        self._tb = tensorboard

    def write(self, row: dict[str, Any]) -> None:
        # NaN/inf are not JSON; readers (GUI, benchmarks) get null instead of a parse error.
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in row.items()}
        self._f.write(json.dumps(clean, ensure_ascii=False) + "\n")
        self._f.flush()
        if self._tb is not None:
            self._tb.write(clean)

    def close(self) -> None:
        self._f.close()
        if self._tb is not None:
            self._tb.close()


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All complete rows; a half-written last line (a run still writing) is skipped, not an error."""
    rows = []
    p = Path(path)
    if not p.exists():
        return rows
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
