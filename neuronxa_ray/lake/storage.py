"""Where the lake lives: one filesystem abstraction over a local directory or an object store (pyarrow.fs).

A lake root is a local path (made absolute here, in the driver, before anything is shipped to Ray workers) or a
URI: ``s3://bucket/prefix``, ``gs://bucket/prefix``, ``az://container/prefix`` (or ``abfs[s]://...``), ``file://``.

S3 settings come from the standard AWS places, as pyarrow's S3FileSystem reads them (AWS_ACCESS_KEY_ID /
AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, AWS_PROFILE with ~/.aws/credentials and ~/.aws/config, instance
metadata); pyarrow does not read the endpoint and region variables, so this module does: AWS_ENDPOINT_URL_S3 or
AWS_ENDPOINT_URL (e.g. ``http://127.0.0.1:8333`` for MinIO or SeaweedFS), AWS_REGION or AWS_DEFAULT_REGION.
GCS uses Google's default credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud, metadata server); Azure uses
AZURE_STORAGE_ACCOUNT_NAME (+ AZURE_STORAGE_ACCOUNT_KEY or the default Azure credential chain).

Writes: local files go to a temporary name in the same directory and are renamed into place; object-store objects
are written once under their final name (a PUT, single or multipart, becomes visible whole or not at all).
Nothing is ever written to a local directory named after a URI.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import socket
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pyarrow as pa
import pyarrow.fs as pafs

from neuronxa_ray.errors import NeuronxaError

log = logging.getLogger(__name__)

SCHEMES = ("file", "s3", "gs", "gcs", "az", "abfs", "abfss")
ALLOWED = "a local path, file://, s3://bucket/prefix, gs://bucket/prefix, az://container/prefix, abfs[s]://"


@dataclass(frozen=True)
class Entry:
    """One file under the lake: its path relative to the root, its size and modification time (epoch s)."""

    path: str
    size: int
    mtime: float | None = None


def _endpoint() -> tuple[str | None, str | None]:
    """(host[:port], scheme) from AWS_ENDPOINT_URL_S3 / AWS_ENDPOINT_URL, which pyarrow itself ignores."""
    url = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if not url:
        return None, None
    parsed = urlparse(url if "://" in url else f"https://{url}")
    return parsed.netloc + parsed.path.rstrip("/"), parsed.scheme or "https"


def s3_options() -> dict:
    """S3 settings from this process's environment (the driver's): endpoint, region, and keys when set there.

    They travel with the Lake to Ray workers (like a pickled pyarrow S3FileSystem), so workers write where the
    driver checked; without keys in the environment each process uses its own credential chain (profile, role).
    """
    endpoint, scheme = _endpoint()
    options: dict = {}
    if endpoint:
        options["endpoint_override"] = endpoint
        options["scheme"] = scheme
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        options["region"] = region
    elif endpoint:  # a custom endpoint (MinIO, SeaweedFS, ...) ignores the region, but the SDK wants one
        options["region"] = "us-east-1"
    if os.environ.get("AWS_ACCESS_KEY_ID") and os.environ.get("AWS_SECRET_ACCESS_KEY"):
        options["access_key"] = os.environ["AWS_ACCESS_KEY_ID"]
        options["secret_key"] = os.environ["AWS_SECRET_ACCESS_KEY"]
        if os.environ.get("AWS_SESSION_TOKEN"):
            options["session_token"] = os.environ["AWS_SESSION_TOKEN"]
    return options


def make_s3(options: dict | None = None, fast: bool = False) -> pafs.S3FileSystem:
    """An S3FileSystem; fast=True: one attempt, short timeouts (for the writability probe)."""
    kwargs: dict = {**(s3_options() if options is None else options), "connect_timeout": 3.0 if fast else 10.0}
    if fast:
        kwargs["request_timeout"] = 10.0
        kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=1)
    else:
        kwargs["retry_strategy"] = pafs.AwsStandardS3RetryStrategy(max_attempts=5)
    return pafs.S3FileSystem(**kwargs)


def _azure(container_path: str, uri: str) -> tuple[pafs.FileSystem, str]:
    account = os.environ.get("AZURE_STORAGE_ACCOUNT_NAME") or os.environ.get("AZURE_STORAGE_ACCOUNT")
    if not account:
        raise NeuronxaError(f"lake {uri!r}: az:// needs AZURE_STORAGE_ACCOUNT_NAME set (the storage account)")
    key = os.environ.get("AZURE_STORAGE_ACCOUNT_KEY") or os.environ.get("AZURE_STORAGE_KEY")
    try:
        return pafs.AzureFileSystem(account_name=account, account_key=key), container_path
    except (AttributeError, pa.ArrowNotImplementedError):  # a pyarrow built without Azure: adlfs via fsspec
        try:
            import adlfs
        except ImportError as e:
            raise NeuronxaError(f"lake {uri!r}: this pyarrow lacks Azure; pip install 'neuronxa_ray[azure]'") from e
        handler = pafs.FSSpecHandler(adlfs.AzureBlobFileSystem(account_name=account, account_key=key))
        return pafs.PyFileSystem(handler), container_path


@dataclass
class Storage:
    """A lake root on some filesystem. Paths given to its methods are relative to the root ('a/b.parquet')."""

    uri: str  # absolute local path, or scheme://bucket/prefix
    scheme: str  # 'file' or the URI scheme
    base: str  # the root as a path on `fs` (a local absolute path, or 'bucket/prefix')
    options: dict = field(default_factory=dict, repr=False)  # S3: settings resolved in the driver
    _fs: pafs.FileSystem | None = field(default=None, repr=False)

    @classmethod
    def from_root(cls, root: str | Path) -> Storage:
        """Parse a lake root; local relative paths become absolute now (the driver's working directory)."""
        text = os.fspath(root).strip()
        if not text:
            raise NeuronxaError(f"lake {text!r}: empty; give {ALLOWED}")
        if "://" not in text:
            path = str(Path(text).expanduser().absolute())
            return cls(uri=os.path.normpath(path), scheme="file", base=os.path.normpath(path))
        scheme = text.split("://", 1)[0].lower()
        if scheme not in SCHEMES:
            raise NeuronxaError(f"lake {text!r}: unknown scheme {scheme + '://'!r}; allowed: {ALLOWED}")
        if scheme == "file":
            path = os.path.normpath(urlparse(text).path)
            return cls(uri=path, scheme="file", base=path)
        rest = text.split("://", 1)[1].rstrip("/")
        if scheme in ("abfs", "abfss"):  # container@account.dfs.core.windows.net/path: pyarrow parses it
            fs, base = pafs.FileSystem.from_uri(text)
            return cls(uri=text.rstrip("/"), scheme=scheme, base=base.rstrip("/"), _fs=fs)
        bucket = rest.split("/", 1)[0]  # s3:///prefix: empty
        if not bucket:
            raise NeuronxaError(f"lake {text!r}: no bucket; give {scheme}://bucket/prefix")
        scheme = "gs" if scheme == "gcs" else scheme
        rest = posixpath.normpath(rest)
        options = s3_options() if scheme == "s3" else {}
        return cls(uri=f"{scheme}://{rest}", scheme=scheme, base=rest, options=options)

    @property
    def is_local(self) -> bool:
        return self.scheme == "file"

    @property
    def bucket(self) -> str:
        return self.base.split("/", 1)[0]

    @property
    def fs(self) -> pafs.FileSystem:
        """The pyarrow filesystem (created on first use, in whichever process uses it)."""
        if self._fs is None:
            self._fs = self._make_fs(fast=False)
        return self._fs

    def _make_fs(self, fast: bool) -> pafs.FileSystem:
        if self.is_local:
            return pafs.LocalFileSystem()
        if self.scheme == "s3":
            return make_s3(self.options, fast)
        if self.scheme == "gs":
            try:
                return pafs.GcsFileSystem(retry_time_limit=dt_seconds(10 if fast else 60))
            except (AttributeError, pa.ArrowNotImplementedError) as e:
                raise NeuronxaError(f"lake {self.uri!r}: this pyarrow was built without GCS support") from e
        if self.scheme == "az":
            return _azure(self.base, self.uri)[0]
        return pafs.FileSystem.from_uri(self.uri)[0]

    def __getstate__(self) -> dict:  # filesystems are rebuilt from the URI and the environment where they are used
        return {"uri": self.uri, "scheme": self.scheme, "base": self.base, "options": self.options}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _fs=None)

    # -- paths ---------------------------------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        """The path of rel on `fs`."""
        return posixpath.join(self.base, rel) if not self.is_local else os.path.join(self.base, rel)

    def full_uri(self, rel: str) -> str:
        return self.path(rel) if self.is_local else f"{self.uri}/{rel}"

    def relative(self, path: str | Path) -> str:
        """rel from a path that may be relative already, absolute under the root, or a URI under the root."""
        text = os.fspath(path)
        for prefix in (self.uri, self.base):
            if text == prefix:
                return ""
            if text.startswith(prefix.rstrip("/") + "/"):
                return text[len(prefix.rstrip("/")) + 1 :]
        if os.path.isabs(text) or "://" in text:
            raise NeuronxaError(f"path {text!r} is not inside the lake {self.uri!r}")
        return text

    # -- reading -------------------------------------------------------------------------------------------------
    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open_input_stream(self.path(rel)) as f:
            return f.read()

    def open_input_file(self, rel: str):
        return self.fs.open_input_file(self.path(rel))

    def info(self, rel: str) -> Entry | None:
        """The file's size, or None when it does not exist (or is a directory)."""
        fi = self.fs.get_file_info(self.path(rel))
        if fi.type != pafs.FileType.File:
            return None
        return Entry(rel, fi.size, fi.mtime.timestamp() if fi.mtime else None)

    def is_directory(self, rel: str) -> bool:
        """Whether a directory lies at rel: locally, or on an object store keys under rel/ and no object rel (stores
        backed by a filesystem, such as SeaweedFS or MinIO, may then refuse to write the object rel)."""
        return self.fs.get_file_info(self.path(rel)).type == pafs.FileType.Directory

    def exists(self) -> bool:
        """Whether the root exists (a directory locally; anything under the prefix on an object store)."""
        try:
            fi = self.fs.get_file_info(self.base)
        except (OSError, pa.ArrowException) as e:
            raise NeuronxaError(f"lake {self.uri!r} cannot be read: {_cause(str(e), self.bucket)}") from None
        return fi.type == pafs.FileType.Directory

    def list(self, rel: str = "") -> list[Entry]:
        """Every file under rel (recursive), sorted by path; [] when rel does not exist."""
        root = self.path(rel) if rel else self.base
        try:
            infos = self.fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        for fi in infos:
            if fi.type == pafs.FileType.File:
                rel_path = fi.path[len(self.base.rstrip("/")) + 1 :].replace(os.sep, "/")
                out.append(Entry(rel_path, fi.size, fi.mtime.timestamp() if fi.mtime else None))
        return sorted(out, key=lambda e: e.path)

    def sizes(self, rel: str = "") -> dict[str, int]:
        """path -> bytes of every file under rel (recursive; {} when rel does not exist): list() without the
        modification times or sorting, for listings of many files (locally with os.scandir, a few times faster)."""
        root = self.path(rel) if rel else self.base
        if not self.is_local:
            try:
                infos = self.fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
            except (FileNotFoundError, NotADirectoryError):
                return {}
            n = len(self.base.rstrip("/")) + 1
            return {fi.path[n:]: fi.size for fi in infos if fi.type == pafs.FileType.File}
        return _local_sizes(root, len(self.base.rstrip(os.sep)) + 1)

    # -- writing -------------------------------------------------------------------------------------------------
    def write_with(self, rel: str, writer) -> int:
        """The one atomic-write helper: writer(stream) writes the whole file; readers see all of it or none.

        Local: a temporary name beside the target, then a rename. Object stores: the final name directly (a PUT
        is atomic; there is no rename), so callers write each file once under a deterministic name.
        Returns the bytes written.
        """
        target = self.path(rel)
        if not self.is_local:
            with self.fs.open_output_stream(target) as out:
                writer(out)
                return out.tell()
        parent = os.path.dirname(target)
        os.makedirs(parent, exist_ok=True)
        tmp = os.path.join(parent, f".{os.path.basename(target)}.{uuid.uuid4().hex}.tmp")
        try:
            with self.fs.open_output_stream(tmp) as out:
                writer(out)
                size = out.tell()
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return size

    def write_bytes(self, rel: str, data: bytes) -> None:
        self.write_with(rel, lambda out: out.write(data))

    def delete(self, rel: str) -> bool:
        """Delete one file; False when there is none (nothing, or a directory: delete_directory deletes that; an
        object store's delete of a key prefix finds no object either)."""
        try:
            self.fs.delete_file(self.path(rel))
            return True
        except (FileNotFoundError, IsADirectoryError):
            return False

    def delete_directory(self, rel: str) -> bool:
        """Delete the directory at rel with what it holds (on an object store: every key under rel/), where the lake
        writes a file (a rerun could not write it there); False when there is none."""
        if not self.is_directory(rel):
            return False
        self.fs.delete_dir(self.path(rel))
        return True

    def prune_empty_dirs(self, rel: str, keep: int = 3) -> None:
        """Remove the empty local directories above a deleted file, up to its first `keep` path components (the
        table/model=/checkpoint= partition stays); listings then walk no empty language directories. Object
        stores have no directories: nothing to do."""
        if not self.is_local:
            return
        parts = rel.split("/")[:-1]
        while len(parts) > keep:
            try:
                os.rmdir(self.path("/".join(parts)))
            except OSError:  # not empty (or gone): stop
                return
            parts.pop()

    def check_writable(self) -> None:
        """Raise ValueError (one line: the lake and the cause) unless a probe file can be written and deleted.

        Fast (a few seconds at most: one attempt, short timeouts) so a bad lake fails before any model loads.
        """
        where = f"lake {self.uri!r}"
        if self.is_local:
            _probe_local(Path(self.base), where)
        else:
            _probe_object_store(self._make_fs(fast=True), self.base, self.bucket, where)


def dt_seconds(s: float):
    import datetime as dt

    return dt.timedelta(seconds=s)


def _cause(message: str, bucket: str) -> str:
    """A short cause from an SDK error message (which can run to several lines)."""
    text = " ".join(message.split())
    low = text.lower().replace("_", "")
    if "nosuchbucket" in low or "bucket does not exist" in low or ("not found" in low and "bucket" in low):
        return f"bucket {bucket!r} does not exist"
    if any(k in low for k in ("invalidaccesskeyid", "signaturedoesnotmatch", "access denied", "accessdenied")):
        return f"the credentials were refused ({_short(text)})"
    if "403" in low or "forbidden" in low:
        return f"access forbidden ({_short(text)})"
    if any(k in low for k in ("connect", "resolve host", "timed out", "timeout", "network")):
        return f"endpoint unreachable ({_short(text)})"
    return _short(text)


def _short(text: str, n: int = 200) -> str:
    return text if len(text) <= n else text[: n - 3] + "..."


def _local_sizes(root: str, n: int) -> dict[str, int]:
    """path[n:] -> bytes of every file under a local directory (os.scandir: a few times faster than pyarrow)."""
    out: dict[str, int] = {}
    stack = [root]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except (FileNotFoundError, NotADirectoryError):
            continue
        with entries:
            for e in entries:
                if e.is_dir():
                    stack.append(e.path)
                elif e.is_file():
                    out[e.path[n:].replace(os.sep, "/")] = e.stat().st_size
    return out


def _probe_local(p: Path, where: str) -> None:
    """Create the directory and write and delete a probe file in it, or raise naming the cause. Directories the
    probe created are removed again: a run that then stops on a mistake (its data, its model) leaves no empty lake
    behind; the first write creates them."""
    created = []
    for parent in [p, *p.parents]:
        if parent.exists():
            if not parent.is_dir():
                raise NeuronxaError(f"{where} is not writable: {str(parent)!r} is a file, not a directory")
            break
        created.append(parent)
    try:
        for attempt in range(3):  # a second run probing the same new lake may remove the directory meanwhile
            try:
                p.mkdir(parents=True, exist_ok=True)
                probe = p / f".write-probe-{uuid.uuid4().hex}"
                probe.write_bytes(b"")
                probe.unlink()
                break
            except FileNotFoundError:
                if attempt == 2:
                    raise
    except OSError as e:
        raise NeuronxaError(f"{where} is not writable: {e.strerror or e}") from None
    finally:
        for directory in created:  # deepest first; one another process wrote into meanwhile stays
            with contextlib.suppress(OSError):
                directory.rmdir()


def _probe_object_store(fs: pafs.FileSystem, base: str, bucket: str, where: str) -> None:
    """Write and delete a probe object under _probe/, or raise naming the cause (missing bucket, credentials...)."""
    probe = posixpath.join(base, f"_probe/{socket.gethostname()}-{uuid.uuid4().hex}")
    try:
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise NeuronxaError(f"{where} is not writable: bucket {bucket!r} does not exist")
        with fs.open_output_stream(probe) as out:
            out.write(b"")
        fs.delete_file(probe)
    except (OSError, pa.ArrowException) as e:
        raise NeuronxaError(f"{where} is not writable: {_cause(str(e), bucket)}") from None
