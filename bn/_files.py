"""The files behind :mod:`bn.data`'s datasets: what a file read was (size, SHA-256), the published IDX
files of MNIST and Fashion-MNIST and their checksummed download from mirrors (with what to do when it
fails), and the framing of TFRecord files.

Standard library only. :mod:`bn.data` re-exports every public name here (``DataError``, ``DataFile``,
``file_record``, ``IDX_MIRRORS``, ``IDX_FILES``, ``tfrecord_records``, ``TFRecordSource``), and that is where
user code imports them from; its :func:`bn.data.download_idx` chooses the files, mirrors and directory and
calls :func:`download_all`.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import socket
import struct
import urllib.error
import urllib.request
from typing import Callable, NamedTuple, Sequence

from bn.artifacts import atomic_file
from bn.errors import RunError, UsageError


class DataError(UsageError):
  """A dataset is missing, truncated or corrupt; the message says which file and how to get it."""


class DataFile(NamedTuple):
  """One file a dataset was read from: absolute path, size in bytes, SHA-256 (hex). ``_asdict()`` for JSON."""

  path: str
  size: int
  sha256: str


def file_record(path: str, data: bytes | None = None) -> DataFile:
  """:class:`DataFile` of ``path``; from ``data`` (its bytes, already read) when given, else streamed."""
  if data is None:
    h, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
      while chunk := f.read(1 << 20):
        h.update(chunk)
        size += len(chunk)
    return DataFile(os.path.abspath(path), size, h.hexdigest())
  return DataFile(os.path.abspath(path), len(data), hashlib.sha256(data).hexdigest())


# Where `bn data prepare mnist|fashion_mnist` downloads the IDX files from, tried in order.
# Fashion-MNIST: its home, the zalandoresearch/fashion-mnist repository (data/fashion/), and
# the S3 site its README links (plain HTTP only). MNIST: Google's CVDF mirror (the one TFDS
# uses) and the mirror torchvision uses (LeCun's original files). The checksums below decide
# whether a file is accepted, whatever the mirror or transport.
IDX_MIRRORS = {
    "fashion_mnist": ("https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/",
                      "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"),
    "mnist": ("https://storage.googleapis.com/cvdf-datasets/mnist/",
              "https://ossci-datasets.s3.amazonaws.com/mnist/"),
}
# file name -> (size in bytes, SHA-256) of the files as published (the values of TFDS's
# url_checksums for these URLs; for Fashion-MNIST the same files as the MD5s in its README).
# Cross-check: the Debian package's .gz files are these files with the gzip header's file
# name dropped and its time stamp changed -- restoring both gives exactly these SHA-256s
# (tests/test_download.py), so the IDX content is the same byte for byte.
IDX_FILES = {
    "fashion_mnist": {
        "train-images-idx3-ubyte.gz": (26421880, "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        "train-labels-idx1-ubyte.gz": (29515, "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        "t10k-images-idx3-ubyte.gz": (4422102, "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        "t10k-labels-idx1-ubyte.gz": (5148, "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    },
    "mnist": {
        "train-images-idx3-ubyte.gz": (9912422, "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        "train-labels-idx1-ubyte.gz": (28881, "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        "t10k-images-idx3-ubyte.gz": (1648877, "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        "t10k-labels-idx1-ubyte.gz": (4542, "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    },
}


class _Refused(Exception):
  """A download that arrived but is not the file we want (size or checksum)."""


def _matches(path: str, size: int, sha256: str) -> bool:
  return os.path.isfile(path) and os.path.getsize(path) == size and file_record(path).sha256 == sha256


def _fetch(url: str, path: str, size: int, sha256: str, timeout: float) -> None:
  """Downloads ``url`` to a temporary file next to ``path``; renames it to ``path`` only when its
  size and SHA-256 are the expected ones. Nothing is left behind on any failure."""
  with atomic_file(path, "wb", suffix=".part") as f, urllib.request.urlopen(url, timeout=timeout) as r:
    length = r.headers.get("Content-Length")
    if length is not None and length.isdigit() and int(length) != size:
      raise _Refused(f"the server announces {int(length)} bytes, expected {size}")
    h, got = hashlib.sha256(), 0
    while chunk := r.read(1 << 20):
      got += len(chunk)
      if got > size:
        raise _Refused(f"more than the expected {size} bytes")
      h.update(chunk)
      f.write(chunk)
    if got != size:
      raise _Refused(f"{got} bytes, expected {size}")
    if h.hexdigest() != sha256:
      raise _Refused(f"SHA-256 {h.hexdigest()}, expected {sha256}")


def download_all(name: str, files: dict[str, tuple[int, str]], directory: str, mirrors: Sequence[str], timeout: float,
                 log: Callable[[str], None], system_dir: str | None = None) -> None:
  """Downloads each of ``files`` (name -> (size, SHA-256)) of dataset ``name`` into ``directory``, from the first of
  ``mirrors`` that serves it with that size and SHA-256; a file already there with them is kept. Raises
  :class:`~bn.errors.RunError` naming every mirror tried and what to do (:func:`download_advice`; ``system_dir``: where
  a system package keeps copies) when a file cannot be had; nothing is saved for that file."""
  for fname, (size, sha256) in files.items():
    path = os.path.join(directory, fname)
    if _matches(path, size, sha256):
      log(f"{name}: {fname} already in {directory} (SHA-256 checked)")
      continue
    failures, kinds = [], set()
    for base in mirrors:
      url = base.rstrip("/") + "/" + fname
      log(f"{name}: downloading {url} ({size / 1e6:.1f} MB)")
      try:
        _fetch(url, path, size, sha256, timeout)
        break
      except _Refused as e:
        failures.append(f"{url}: refused, {e}")
        kinds.add("refused")
      except (OSError, http.client.HTTPException) as e:  # URLError, HTTPError, timeouts, resets
        failures.append(f"{url}: {getattr(e, 'reason', None) or e}")
        kinds.add(_failure_kind(url, e))
    else:
      raise RunError(f"cannot download {name}'s {fname}; nothing was saved for it. Tried: " + "; ".join(failures)
                     + ". " + download_advice(name, list(files), directory, kinds, system_dir))


def _failure_kind(url: str, e: BaseException) -> str:
  """"certificate" (HTTPS certificate not verified), "local" (a file:// mirror), else "network"."""
  import ssl

  if isinstance(getattr(e, "reason", None), ssl.SSLCertVerificationError) or isinstance(e, ssl.SSLCertVerificationError):
    return "certificate"
  return "local" if url.startswith("file:") else "network"


def download_advice(name: str, names: Sequence[str], directory: str, kinds: set[str], system_dir: str | None = None) -> str:
  """What to do about failed downloads of ``kinds`` (see :func:`_failure_kind`; "refused": a file
  arrived but is not the published one) of the files ``names`` of dataset ``name``."""
  files = ", ".join(names)
  copy = f"copy the four files ({files}) from a connected machine into {directory}"
  system = system_dir
  out = []
  if "certificate" in kinds:
    out.append("The HTTPS certificate could not be verified: this Python finds no CA certificates (python.org's macOS "
               "build: run its 'Install Certificates.command'; elsewhere: `pip install certifi` and "
               "`export SSL_CERT_FILE=$(python -m certifi)`), or a proxy replaces the certificate (set SSL_CERT_FILE "
               "to its CA bundle); then re-run.")
  if "refused" in kinds:
    out.append("A file that arrived is not the published one (its size or SHA-256 differs), so it was not kept; "
               "a mirror must serve the published .gz files byte for byte.")
    if system:
      out.append(f"The Debian/Ubuntu package's copies ({system}) differ from them in the gzip header only and need no "
                 f"preparing: bn reads them where they are (`bn data list`); from another directory pass it as "
                 f"--data-dir (bn data) or --config.data.data_dir (bn train).")
  if "local" in kinds:
    out.append(f"A file:// mirror is a directory that must hold the four files ({files}).")
  if "network" in kinds:
    out.append(f"Downloading needs network access over HTTP(S). Without it, {copy}"
               + (", or `apt-get install dataset-fashion-mnist` on Debian/Ubuntu." if name == "fashion_mnist" else "."))
  elif "certificate" in kinds or "local" in kinds:
    out.append(f"Or {copy}.")
  return " ".join(out)


def is_network_error(e: BaseException) -> bool:
  """Whether ``e`` (or an exception it was raised from) is a failure to reach the network."""
  while e is not None:
    if isinstance(e, (ConnectionError, TimeoutError, socket.gaierror, socket.timeout)) or (
        "ConnectionError" in type(e).__name__ or "Failed to resolve" in str(e)):
      return True
    e = e.__cause__ or e.__context__
  return False


# ----------------------------------------------------------------------------- TFRecord


def tfrecord_records(path: str) -> list[bytes]:
  """The records of a TFRecord file, without TensorFlow. Each record is framed as: length
  (u64 little-endian), its masked CRC-32C (u32), the data, its masked CRC-32C (u32); the
  framing is checked (a truncated file raises DataError), the CRCs are not."""
  with open(path, "rb") as f:
    raw = f.read()
  out, i = [], 0
  while i < len(raw):
    if i + 12 > len(raw):
      raise DataError(f"{path}: truncated TFRecord file (a record header is cut at byte {i}); prepare the dataset again.")
    (n,) = struct.unpack_from("<Q", raw, i)
    if i + 16 + n > len(raw):
      raise DataError(f"{path}: truncated TFRecord file (a record of {n} bytes at byte {i} runs past the end, "
                      f"{len(raw)} bytes); prepare the dataset again.")
    out.append(raw[i + 12:i + 12 + n])
    i += 16 + n
  return out


class TFRecordSource:
  """A random-access source over the TFRecord files of one split of a TFDS dataset prepared with
  ``file_format="tfrecord"`` (``tfds.load``'s default): records decoded with the dataset's own
  features (``deserialize_example_np``: NumPy and PIL, no TensorFlow), as ``tfds.data_source``
  does for array_record."""

  def __init__(self, files: Sequence[str], dataset_info):
    self.files, self.dataset_info = list(files), dataset_info
    self._records = [r for f in self.files for r in tfrecord_records(f)]

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, i):
    return self.dataset_info.features.deserialize_example_np(self._records[i])
