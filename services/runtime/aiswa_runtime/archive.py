"""Validation and reading of uploaded source archives (tar.gz and zip).

Nothing is extracted to disk. Every check works on the archive's bytes in
memory, and every limit is enforced on the bytes that the decompressor actually
produces, counted while they stream, so header sizes that lie cannot slip a
decompression bomb past the limits. Sizes declared in zip headers only add
earlier rejections.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import stat
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, fields
from typing import IO, Literal

ArchiveFormat = Literal["tar.gz", "zip"]
ArchiveErrorCode = Literal[
    "too_large",
    "expanded_too_large",
    "too_many_files",
    "path_too_deep",
    "absolute_path",
    "path_traversal",
    "link_escape",
    "special_file",
    "bomb",
    "corrupt",
    "unknown_format",
    "empty",
]

_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"
_EMPTY_ZIP_MAGIC = b"PK\x05\x06"
_ZIP_CENTRAL_HEADER_MAGIC = b"PK\x01\x02"
_ZIP_LOCAL_HEADER = struct.Struct("<4s22xHH")  # signature, then name and extra field lengths
_ZIP_SUPPORTED_METHODS = {zipfile.ZIP_STORED: "stored", zipfile.ZIP_DEFLATED: "deflate"}
_ZIP_ENCRYPTED_FLAG = 0x1

_READ_CHUNK_BYTES = 64 * 1024
# tarfile reads a pax or GNU long-name record whole into memory before it
# returns the entry, so the decompressed metadata of one entry is capped.
_MAX_TAR_HEADER_BYTES = 1024**2
# Archives that expand to less than this are harmless whatever their ratio, and
# small ones pass 200:1 easily (95 KB of one repeated source line gzips to 292 bytes),
# so the ratio check starts above this size.
_RATIO_CHECK_MIN_BYTES = 1024**2
# All entries together, directories and links included, may number this many
# times max_files. tarfile keeps a TarInfo per entry read and zipfile builds a
# ZipInfo per central directory record, so the cap bounds their memory.
_ENTRY_LIMIT_FACTOR = 2
# Linux: PATH_MAX is 4096 bytes, and one path lookup follows at most 40 symbolic
# links before it fails with ELOOP (checked on kernel 6.18).
_MAX_LINK_TARGET_BYTES = 4096
_MAX_SYMLINK_HOPS = 40
# Bounds the CPU time that crafted chains of symbolic links can cost.
_MAX_LINK_RESOLUTION_STEPS = 2_000_000
_WINDOWS_DRIVE = re.compile(r"[A-Za-z]:")


@dataclass(frozen=True, slots=True)
class ArchiveLimits:
    """Limits that an uploaded archive must stay within. Sizes are in bytes.

    ``max_expanded_bytes`` and ``max_ratio`` apply to every byte that
    decompression produces, so for tar.gz they include tar headers and padding.
    The ratio is checked only once the archive has expanded past 1 MiB.
    ``max_files`` counts regular files, and all entries together (directories
    and links included) may number at most twice ``max_files``.
    """

    max_compressed_bytes: int = 64 * 1024**2
    max_expanded_bytes: int = 512 * 1024**2
    max_files: int = 20_000
    max_path_depth: int = 32
    max_member_bytes: int = 64 * 1024**2
    # expanded / compressed, above which the archive is a decompression bomb
    max_ratio: float = 200.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if value <= 0:
                raise ValueError(f"ArchiveLimits.{field.name} must be positive, got {value!r}")


class ArchiveError(ValueError):
    """An uploaded archive that is invalid, unsafe or over a limit.

    ``code`` is a stable machine-readable reason, ``member`` the name of the
    offending entry as stored in the archive (None when the whole archive is at
    fault), and ``str(error)`` a sentence that names the value and what to do.
    """

    def __init__(self, code: ArchiveErrorCode, message: str, member: str | None = None) -> None:
        super().__init__(message)
        self.code: ArchiveErrorCode = code
        self.member = member

    def __reduce__(self) -> tuple[type[ArchiveError], tuple[str, str, str | None]]:
        # The default would call __init__(message) alone, so the error could not
        # cross a process boundary such as a ProcessPoolExecutor.
        return (type(self), (self.code, str(self), self.member))


@dataclass(frozen=True, slots=True)
class ArchiveInfo:
    """Summary of an archive that passed validation."""

    format: ArchiveFormat
    compressed_bytes: int
    expanded_bytes: int  # total size of the regular files' contents
    file_count: int  # regular files only, not directories or links
    sha256: str  # hex digest of the compressed bytes


def inspect_archive(data: bytes, limits: ArchiveLimits = ArchiveLimits()) -> ArchiveInfo:
    """Validate an uploaded archive and return its summary.

    Decompresses every entry once, counting the bytes as they stream, and keeps
    none of the contents. Raises ArchiveError on the first problem found.
    """
    scanner = _Scanner(data, limits)
    for _ in scanner.scan(keep_content=False):
        pass
    return ArchiveInfo(
        format=scanner.format,
        compressed_bytes=len(data),
        expanded_bytes=scanner.budget.content_bytes,
        file_count=scanner.file_count,
        sha256=hashlib.sha256(data).hexdigest(),
    )


def iter_files(data: bytes, limits: ArchiveLimits = ArchiveLimits()) -> Iterator[tuple[str, bytes]]:
    """Yield ``(path, content)`` for each regular file of an archive, in archive order.

    ``path`` is relative, uses ``/`` separators and has no ``.`` or empty
    components. Directories and links are validated but not yielded. The checks
    of inspect_archive run while the files stream, so ArchiveError can be raised
    after some files were yielded. Checks that need the whole archive (links
    whose meaning a later link changes, the gzip trailer, an archive without
    regular files) raise only after the last file.
    """
    yield from _Scanner(data, limits).scan(keep_content=True)


def _corrupt(detail: str, member: str | None = None) -> ArchiveError:
    subject = f"archive entry {member!r}" if member is not None else "archive"
    return ArchiveError(
        "corrupt",
        f"{subject} is corrupt or truncated ({detail}): "
        "create the archive again and upload the complete file",
        member,
    )


def _member_too_large(member: str, size: int, limit: int) -> ArchiveError:
    return ArchiveError(
        "too_large",
        f"archive entry {member!r} has at least {size:,} bytes, over the per-file limit of "
        f"{limit:,} bytes: remove the file from the archive and upload again",
        member,
    )


def _detect_format(data: bytes) -> ArchiveFormat:
    if data.startswith(_GZIP_MAGIC):
        return "tar.gz"
    if data.startswith((_ZIP_MAGIC, _EMPTY_ZIP_MAGIC)):
        return "zip"
    raise ArchiveError(
        "unknown_format",
        f"archive format not recognised (first bytes {data[:4].hex(' ')}): "
        "upload a tar.gz or zip file",
    )


def _split_path(path: str) -> list[str]:
    # Backslash counts as a separator in both formats: Windows zip tools write
    # it, and a name such as '..\\x' must not survive to a Windows consumer.
    return [part for part in path.replace("\\", "/").split("/") if part not in ("", ".")]


def _is_absolute(path: str) -> bool:
    return path.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(path) is not None


def _entry_parts(member: str, limits: ArchiveLimits) -> list[str]:
    """Split an entry name into path components, raising ArchiveError if it is unsafe."""
    try:
        member.encode("utf-8")
    except UnicodeEncodeError:
        # tarfile decodes names with errors="surrogateescape", which leaves lone
        # surrogates where the bytes were not UTF-8.
        raise _corrupt("its name is not valid UTF-8", member) from None
    if _is_absolute(member):
        raise ArchiveError(
            "absolute_path",
            f"archive entry {member!r} is an absolute path: "
            "store paths relative to the repository root and upload again",
            member,
        )
    parts = _split_path(member)
    if ".." in parts:
        raise ArchiveError(
            "path_traversal",
            f"archive entry {member!r} leaves the archive root: "
            "remove '..' components and upload again",
            member,
        )
    if len(parts) > limits.max_path_depth:
        raise ArchiveError(
            "path_too_deep",
            f"archive entry {member!r} has {len(parts)} path components, over the limit of "
            f"{limits.max_path_depth}: move it to a shallower directory and upload again",
            member,
        )
    return parts


class _Budget:
    """Counters of expanded bytes that raise ArchiveError when a limit is passed."""

    def __init__(self, limits: ArchiveLimits, compressed_bytes: int) -> None:
        self._limits = limits
        self._compressed_bytes = compressed_bytes
        ratio_limit_bytes = limits.max_ratio * compressed_bytes
        self._ratio_limit_bytes = max(_RATIO_CHECK_MIN_BYTES, ratio_limit_bytes)
        # Bytes produced by the decompressor: the whole tar stream for tar.gz,
        # every entry's data for zip.
        self.decompressed_bytes = 0
        # Bytes of regular-file contents. For a sparse tar member they include
        # the holes, which are not in the compressed stream.
        self.content_bytes = 0

    def add_decompressed(self, count: int) -> None:
        self.decompressed_bytes += count
        self.check(self.decompressed_bytes)

    def add_content(self, count: int) -> None:
        self.content_bytes += count
        self.check(self.content_bytes)

    def check(self, expanded_bytes: int) -> None:
        """Raise ArchiveError if an archive expanding to this many bytes is over a limit."""
        if expanded_bytes > self._limits.max_expanded_bytes:
            raise ArchiveError(
                "expanded_too_large",
                f"archive expands to more than {self._limits.max_expanded_bytes:,} bytes: "
                "remove large files from the archive and upload again",
            )
        if expanded_bytes > self._ratio_limit_bytes:
            raise ArchiveError(
                "bomb",
                f"archive expands to more than {self._limits.max_ratio:g} times its compressed "
                f"size of {self._compressed_bytes:,} bytes, so it is treated as a decompression "
                "bomb: remove highly repetitive files from the archive and upload again",
            )


class _LinkTable:
    """Symbolic and hard links seen so far, resolved without touching the disk.

    Resolution follows earlier symbolic links in the same archive the way the
    kernel would after extraction, so ``up -> .`` followed by ``out -> up/..``
    is caught although ``up/..`` looks harmless on its own.
    """

    def __init__(self) -> None:
        self._symlinks: dict[str, str] = {}  # entry path -> link target
        # (member, directory the target is relative to, target)
        self._links: list[tuple[str, list[str], str]] = []
        self._max_symlink_depth = 0  # components in the deepest symbolic link's path
        self._steps_left = _MAX_LINK_RESOLUTION_STEPS

    def add_symlink(self, member: str, parts: list[str], target: str) -> None:
        self._check_target_length(member, target)
        self._symlinks["/".join(parts)] = target
        self._max_symlink_depth = max(self._max_symlink_depth, len(parts))
        # A symbolic link's target is relative to the directory holding the link.
        self._links.append((member, parts[:-1], target))
        self._resolve(member, parts[:-1], target)

    def add_hardlink(self, member: str, target: str) -> None:
        # A hard link's target is relative to the archive root.
        self._check_target_length(member, target)
        self._links.append((member, [], target))
        self._resolve(member, [], target)

    def check_all(self) -> None:
        """Resolve every link again with the final set of symbolic links.

        A symbolic link added later can change where an earlier link leads:
        ``s -> d/..`` stays inside while ``d`` is a directory, but leaves the
        root once ``d -> .`` follows it.
        """
        for member, start, target in self._links:
            self._resolve(member, start, target)

    def _check_target_length(self, member: str, target: str) -> None:
        size = len(target.encode("utf-8", "surrogateescape"))
        if size > _MAX_LINK_TARGET_BYTES:
            raise ArchiveError(
                "link_escape",
                f"archive entry {member!r} has a link target of {size:,} bytes, over the "
                f"{_MAX_LINK_TARGET_BYTES}-byte maximum path length: "
                "remove the link and upload again",
                member,
            )

    def _resolve(self, member: str, start: list[str], target: str) -> None:
        if _is_absolute(target):
            raise self._escape(member, target)
        # resolved_keys[i] is the path of the first i + 1 resolved components,
        # or None below the deepest symbolic link, where no lookup is needed.
        resolved_keys: list[str | None] = []
        # Components still to walk, in reverse order so that pop() takes the next one.
        pending = list(reversed(start + _split_path(target)))
        hops = 0
        while pending:
            self._spend_step(member)
            part = pending.pop()
            if part == "..":
                if not resolved_keys:
                    raise self._escape(member, target)
                resolved_keys.pop()
                continue
            if len(resolved_keys) >= self._max_symlink_depth:
                resolved_keys.append(None)
                continue
            key = f"{resolved_keys[-1]}/{part}" if resolved_keys else part
            link_target = self._symlinks.get(key)
            if link_target is None:
                resolved_keys.append(key)
                continue
            hops += 1
            if hops > _MAX_SYMLINK_HOPS:
                raise ArchiveError(
                    "link_escape",
                    f"archive entry {member!r} links to {target!r} through more than "
                    f"{_MAX_SYMLINK_HOPS} symbolic links, which is a loop or too deep to follow: "
                    "remove the chain and upload again",
                    member,
                )
            if _is_absolute(link_target):
                raise self._escape(member, target)
            pending.extend(reversed(_split_path(link_target)))

    def _spend_step(self, member: str) -> None:
        self._steps_left -= 1
        if self._steps_left < 0:
            raise ArchiveError(
                "link_escape",
                f"archive links need more than {_MAX_LINK_RESOLUTION_STEPS:,} steps to verify, "
                f"reached at entry {member!r}: remove chains of symbolic links and upload again",
                member,
            )

    @staticmethod
    def _escape(member: str, target: str) -> ArchiveError:
        return ArchiveError(
            "link_escape",
            f"archive entry {member!r} links to {target!r}, which resolves outside the archive "
            "root: point the link inside the archive or remove it, and upload again",
            member,
        )


class _GzipStream:
    """Reader of gzip data that charges every decompressed byte to a budget."""

    def __init__(self, data: bytes, budget: _Budget) -> None:
        self._gzip = gzip.GzipFile(fileobj=io.BytesIO(data), mode="rb")
        self._budget = budget
        self.position = 0  # decompressed bytes produced so far
        self.position_limit: int | None = None  # set while tarfile reads an entry's header

    def read(self, size: int) -> bytes:
        # GzipFile.read(size) decompresses little more than `size` bytes per
        # call, so a bomb is counted while it expands.
        chunk = self._gzip.read(size)
        self.position += len(chunk)
        if self.position_limit is not None and self.position > self.position_limit:
            raise _corrupt(
                "the metadata of one entry (its header plus pax or GNU long-name records) "
                f"is over {_MAX_TAR_HEADER_BYTES:,} bytes"
            )
        self._budget.add_decompressed(len(chunk))
        return chunk

    def drain(self) -> None:
        """Decompress the rest of the gzip data, which validates its CRC and length trailer."""
        while self.read(_READ_CHUNK_BYTES):
            pass


class _StrictTarInfo(tarfile.TarInfo):
    """TarInfo that raises on a bad or truncated header.

    TarFile.next() treats such a header after the first entry as the end of the
    archive, which would accept truncated or corrupt data silently. A block of
    zeros, the tar end-of-archive marker, still ends the archive normally.
    """

    @classmethod
    def fromtarfile(cls, archive: tarfile.TarFile) -> tarfile.TarInfo:
        try:
            return super().fromtarfile(archive)
        except tarfile.EOFHeaderError:
            raise
        except tarfile.HeaderError as error:
            if archive.offset == 0:
                raise ArchiveError(
                    "unknown_format",
                    f"archive is gzip data but not a tar archive ({error}): "
                    "upload a tar.gz or zip file",
                ) from error
            raise _corrupt(f"tar header at byte {archive.offset:,}: {error}") from error


class _Scanner:
    """One pass over an archive: validates every entry and yields regular files."""

    def __init__(self, data: bytes, limits: ArchiveLimits) -> None:
        if len(data) > limits.max_compressed_bytes:
            raise ArchiveError(
                "too_large",
                f"archive is {len(data):,} bytes, over the upload limit of "
                f"{limits.max_compressed_bytes:,} bytes: "
                "remove large files from the archive and upload again",
            )
        if not data:
            raise ArchiveError("empty", "archive is empty (0 bytes): upload a tar.gz or zip file")
        self.format = _detect_format(data)
        self.budget = _Budget(limits, len(data))
        self.file_count = 0
        self._data = data
        self._limits = limits
        self._links = _LinkTable()
        self._entry_count = 0

    def scan(self, keep_content: bool) -> Iterator[tuple[str, bytes]]:
        """Yield ``(path, content)`` per regular file, with content b"" unless keep_content."""
        if self.format == "tar.gz":
            yield from self._scan_tar(keep_content)
        else:
            yield from self._scan_zip(keep_content)
        self._links.check_all()
        if self.file_count == 0:
            raise ArchiveError(
                "empty",
                "archive contains no regular files: upload an archive of the repository's files",
            )

    def _count_entry(self) -> None:
        self._entry_count += 1
        if self._entry_count > self._max_entries:
            raise self._too_many_entries()

    @property
    def _max_entries(self) -> int:
        return _ENTRY_LIMIT_FACTOR * self._limits.max_files

    def _too_many_entries(self) -> ArchiveError:
        return ArchiveError(
            "too_many_files",
            f"archive contains more than {self._max_entries:,} entries "
            "(files, directories and links): remove files from the archive and upload again",
        )

    def _count_file(self, member: str) -> None:
        self.file_count += 1
        if self.file_count > self._limits.max_files:
            raise ArchiveError(
                "too_many_files",
                f"archive contains more than {self._limits.max_files:,} files, reached at entry "
                f"{member!r}: remove files from the archive and upload again",
                member,
            )

    def _read_member(
        self, stream: IO[bytes], member: str, keep: bool, charge_decompressed: bool
    ) -> tuple[bytes, int]:
        """Read a regular file's data in chunks, charging each chunk before the next is read.

        Returns the content (b"" unless keep) and its size.
        """
        chunks: list[bytes] = []
        size = 0
        while chunk := stream.read(_READ_CHUNK_BYTES):
            size += len(chunk)
            if size > self._limits.max_member_bytes:
                raise _member_too_large(member, size, self._limits.max_member_bytes)
            if charge_decompressed:
                self.budget.add_decompressed(len(chunk))
            self.budget.add_content(len(chunk))
            if keep:
                chunks.append(chunk)
        return b"".join(chunks), size

    # tar.gz

    def _scan_tar(self, keep_content: bool) -> Iterator[tuple[str, bytes]]:
        stream = _GzipStream(self._data, self.budget)
        member: str | None = None
        try:
            stream.position_limit = _MAX_TAR_HEADER_BYTES
            # Mode "r|" reads the tar sequentially, so each byte is decompressed once.
            with tarfile.open(
                fileobj=stream,  # type: ignore[call-overload]
                mode="r|",
                tarinfo=_StrictTarInfo,
                encoding="utf-8",
                errors="surrogateescape",
            ) as archive:
                while True:
                    member = None
                    stream.position_limit = stream.position + _MAX_TAR_HEADER_BYTES
                    info = archive.next()
                    stream.position_limit = None
                    if info is None:
                        break
                    # tarfile keeps every TarInfo, pax headers included, in
                    # `members`. Only the current one is needed here.
                    archive.members.clear()
                    member = info.name
                    parts = self._check_tar_entry(info)
                    if parts is None:
                        continue
                    content = self._read_tar_file(archive, info, keep_content)
                    yield "/".join(parts), content
            member = None
            stream.drain()
        except (tarfile.TarError, EOFError, gzip.BadGzipFile, zlib.error) as error:
            raise _corrupt(str(error) or type(error).__name__, member) from error

    def _check_tar_entry(self, info: tarfile.TarInfo) -> list[str] | None:
        """Validate one tar entry and return its path components, or None if it is not a file."""
        self._count_entry()
        parts = _entry_parts(info.name, self._limits)
        if info.isdir():
            return None
        if info.issym():
            self._links.add_symlink(info.name, parts, info.linkname)
            return None
        if info.islnk():
            self._links.add_hardlink(info.name, info.linkname)
            return None
        if not info.isreg():
            kinds = {
                tarfile.CHRTYPE: "character device",
                tarfile.BLKTYPE: "block device",
                tarfile.FIFOTYPE: "FIFO",
            }
            kind = kinds.get(info.type, f"entry of unsupported tar type {info.type!r}")
            raise ArchiveError(
                "special_file",
                f"archive entry {info.name!r} is a {kind}, which a source archive may not contain: "
                "remove it and upload again",
                info.name,
            )
        if not parts:
            raise _corrupt("a regular file has an empty path", info.name)
        self._count_file(info.name)
        if info.size > self._limits.max_member_bytes:
            raise _member_too_large(info.name, info.size, self._limits.max_member_bytes)
        return parts

    def _read_tar_file(self, archive: tarfile.TarFile, info: tarfile.TarInfo, keep: bool) -> bytes:
        stream = archive.extractfile(info)
        if stream is None:  # tarfile returns None only for non-regular entries
            raise _corrupt("tarfile returned no data for a regular file", info.name)
        # The gzip stream already charges the decompressed bytes.
        content, _ = self._read_member(stream, info.name, keep, charge_decompressed=False)
        return content

    # zip

    def _scan_zip(self, keep_content: bool) -> Iterator[tuple[str, bytes]]:
        self._check_zip_entry_count()
        try:
            archive = zipfile.ZipFile(io.BytesIO(self._data))
        except (zipfile.BadZipFile, UnicodeDecodeError, EOFError, struct.error) as error:
            raise _corrupt(str(error)) from error
        except NotImplementedError as error:  # an entry needs a newer zip version
            raise ArchiveError(
                "unknown_format",
                f"archive uses a zip feature that is not supported ({error}): "
                "create the zip with deflate and upload again",
            ) from error
        with archive:
            entries = [(info, self._check_zip_entry(info)) for info in archive.infolist()]
            self._check_zip_layout(archive.infolist())
            for info, (kind, parts) in entries:
                if kind == "directory":
                    continue
                if kind == "symlink":
                    target = self._read_zip_link_target(archive, info)
                    self._links.add_symlink(info.filename, parts, target)
                    continue
                content = self._read_zip_file(archive, info, keep_content)
                yield "/".join(parts), content

    def _check_zip_entry_count(self) -> None:
        # Runs before zipfile parses the central directory, whose records can
        # be 46 bytes each, so a 64 MiB upload could otherwise make zipfile
        # build over a million ZipInfo objects.
        # NOTE: this counts signatures anywhere in the data, so an archive
        # that stores many uncompressed zip files can be over-counted.
        if self._data.count(_ZIP_CENTRAL_HEADER_MAGIC) > self._max_entries:
            raise self._too_many_entries()

    def _check_zip_entry(self, info: zipfile.ZipInfo) -> tuple[str, list[str]]:
        """Validate one central directory record before any data is read.

        Returns the entry's kind ("file", "directory" or "symlink") and its path
        components.
        """
        member = info.filename
        self._count_entry()
        parts = _entry_parts(member, self._limits)
        mode = info.external_attr >> 16
        file_type = stat.S_IFMT(mode)
        if member.endswith(("/", "\\")) or file_type == stat.S_IFDIR:
            return "directory", parts
        # File type 0 means that no Unix mode was stored, as in zips made on Windows.
        if file_type not in (0, stat.S_IFREG, stat.S_IFLNK):
            raise ArchiveError(
                "special_file",
                f"archive entry {member!r} has Unix file mode {mode:o}, which is not a regular "
                "file, directory or symbolic link: remove it and upload again",
                member,
            )
        if info.flag_bits & _ZIP_ENCRYPTED_FLAG:
            raise ArchiveError(
                "unknown_format",
                f"archive entry {member!r} is encrypted: upload an archive without a password",
                member,
            )
        if info.compress_type not in _ZIP_SUPPORTED_METHODS:
            # zipfile decompresses bzip2 and LZMA without an output bound, so
            # one read could expand a few KiB into gigabytes.
            raise ArchiveError(
                "unknown_format",
                f"archive entry {member!r} uses zip compression method {info.compress_type}, "
                "but only stored and deflate are supported: "
                "create the zip with deflate and upload again",
                member,
            )
        self._check_zip_declared_sizes(info)
        if not parts:
            raise _corrupt("an entry that is not a directory has an empty path", member)
        if file_type == stat.S_IFLNK:
            if info.file_size > _MAX_LINK_TARGET_BYTES:
                raise _corrupt(f"its link target is over {_MAX_LINK_TARGET_BYTES:,} bytes", member)
            return "symlink", parts
        self._count_file(member)
        if info.file_size > self._limits.max_member_bytes:
            raise _member_too_large(member, info.file_size, self._limits.max_member_bytes)
        return "file", parts

    def _check_zip_declared_sizes(self, info: zipfile.ZipInfo) -> None:
        # zipfile stops decompressing an entry at its declared size, so a size
        # that is too small would cut the data short instead of failing. It
        # does fail on the CRC unless the attacker fixed that too, so this
        # check rejects declared sizes that the compressed size rules out.
        if info.compress_type == zipfile.ZIP_STORED:
            consistent = info.compress_size == info.file_size
        else:
            # zlib's conservative deflateBound() is n + (n + 7) / 8 + (n + 63) / 64
            # + 11 bytes (deflate.c, as bundled with rsync 2.6.7). The 1 KiB of
            # slack covers encoders with more overhead per block.
            # NOTE: an encoder that never falls back to stored blocks for
            # incompressible data could exceed this and be rejected.
            size = info.file_size
            consistent = info.compress_size <= size + (size >> 3) + (size >> 6) + 1024
        if not consistent:
            raise _corrupt(
                f"its header declares {info.file_size:,} bytes, which "
                f"{info.compress_size:,} bytes of {_ZIP_SUPPORTED_METHODS[info.compress_type]} "
                "data cannot expand to",
                info.filename,
            )

    def _check_zip_layout(self, infos: list[zipfile.ZipInfo]) -> None:
        """Raise ArchiveError if entries' data overlap or their declared sizes pass a limit.

        Runs before anything is decompressed.
        """
        declared_bytes = sum(info.file_size for info in infos if not info.is_dir())
        self.budget.check(declared_bytes)
        previous_end = 0
        for info in sorted(infos, key=lambda info: info.header_offset):
            try:
                signature, name_length, extra_length = _ZIP_LOCAL_HEADER.unpack_from(
                    self._data, info.header_offset
                )
            except struct.error:
                raise _corrupt(
                    "its local header is past the end of the data", info.filename
                ) from None
            if signature != _ZIP_MAGIC:
                raise _corrupt("its local header has no signature", info.filename)
            if info.header_offset < previous_end:
                # Entries that share compressed data are how non-recursive zip
                # bombs expand far beyond their size.
                raise ArchiveError(
                    "bomb",
                    f"archive entry {info.filename!r} overlaps the data of another entry, so the "
                    "archive is treated as a decompression bomb: "
                    "create the zip again and upload it",
                    info.filename,
                )
            data_end = (
                info.header_offset
                + _ZIP_LOCAL_HEADER.size
                + name_length
                + extra_length
                + info.compress_size
            )
            if data_end > len(self._data):
                raise _corrupt("its data extends past the end of the archive", info.filename)
            previous_end = data_end

    def _read_zip_file(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo, keep: bool) -> bytes:
        with _zip_read_errors(info.filename), archive.open(info) as stream:
            content, size = self._read_member(stream, info.filename, keep, charge_decompressed=True)
        # zipfile stops at the declared size, but returns less without an
        # error if the data ends early and the CRC still matches.
        if size != info.file_size:
            raise _corrupt(
                f"it expands to {size:,} bytes but its header declares {info.file_size:,}",
                info.filename,
            )
        return content

    def _read_zip_link_target(self, archive: zipfile.ZipFile, info: zipfile.ZipInfo) -> str:
        # _check_zip_entry has capped file_size, and zipfile reads no further.
        with _zip_read_errors(info.filename), archive.open(info) as stream:
            data = stream.read(info.file_size + 1)
        self.budget.add_decompressed(len(data))
        if len(data) != info.file_size:
            raise _corrupt(
                f"it expands to {len(data):,} bytes but its header declares {info.file_size:,}",
                info.filename,
            )
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError as error:
            raise _corrupt("its link target is not valid UTF-8", info.filename) from error


@contextmanager
def _zip_read_errors(member: str) -> Iterator[None]:
    """Turn zipfile's errors while reading one entry into ArchiveError."""
    try:
        yield
    except (zipfile.BadZipFile, zlib.error, EOFError, UnicodeDecodeError) as error:
        raise _corrupt(str(error) or type(error).__name__, member) from error
    except NotImplementedError as error:  # the local header sets strong encryption or patch data
        raise ArchiveError(
            "unknown_format",
            f"archive entry {member!r} uses a zip feature that is not supported ({error}): "
            "create the zip with deflate and no password, and upload again",
            member,
        ) from error
