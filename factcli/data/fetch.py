"""Downloading the standard image sets into a cache, verified against checksums shipped here.

`fetch("mnist")` returns the folder holding the dataset's files, downloading what is missing:

- the cache is `$FACT_DATA_DIR`, else the platform's cache folder (`~/.cache/factcli` on Linux,
  `$XDG_CACHE_HOME/factcli` when set, `~/Library/Caches/factcli` on macOS,
  `%LOCALAPPDATA%\\factcli\\Cache` on Windows); each set lives in its own subfolder;
- each file is downloaded to `<file>.part` (resumed with an HTTP Range request when a previous
  attempt was cut off), checked against the MD5 published for it, and only then renamed into
  place, so the cache never holds an unverified or half-written file; an archive (CIFAR) is
  unpacked into a temporary folder renamed into place;
- `offline=True` or `FACT_OFFLINE=1` never touches the network; `FACT_DATA_MIRROR=URL`
  replaces the mirror list (files are fetched as `URL/<file name>`).

The MD5 sums are the ones the dataset authors publish, as torchvision's dataset classes list
them (torchvision/datasets/mnist.py `MNIST.resources`, `FashionMNIST.resources`;
torchvision/datasets/cifar.py `CIFAR10.tgz_md5`, `CIFAR100.tgz_md5`). MD5 identifies the
published files; it is not a defence against a forger, which is why downloads use HTTPS mirrors
first.

`FACT_DATA_CHECKSUMS=FILE` replaces the expected sums by those of a local file in `md5sum`
format (`<md5>  <file name>` per line). It exists so that tests (and private mirrors of
re-packed files) can serve files other than the published ones through the same verification
path. It is read from the local disk only, never from a mirror, so a mirror cannot vouch for its
own files; a user who sets it has chosen which files to trust, and the checkpoint's dataset
fingerprint still records which copy was used.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import FactError

Progress = Callable[[str, int, int | None], None]  # (file name, bytes done, total or None)


@dataclass(frozen=True)
class Source:
    """Where a set's files come from and what they must hash to."""

    files: dict[str, str]          # file name → published MD5
    mirrors: tuple[str, ...]       # base URLs, tried in order
    archive_folder: str | None = None  # a tar.gz unpacks to this folder


SOURCES = {
    "mnist": Source({
        "train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c",
    }, ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")),
    "fashion-mnist": Source({
        "train-images-idx3-ubyte.gz": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "bb300cfdad3c16e7a12a480ee83cd310",
    }, ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/")),
    "cifar10": Source({"cifar-10-python.tar.gz": "c58f30108f718f92721af3b95e74349a"},
                      ("https://www.cs.toronto.edu/~kriz/",), "cifar-10-batches-py"),
    "cifar100": Source({"cifar-100-python.tar.gz": "eb9058c3a382ffc7106e4002c42a8d85"},
                       ("https://www.cs.toronto.edu/~kriz/",), "cifar-100-python"),
}
CHUNK = 1 << 16
QUIET = False  # `fact -q` turns the default progress bar off


def cache_dir() -> Path:
    """`$FACT_DATA_DIR`, else the platform cache folder for factcli."""
    if os.environ.get("FACT_DATA_DIR"):
        return Path(os.environ["FACT_DATA_DIR"])
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
        return base / "factcli" / "Cache"
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches" / "factcli"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "factcli"


def is_offline(offline: bool | None = None) -> bool:
    if offline is not None:
        return offline
    return os.environ.get("FACT_OFFLINE", "").strip().lower() not in ("", "0", "no", "false")


def mirrors(source: Source) -> tuple[str, ...]:
    override = os.environ.get("FACT_DATA_MIRROR", "").strip()
    return (override,) if override else source.mirrors


def expected_md5(source: Source) -> dict[str, str]:
    """The shipped sums, or those of `$FACT_DATA_CHECKSUMS` (see the module docstring)."""
    path = os.environ.get("FACT_DATA_CHECKSUMS", "").strip()
    if not path:
        return dict(source.files)
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as error:
        raise FactError(f"FACT_DATA_CHECKSUMS: cannot read {path}: {error.strerror}") from None
    table = {}
    for line in lines:
        digest, _, name = line.strip().partition(" ")
        if digest:
            table[name.strip().lstrip("*")] = digest.lower()
    return {name: table.get(name, digest) for name, digest in source.files.items()}


def check_name(name: str) -> Source:
    if name not in SOURCES:
        raise FactError(f"nothing to fetch for {name!r}; downloadable sets: {', '.join(SOURCES)}")
    return SOURCES[name]


def fetch(name: str, root: str | os.PathLike | None = None, *, offline: bool | None = None,
          progress: Progress | None = None) -> Path:
    """The folder `<root>/<name>` holding the set's verified files, downloading what is missing.

    Raises FactError (one line) when offline and files are missing, when every mirror fails
    (a partial file is kept for resuming) or when a download does not match its checksum (the
    bad file is deleted).
    """
    source = check_name(name)
    target = (Path(root) if root is not None else cache_dir()) / name
    done = target / source.archive_folder if source.archive_folder else target
    missing = [f for f in source.files if not (target / f).is_file()]
    if done.is_dir() and (source.archive_folder or not missing):
        return done
    if missing and is_offline(offline):
        raise FactError(f"{name} is not in {target} and downloads are off (--offline or "
                        f"FACT_OFFLINE); fetch it first: fact data fetch {name}")
    target.mkdir(parents=True, exist_ok=True)
    sums = expected_md5(source)
    report = progress if progress is not None else (None if QUIET else stderr_progress())
    for file in missing:
        _download(file, sums[file], target, mirrors(source), report)
    if source.archive_folder:
        _unpack(target / next(iter(source.files)), target, source.archive_folder)
    return done


def _download(file: str, md5: str, folder: Path, bases: tuple[str, ...],
              progress: Progress | None) -> None:
    """Download `file` from the first mirror that works into `folder`, verified, atomically."""
    part = folder / f"{file}.part"
    failures = []
    for base in bases:
        url = base.rstrip("/") + "/" + file
        try:
            _transfer(url, part, file, progress)
        except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as error:
            reason = getattr(error, "reason", None) or error
            failures.append(f"{url}: {reason}")
            continue
        actual = md5_of(part)
        if actual != md5:
            part.unlink()
            raise FactError(f"{url} does not match its published checksum (md5 {actual}, "
                            f"expected {md5}); nothing was cached")
        os.replace(part, folder / file)
        return
    kept = f" ({part.stat().st_size} bytes kept in {part}; run again to resume)" \
        if part.exists() and part.stat().st_size else ""
    raise FactError(f"could not download {file}: {'; '.join(failures)}{kept}")


def _transfer(url: str, part: Path, file: str, progress: Progress | None) -> None:
    """Append the rest of `url` to `part` (HTTP Range when `part` holds a previous attempt)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "factcli"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as error:
        if error.code != 416:  # 416: the range starts at the end, i.e. the file is complete
            raise
        return
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0  # the server ignored the range: start over
        length = response.headers.get("Content-Length")
        total = have + int(length) if length and length.isdigit() else None
        with open(part, "ab" if resumed else "wb") as handle:
            if progress:
                progress(file, have, total)
            while block := response.read(CHUNK):
                handle.write(block)
                have += len(block)
                if progress:
                    progress(file, have, total)
        if total is not None and have < total:
            raise http.client.IncompleteRead(b"", total - have)


def md5_of(path: Path) -> str:
    digest = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _unpack(archive: Path, folder: Path, inner: str) -> None:
    """Unpack the verified `archive`'s `inner/` folder next to it, atomically (rename)."""
    staging = Path(tempfile.mkdtemp(prefix=".unpack.", dir=folder))
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers()
                       if m.isfile() and Path(m.name).parts[:1] == (inner,)
                       and ".." not in Path(m.name).parts]
            tar.extractall(staging, members=members, filter="data")
        if not (staging / inner).is_dir():
            raise FactError(f"{archive} holds no {inner}/ folder")
        os.replace(staging / inner, folder / inner)
    except (tarfile.TarError, EOFError, OSError) as error:
        raise FactError(f"cannot unpack {archive}: {error}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def stderr_progress() -> Progress:
    """A progress bar per file on stderr; one line per file when stderr is not a terminal."""
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

    console = Console(stderr=True)
    columns = (TextColumn("[bold]downloading[/] {task.description}"), BarColumn(),
               DownloadColumn(), TransferSpeedColumn())
    state: dict[str, Any] = {}

    def update(file: str, done: int, total: int | None) -> None:
        if state.get("file") != file:
            if "bar" in state:
                state["bar"].stop()
            state["file"] = file
            if not console.is_terminal:
                console.print(f"downloading {file}", highlight=False, markup=False)
            state["bar"] = Progress(*columns, console=console, disable=not console.is_terminal)
            state["bar"].start()
            state["task"] = state["bar"].add_task(file, total=total)
        state["bar"].update(state["task"], completed=done, total=total)
        if total is not None and done >= total:
            state["bar"].stop()

    return update
