"""What the live monitor and the run comparison draw, computed from metrics.jsonl rows (no gradio here)."""

from __future__ import annotations

import math
from typing import Any

from tinyllm.gui.runs import RunInfo, fmt_duration


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) else None


def loss_series(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    """(step, loss) points of the train rows and of the evaluations."""
    out: dict[str, list[tuple[int, float]]] = {"train": [], "val": []}
    for r in rows:
        for key, name in (("loss", "train"), ("val_loss", "val")):
            v = _num(r.get(key))
            if v is not None and "step" in r:
                out[name].append((int(r["step"]), v))
    return out


def speed_series(rows: list[dict[str, Any]]) -> dict[str, list[tuple[int, float]]]:
    return {"tokens/s": [(int(r["step"]), v) for r in rows
                         if (v := _num(r.get("tokens_per_sec"))) is not None and "step" in r]}


def steps_per_second(rows: list[dict[str, Any]]) -> float | None:
    """The recent training rate, from the last two train rows of the current session."""
    train = [r for r in rows if _num(r.get("loss")) is not None and _num(r.get("time_s")) is not None]
    if len(train) < 2:
        return None
    a, b = train[-2], train[-1]
    dt, ds = b["time_s"] - a["time_s"], b["step"] - a["step"]
    return ds / dt if dt > 0 and ds > 0 else None


def latest(rows: list[dict[str, Any]], key: str) -> Any:
    for r in reversed(rows):
        if r.get(key) is not None:
            return r[key]
    return None


def summary(info: RunInfo) -> dict[str, str]:
    """The monitor's numbers, formatted: status, step, losses, tokens/s, elapsed and ETA."""
    rows = info.rows
    rate = steps_per_second(rows)
    remaining = (info.max_steps - info.step) if info.max_steps else None
    eta = remaining / rate if (rate and remaining is not None and info.status in ("running", "stopping")) else None
    tok_s = _num(latest(rows, "tokens_per_sec"))

    def f4(v: Any) -> str:
        return f"{v:.4f}" if _num(v) is not None else "–"

    return {
        "status": info.status + (f" ({info.detail})" if info.detail and info.status != "running" else ""),
        "step": f"{info.step:,} / {info.max_steps:,}" if info.max_steps else f"{info.step:,}",
        "train loss": f4(info.last_loss),
        "val loss": f4(latest(rows, "val_loss")),
        "best val loss": f4(info.best_val_loss),
        "tokens/s": f"{tok_s:,.0f}" if tok_s is not None else "–",
        "elapsed (training)": fmt_duration(info.time_s if rows else None),
        "ETA": fmt_duration(eta) if eta is not None else "–",
    }


def summary_markdown(info: RunInfo, name: str | None = None) -> str:
    s = summary(info)
    head = " | ".join(s)
    return f"**{name or info.out_dir}**\n\n| {head} |\n|{'---|' * len(s)}\n| {' | '.join(s.values())} |"
