"""Files written whole or not at all: written beside their final path, then renamed over it, so a
reader, or a kill at any moment, finds the old file or the new one, never a part of one."""

import contextlib
import errno
import os
import pathlib
import shutil

from alexnet_jax.errors import UserError


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
        _reserve(temporary, path)
        yield array
        array.flush()


def _reserve(temporary: pathlib.Path, path):
    """Allocates ``temporary``'s disk blocks now: a full disk is then one clear error before any
    work, not a SIGBUS when a mapped page is written back."""
    size = temporary.stat().st_size
    try:
        with temporary.open("rb+") as f:
            os.posix_fallocate(f.fileno(), 0, size)
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        free = shutil.disk_usage(temporary.parent).free
        raise UserError(f"{path} needs {size / 1e9:.2f} GB of disk and {free / 1e9:.2f} GB are free; make space") from e
