"""A local dataset mirror for the download tests: http.server on 127.0.0.1 in a thread, serving
small files in the real formats (idx gz, CIFAR python tar.gz) with HTTP Range support, plus the
md5sum file that `FACT_DATA_CHECKSUMS` points at (the shipped sums only match the real files)."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import tarfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np


def idx_bytes(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(s).to_bytes(4, "big")
                                                     for s in array.shape)
    return gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0)


def mnist_files(n_train: int = 64, n_test: int = 16, seed: int = 0) -> dict[str, bytes]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n_train + n_test, 28, 28))
    labels = rng.integers(0, 10, n_train + n_test)
    return {"train-images-idx3-ubyte.gz": idx_bytes(images[:n_train]),
            "train-labels-idx1-ubyte.gz": idx_bytes(labels[:n_train]),
            "t10k-images-idx3-ubyte.gz": idx_bytes(images[n_train:]),
            "t10k-labels-idx1-ubyte.gz": idx_bytes(labels[n_train:])}


def cifar_archive(folder: str, batches: dict[str, str], n: int = 4, classes: int = 10,
                  seed: int = 0) -> bytes:
    """A tar.gz holding `folder/<batch>` python pickles; `batches` maps name → labels key."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, key in batches.items():
            batch = {b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                     key.encode(): rng.integers(0, classes, n).tolist()}
            payload = pickle.dumps(batch, protocol=2)
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buffer.getvalue()


def cifar10_files() -> dict[str, bytes]:
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    return {"cifar-10-python.tar.gz": cifar_archive("cifar-10-batches-py",
                                                    dict.fromkeys(names, "labels"))}


def md5sums(files: dict[str, bytes]) -> str:
    return "".join(f"{hashlib.md5(data).hexdigest()}  {name}\n" for name, data in files.items())


class Mirror:
    """Serves `files`; `drop` names files whose first response stops halfway (connection cut).

    `requests` records (path, Range header) of every request."""

    def __init__(self, files: dict[str, bytes], drop: tuple[str, ...] = ()):
        self.files, self.drop, self.requests = dict(files), set(drop), []
        mirror = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                mirror.requests.append((name, self.headers.get("Range")))
                if name not in mirror.files:
                    self.send_error(404)
                    return
                data, start = mirror.files[name], 0
                if self.headers.get("Range", "").startswith("bytes="):
                    start = int(self.headers["Range"][6:].split("-")[0])
                    if start >= len(data):
                        self.send_error(416)
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                body = data[start:]
                if name in mirror.drop:
                    mirror.drop.discard(name)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/data"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Mirror:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def names(self) -> list[str]:
        return [name for name, _ in self.requests]
