"""2.x file sets: the `files.zip` Neptune hands out, unpacked into a folder a person can browse in MLflow.

The members land under the attribute's folder (`data/files/a.txt`, `data/files/sub/b.txt`) with names made safe
the way every archive name is (`paths.safe_segments`: no `..`, no absolute paths, so nothing is written outside
the run's artifacts, and the members are staged under names of our own, never the zip's). The zip itself is not
uploaded again; a manifest, `neptune/file_sets/<attribute path>/<zip name>.json`, records its size and sha256 and
every member's name, artifact path, size and CRC-32, and validation recomputes it from the archive's zip and
checks each member's bytes against the zip's own. A zip that cannot be unpacked exactly (not a zip, encrypted,
a bad CRC, two members that would land on one path, more than MAX_MEMBERS members) is uploaded as it is.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from neptune_migration.targets.mlflow.mapping import attribute_dir, joined, payload_destination

MANIFEST_ROOT = "neptune/file_sets"
# Beyond this many members a file set stays one zip: MLflow uploads artifacts one request each (200-300 small
# files/s through a server), so a zip of 100,000 files would cost minutes for one attribute.
MAX_MEMBERS = 10_000
CHUNK = 1 << 20


@dataclass
class Member:
    folder: str  # artifact folder
    name: str  # artifact file name
    size: int
    sha256: str
    staged: Path | None = None  # where the loader wrote its bytes

    @property
    def path(self) -> str:
        return joined(self.folder, self.name)


@dataclass
class Unpacked:
    manifest_path: str
    manifest: bytes
    members: list[Member] = field(default_factory=list)


def manifest_path(attribute_path: str, relative: str, zip_name: str) -> str:
    folder = payload_destination(joined(MANIFEST_ROOT, attribute_dir(attribute_path)), relative, zip_name)
    return joined(folder[0], folder[1] + ".json")


def unpack(zip_path: Path, attribute_path: str, relative: str, zip_name: str,
           staging: Path | None = None) -> Unpacked | None:
    """The members of a file set's zip and where each lands, each member's bytes streamed once (into `staging`
    when given, for upload) and hashed; None when the zip cannot be unpacked exactly (then it is kept whole)."""
    if not zip_name.lower().endswith(".zip"):
        return None
    folder = attribute_dir(attribute_path)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            infos = [info for info in archive.infolist() if not info.is_dir()]
            if len(infos) > MAX_MEMBERS or any(info.flag_bits & 0x1 for info in infos):
                return None  # too many to upload one by one; or encrypted: nothing to show without the password
            members: list[Member] = []
            files: set[str] = set()
            folders: set[str] = set()
            for index, info in enumerate(infos):
                member_dir, _, member_name = info.filename.replace("\\", "/").rpartition("/")
                where, name = payload_destination(folder, joined(relative, member_dir).strip("/"), member_name)
                member = Member(where, name, info.file_size, "")
                parents = {member.path.rsplit("/", i)[0] for i in range(1, member.path.count("/") + 1)}
                if member.path in files or member.path in folders or parents & files:
                    return None  # two members on one path, or a member where another needs a folder
                files.add(member.path)
                folders |= parents
                staged = staging / str(index) / name if staging is not None else None
                member.sha256 = _stream(archive, info, staged)
                member.staged = staged
                members.append(member)
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, RuntimeError, ValueError):
        # Also what zipfile raises for a member whose bytes fail their CRC-32.
        return None
    digest = hashlib.sha256()
    with open(zip_path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    manifest = {
        "zip": joined(relative, zip_name),
        "size": zip_path.stat().st_size,
        "sha256": digest.hexdigest(),
        "members": [{"name": info.filename, "artifact": m.path, "size": info.file_size,
                     "crc32": f"{info.CRC:08x}"} for info, m in zip(infos, members, strict=True)],
    }
    text = json.dumps(manifest, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    return Unpacked(manifest_path(attribute_path, relative, zip_name), text.encode("utf-8"), members)


def _stream(archive: zipfile.ZipFile, info: zipfile.ZipInfo, staged: Path | None) -> str:
    digest = hashlib.sha256()
    out = None
    if staged is not None:
        staged.parent.mkdir(parents=True, exist_ok=True)
        out = open(staged, "wb")  # noqa: SIM115 - closed below
    try:
        with archive.open(info) as member:
            while chunk := member.read(CHUNK):
                digest.update(chunk)
                if out is not None:
                    out.write(chunk)
    finally:
        if out is not None:
            out.close()
    return digest.hexdigest()
