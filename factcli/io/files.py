"""Writing files so that an interrupted run never leaves a half-written one behind."""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import FactError


def check_writable(path: str | os.PathLike) -> Path:
    """Fail early (before a long computation) when `path` cannot be written."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise FactError(f"cannot write {target}: it is a directory")
    if target.exists() and not target.is_file():  # renaming over /dev/full would replace it
        raise FactError(f"cannot write {target}: not a regular file")
    if not folder.is_dir():
        raise FactError(f"cannot write {target}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise FactError(f"cannot write {target}: permission denied")
    return target


def make_parent(path: str | os.PathLike) -> None:
    """Create the missing folders above an output file (`--out runs/x.pt`)."""
    folder = Path(path).parent
    if str(folder) and not folder.exists():
        try:
            folder.mkdir(parents=True)
        except OSError as error:
            raise FactError(f"cannot create folder {folder}: {error.strerror}") from None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    A failed write (disk full, quota, file too large) is a FactError naming the target; the
    previous file is left as it was.
    """
    target = check_writable(path)
    try:
        handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp",
                                             dir=target.parent if str(target.parent) else ".")
    except OSError as error:
        raise FactError(f"cannot write {target}: {error.strerror or error}") from None
    os.close(handle)
    try:
        yield Path(temporary)
        with open(temporary, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, _mode(target))
        os.replace(temporary, target)
    except OSError as error:
        raise FactError(f"cannot write {target}: {error.strerror or error}") from None
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


@contextlib.contextmanager
def atomic_hdf5(path: str | os.PathLike, **options) -> Iterator:
    """An HDF5 file built in memory, then written to `path` by `atomic_path`: a full disk is
    then a plain OSError on one write (HDF5 itself reports it through crashes and noise)."""
    import io

    import h5py

    check_writable(path)
    buffer = io.BytesIO()
    with h5py.File(buffer, "w", **options) as handle:
        yield handle
    write_bytes(path, buffer.getbuffer())


def save_torch(path: str | os.PathLike, content: object) -> None:
    """`torch.save` atomically, serialized in memory first (torch reports a failed write as an
    opaque RuntimeError; a plain write says 'No space left on device')."""
    import io

    import torch

    check_writable(path)
    buffer = io.BytesIO()
    torch.save(content, buffer)
    write_bytes(path, buffer.getbuffer())


def write_bytes(path: str | os.PathLike, data: bytes | memoryview) -> None:
    with atomic_path(path) as temporary, open(temporary, "wb") as out:
        out.write(data)


def _mode(target: Path) -> int:
    """Keep an existing file's mode; a new file gets 0666 less the umask (mkstemp's is 0600)."""
    if target.exists():
        return target.stat().st_mode & 0o777
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
