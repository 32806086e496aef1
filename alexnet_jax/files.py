"""Files written whole or not at all: written beside their final path, then renamed over it, so a
reader, or a kill at any moment, finds the old file or the new one, never a part of one."""

import contextlib
import os
import pathlib


@contextlib.contextmanager
def replacing(path: str | pathlib.Path):
    """Yields a temporary path beside ``path`` to write; on success it is synced and renamed over
    ``path``, on failure removed."""
    path = pathlib.Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield temporary
        with temporary.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def write_text(path: str | pathlib.Path, text: str):
    with replacing(path) as temporary:
        temporary.write_text(text)


def write_bytes(path: str | pathlib.Path, data: bytes):
    with replacing(path) as temporary:
        temporary.write_bytes(data)


def write_npy(path: str | pathlib.Path, array):
    """``array`` in NumPy's .npy format."""
    import numpy as np

    with replacing(path) as temporary, temporary.open("wb") as f:
        np.save(f, array)


@contextlib.contextmanager
def writing_npy(path: str | pathlib.Path, shape: tuple[int, ...], dtype):
    """Yields a writable array ``shape`` mapped onto a temporary .npy beside ``path`` (filled a part
    at a time, so memory holds none of it), renamed over ``path`` on success."""
    import numpy as np

    with replacing(path) as temporary:
        array = np.lib.format.open_memmap(temporary, mode="w+", dtype=dtype, shape=shape)
        yield array
        array.flush()
