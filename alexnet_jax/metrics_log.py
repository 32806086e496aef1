"""Writes metric events to ``metrics.jsonl`` (one JSON object per line) and TensorBoard."""

import contextlib
import json
import pathlib

import tensorboardX

from alexnet_jax import files

METRICS_FILE = "metrics.jsonl"


def read_metrics(workdir: str | pathlib.Path) -> list[dict]:
    """The records of ``metrics.jsonl``; a line that does not parse (the last one, cut short by a kill
    while it was appended) is left out, and the next resume rewrites the file without it."""
    path = pathlib.Path(workdir) / METRICS_FILE
    if not path.exists():
        return []
    records = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return [r for r in records if isinstance(r, dict) and "kind" in r and "step" in r]


class MetricsLog:
    """Appends events. On resume it first drops the events logged after the restored step, in
    metrics.jsonl (rewritten by rename) and in TensorBoard (its purge step hides them)."""

    def __init__(self, workdir: str | pathlib.Path, resume_step: int = 0, enabled: bool = True):
        """``enabled=False`` (processes other than 0): records are made and returned, nothing is written."""
        self._file = self._tensorboard = None
        if not enabled:
            return
        workdir = pathlib.Path(workdir)
        kept = [r for r in read_metrics(workdir) if r["step"] <= resume_step]
        self._path = workdir / METRICS_FILE
        files.write_text(self._path, "".join(json.dumps(r) + "\n" for r in kept))
        self._file = self._path.open("a")
        # TensorBoard discards events of earlier files at steps >= purge_step when it reads this one.
        self._tensorboard = tensorboardX.SummaryWriter(str(workdir / "tensorboard"), purge_step=resume_step + 1)

    def write(self, kind: str, step: int, values: dict) -> dict:
        """Logs ``values`` (plain numbers) under ``kind`` ('train' or 'eval') at ``step``."""
        record = {"kind": kind, "step": int(step), **{k: float(v) for k, v in values.items()}}
        if self._file is None:
            return record
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        for key, value in values.items():
            self._tensorboard.add_scalar(f"{kind}/{key}", float(value), int(step))
        return record

    def close(self, quietly: bool = False):
        """Closes the files; ``quietly`` (the disk is full): what cannot be written is dropped."""
        if self._file is None:
            return
        with contextlib.suppress(*((OSError,) if quietly else ())):
            self._file.close()
        with contextlib.suppress(*((OSError,) if quietly else ())):
            self._tensorboard.close()
