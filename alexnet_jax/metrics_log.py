"""Writes metric events to ``metrics.jsonl`` (one JSON object per line) and TensorBoard."""

import json
import pathlib

import tensorboardX

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
    path = pathlib.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class MetricsLog:
    """Appends events; on resume, first drops events logged after the restored step."""

    def __init__(self, workdir: str | pathlib.Path, resume_step: int = 0):
        workdir = pathlib.Path(workdir)
        kept = [r for r in read_metrics(workdir) if r["step"] <= resume_step]
        self._path = workdir / METRICS_FILE
        self._path.write_text("".join(json.dumps(r) + "\n" for r in kept))
        self._file = self._path.open("a")
        self._tensorboard = tensorboardX.SummaryWriter(str(workdir / "tensorboard"))

    def write(self, kind: str, step: int, values: dict) -> dict:
        """Logs ``values`` (plain numbers) under ``kind`` ('train' or 'eval') at ``step``."""
        record = {"kind": kind, "step": int(step), **{k: float(v) for k, v in values.items()}}
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in values.items():
            self._tensorboard.add_scalar(f"{kind}/{key}", float(value), int(step))
        return record

    def close(self):
        self._file.close()
        self._tensorboard.close()
