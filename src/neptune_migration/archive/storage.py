"""Where an archive lives: a local folder, or a prefix on object storage (`s3://bucket/prefix`, `gs://bucket/prefix`).

The reader and writer do their path arithmetic with `Path` (local) or `PurePosixPath` (`bucket/prefix/...` on the
object store) and all their I/O through a `Storage`, so both kinds of archive take the same code path. Object
storage goes through pyarrow's own filesystems (S3FileSystem, GcsFileSystem): no extra dependency.

Credentials and endpoint come from the standard environment: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
AWS_SESSION_TOKEN (or ~/.aws, or the instance role), AWS_REGION / AWS_DEFAULT_REGION, and AWS_ENDPOINT_URL_S3 /
AWS_ENDPOINT_URL for S3-compatible servers (MinIO, Ceph, ...), which pyarrow itself does not read. GCS uses the
Google default credentials (GOOGLE_APPLICATION_CREDENTIALS, gcloud, the instance's service account).
"""

from __future__ import annotations

import contextlib
import os
import re
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path, PurePosixPath
from typing import Any, TypeVar
from urllib.parse import urlsplit

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from neptune_migration.errors import ArchiveError, UsageError
from neptune_migration.secrets import redact

REMOTE_SCHEMES = ("s3", "gs", "gcs")
CHUNK = 8 << 20  # bytes per read/write when copying a payload: bounded memory whatever the file size
FILE, DIR = "file", "dir"

StoragePath = Path | PurePosixPath
T = TypeVar("T")


def is_remote(location: str | os.PathLike[str]) -> bool:
    return isinstance(location, str) and location.split("://", 1)[0].lower() in REMOTE_SCHEMES and "://" in location


def archive_location(value: str | os.PathLike[str] | None) -> str | Path | None:
    """An `--archive`/`--files` value: an object-store URL stays a string (pathlib would fold its `//`), else a Path."""
    if value is None:
        return None
    if isinstance(value, str) and is_remote(value):
        return value.rstrip("/")
    return Path(value)


class Storage:
    """A local folder tree. Symlinks are never followed out of the archive: they are simply not listed."""

    remote = False

    def url(self, path: StoragePath) -> str:
        return str(path)

    def kind(self, path: StoragePath) -> str | None:
        """FILE, DIR or None (absent). Follows a symlink: the root the user names may well be one."""
        path = Path(path)
        return FILE if path.is_file() else DIR if path.is_dir() else None

    def listdir(self, path: StoragePath) -> list[tuple[StoragePath, str]]:
        """Direct children as (path, FILE or DIR); symlinks inside the archive and other strangers left out."""
        out = []
        for child in Path(path).iterdir():
            kind = None if child.is_symlink() else self.kind(child)
            if kind is not None:
                out.append((child, kind))
        return out

    def files_under(self, path: StoragePath) -> list[tuple[str, StoragePath]]:
        """Every file below a folder as (relative posix path, path), symlinks left out."""
        root = Path(path)
        return [(p.relative_to(root).as_posix(), p) for p in sorted(root.rglob("*")) if p.is_file() and
                not p.is_symlink()]

    def size(self, path: StoragePath) -> int:
        return Path(path).stat().st_size

    def open_parquet(self, path: StoragePath) -> pq.ParquetFile:
        return pq.ParquetFile(path)

    def make_dir(self, path: StoragePath) -> None:
        Path(path).mkdir(parents=True, exist_ok=True)

    def check(self, root: StoragePath) -> None:
        """Nothing to check up front for a local folder: the first write or read says what is wrong."""


class ObjectStorage(Storage):
    """A bucket on S3 or GCS through pyarrow's filesystem layer. Paths are `bucket/key...`."""

    remote = True

    def __init__(self, scheme: str, fs: pafs.FileSystem, endpoint: str | None = None) -> None:
        self.scheme = scheme
        self.fs = fs
        self.endpoint = endpoint

    def url(self, path: StoragePath) -> str:
        return f"{self.scheme}://{path}"

    # Every call to the store goes through here, so a failure is one clear line whatever the operation.
    def _call(self, what: str, path: StoragePath, fn: Callable[..., T], *args: Any) -> T:
        try:
            return fn(*args)
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowException) as exc:
            raise ArchiveError(self.explain(exc, what, path)) from None

    def explain(self, exc: BaseException, what: str, path: StoragePath) -> str:
        text = " ".join(str(exc).split())
        bucket = str(path).split("/", 1)[0]
        where = f"{self.scheme}://{bucket}"
        if "NO_SUCH_BUCKET" in text or "NoSuchBucket" in text:
            return f"bucket {where} does not exist"
        if any(m in text for m in ("ACCESS_DENIED", "SIGNATURE_DOES_NOT_MATCH", "INVALID_ACCESS_KEY_ID",
                                   "InvalidAccessKeyId", "AccessDenied", "Forbidden", "PERMISSION_DENIED")):
            return (f"access to {where} denied while trying to {what}: check the credentials "
                    f"({_credential_hint(self.scheme)}) and the bucket's permissions")
        if any(m in text for m in ("NETWORK_CONNECTION", "curlCode", "Could not connect", "Couldn't connect",
                                   "Could not resolve", "Timeout", "timed out")):
            endpoint = self.endpoint or "the default endpoint"
            return (f"cannot reach the object store at {endpoint} to {what} {self.url(path)}: check the network "
                    "and AWS_ENDPOINT_URL / AWS_ENDPOINT_URL_S3" if self.scheme == "s3" else
                    f"cannot reach the object store to {what} {self.url(path)}: check the network")
        return redact(f"object store error while trying to {what} {self.url(path)}: {text[:300]}")

    def check(self, root: StoragePath) -> None:
        """Fail early, in one line, on a missing bucket, refused credentials or an unreachable endpoint."""
        bucket = str(root).split("/", 1)[0]
        info = self._call("check the bucket", PurePosixPath(bucket), self.fs.get_file_info, bucket)
        if info.type == pafs.FileType.NotFound:
            raise ArchiveError(f"bucket {self.scheme}://{bucket} does not exist (or these credentials cannot see it)")

    def kind(self, path: StoragePath) -> str | None:
        info = self._call("read", path, self.fs.get_file_info, str(path))
        return {pafs.FileType.File: FILE, pafs.FileType.Directory: DIR}.get(info.type)

    def listdir(self, path: StoragePath) -> list[tuple[StoragePath, str]]:
        selector = pafs.FileSelector(str(path), allow_not_found=True, recursive=False)
        infos = self._call("list", path, self.fs.get_file_info, selector)
        out: list[tuple[StoragePath, str]] = []
        for info in infos:
            kind = {pafs.FileType.File: FILE, pafs.FileType.Directory: DIR}.get(info.type)
            if kind is not None:
                out.append((PurePosixPath(info.path), kind))
        return out

    def files_under(self, path: StoragePath) -> list[tuple[str, StoragePath]]:
        selector = pafs.FileSelector(str(path), allow_not_found=True, recursive=True)
        infos = self._call("list", path, self.fs.get_file_info, selector)
        prefix = str(path).rstrip("/") + "/"
        return sorted((info.path[len(prefix):], PurePosixPath(info.path)) for info in infos
                      if info.type == pafs.FileType.File and info.path.startswith(prefix))

    def size(self, path: StoragePath) -> int:
        return int(self._call("read", path, self.fs.get_file_info, str(path)).size or 0)

    def open_parquet(self, path: StoragePath) -> pq.ParquetFile:
        # A random-access file: pyarrow fetches the footer, then only the row groups and columns asked for.
        handle = self._call("open", path, self.fs.open_input_file, str(path))
        return pq.ParquetFile(handle)

    def make_dir(self, path: StoragePath) -> None:
        self._call("create", path, self.fs.create_dir, str(path))

    def upload(self, local: Path, path: StoragePath) -> None:
        """Copy a local file to one object, in chunks. The object appears whole or not at all (one PUT or a
        multipart upload completed on close), which is what makes `part_0` uploaded last a commit marker."""

        def copy() -> None:
            with open(local, "rb") as src, self.fs.open_output_stream(str(path)) as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)

        self._call("write", path, copy)

    def download(self, path: StoragePath, local: Path) -> None:
        """Copy one object to a local file, in chunks, through a temporary name (never a half file)."""
        tmp = local.with_name(local.name + ".part")

        def copy() -> None:
            with self.fs.open_input_stream(str(path)) as src, open(tmp, "wb") as dst:
                while chunk := src.read(CHUNK):
                    dst.write(chunk)

        try:
            self._call("read", path, copy)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, local)

    def delete_file(self, path: StoragePath) -> bool:
        """Delete one object; False when it was not there."""
        try:
            self._call("delete", path, self.fs.delete_file, str(path))
        except FileNotFoundError:
            return False
        return True

    def delete_tree(self, path: StoragePath) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call("delete", path, self.fs.delete_dir, str(path))


def _credential_hint(scheme: str) -> str:
    if scheme == "s3":
        return "AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, AWS_PROFILE or the instance role"
    return "GOOGLE_APPLICATION_CREDENTIALS or gcloud's default credentials"


LOCAL = Storage()
_filesystems: dict[tuple[str, ...], ObjectStorage] = {}
_filesystems_lock = threading.Lock()


def open_storage(location: str | Path) -> tuple[Storage, StoragePath]:
    """(storage, root path) for an archive location: a folder, or `s3://bucket/prefix` / `gs://bucket/prefix`."""
    if not is_remote(location):
        return LOCAL, Path(location)
    assert isinstance(location, str)
    parts = urlsplit(location)
    scheme = parts.scheme.lower()
    if "@" in location:
        # `KEY:SECRET@bucket`. Never echo the value: it holds a credential, perhaps with a `/` that moves the `@`
        # out of what urlsplit calls the host.
        raise UsageError(f"credentials do not belong in the archive URL; set them in the environment "
                         f"({_credential_hint('s3' if scheme == 's3' else 'gs')})")
    if not re.fullmatch(r"[A-Za-z0-9._-]*", parts.netloc):
        raise UsageError(f"the archive URL's bucket name is not valid: use {scheme}://BUCKET/PREFIX")
    if parts.query or parts.fragment:
        raise UsageError(f"archive URL {scheme}://{parts.netloc}{parts.path}: options (?...) are not supported; "
                         "configure the endpoint and region through the environment")
    bucket = parts.netloc
    if not bucket:
        raise UsageError(f"archive URL {location!r} has no bucket: use {scheme}://BUCKET/PREFIX")
    key = parts.path.strip("/")
    if any(seg in ("", ".", "..") for seg in key.split("/")) and key:
        raise UsageError(f"archive URL {location!r}: the prefix has an empty, '.' or '..' segment")
    storage = _object_storage(scheme, bucket)
    return storage, PurePosixPath(bucket, key) if key else PurePosixPath(bucket)


def _object_storage(scheme: str, bucket: str) -> ObjectStorage:
    endpoint = (os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")) if scheme == "s3" else None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    cache_key = (scheme, endpoint or "", region or "", bucket if scheme == "s3" and not region else "")
    with _filesystems_lock:
        if cache_key in _filesystems:
            return _filesystems[cache_key]
        if scheme == "s3":
            fs: pafs.FileSystem = _s3(bucket, endpoint, region)
        else:
            fs = pafs.GcsFileSystem(retry_time_limit=timedelta(seconds=60))
        storage = ObjectStorage("s3" if scheme == "s3" else "gs", fs, endpoint)
        _filesystems[cache_key] = storage
        return storage


def _s3(bucket: str, endpoint: str | None, region: str | None) -> pafs.S3FileSystem:
    kwargs: dict[str, Any] = {
        # pyarrow's defaults give up a slow link after ~1 s; a big archive on a busy link deserves more, but an
        # endpoint that does not answer at all should fail within seconds, not minutes.
        "connect_timeout": 10,
        "request_timeout": 120,
        "retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=5),
    }
    if endpoint:
        split = urlsplit(endpoint if "://" in endpoint else "https://" + endpoint)
        kwargs["scheme"] = split.scheme or "https"
        kwargs["endpoint_override"] = split.netloc + split.path.rstrip("/")
    if region:
        kwargs["region"] = region
    elif not endpoint:
        # Without a region the SDK assumes us-east-1 and a bucket elsewhere answers with redirects; ask the bucket.
        # On failure the first real request reports what is wrong (missing bucket, network) in one line.
        with contextlib.suppress(OSError, pa.ArrowException):
            kwargs["region"] = pafs.resolve_s3_region(bucket)
    return pafs.S3FileSystem(**kwargs)
