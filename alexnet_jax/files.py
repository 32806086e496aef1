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


def keep_rows(path: str | pathlib.Path, rows: int):
    """Cuts the .npy at ``path`` (C order, format 1.0, as ``writing_npy`` writes it) to its first
    ``rows`` rows in place: its header rewritten to the same length, the file truncated after them;
    nothing copied, no disk asked for."""
    import numpy as np

    with open(path, "r+b") as f:
        np.lib.format.read_magic(f)
        shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        start = f.tell()  # where the rows begin: the header keeps its length
        header = {"descr": np.lib.format.dtype_to_descr(dtype), "fortran_order": fortran, "shape": (rows, *shape[1:])}
        text = repr(header).encode("latin1")
        f.seek(10)  # magic (6 bytes), version (2), header length (2)
        f.write(text.ljust(start - 10 - 1) + b"\n")
        f.truncate(start + rows * int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
        f.flush()
        os.fsync(f.fileno())
