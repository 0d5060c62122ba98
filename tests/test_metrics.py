"""metrics.jsonl (tinyllm.metrics): one JSON object per line, flushed as written, readable while a run writes."""

import json

from tinyllm.metrics import MetricsWriter, read_metrics


class Sink:
    def __init__(self):
        self.rows, self.closed = [], False

    def write(self, row):
        self.rows.append(row)

    def close(self):
        self.closed = True


def test_rows_are_flushed_as_written_and_non_finite_numbers_become_null(tmp_path):
    path = tmp_path / "metrics.jsonl"
    sink = Sink()
    w = MetricsWriter(path, append=False, tensorboard=sink)
    try:
        w.write({"step": 1, "loss": 2.5, "sample": "é\n"})
        w.write({"step": 2, "loss": float("nan"), "grad_norm": float("inf")})
        lines = path.read_text(encoding="utf-8").splitlines()  # readable before close: flushed
        assert [json.loads(ln) for ln in lines] == [{"step": 1, "loss": 2.5, "sample": "é\n"},
                                                    {"step": 2, "loss": None, "grad_norm": None}]
        assert "é" in lines[0]
        assert sink.rows[1] == {"step": 2, "loss": None, "grad_norm": None}  # the second sink gets the same rows
    finally:
        w.close()
    assert sink.closed


def test_append_keeps_the_rows_and_a_fresh_writer_starts_over(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for append, step in ((False, 1), (True, 2)):
        w = MetricsWriter(path, append=append)
        w.write({"step": step})
        w.close()
    assert read_metrics(path) == [{"step": 1}, {"step": 2}]
    w = MetricsWriter(path, append=False)
    w.close()
    assert read_metrics(path) == []


def test_reading_skips_a_half_written_last_line_and_a_missing_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo', encoding="utf-8")
    assert read_metrics(path) == [{"step": 1}, {"step": 2}]
    assert read_metrics(tmp_path / "none.jsonl") == []
