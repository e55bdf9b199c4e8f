"""Runtime: validation and reading of uploaded tar.gz and zip archives.

Every hostile archive is built in memory by the test that uses it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
import random
import stat
import struct
import tarfile
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass

import pytest

from aiswa_runtime.archive import (
    ArchiveError,
    ArchiveInfo,
    ArchiveLimits,
    inspect_archive,
    iter_files,
)

MIB = 1024**2
TarMember = tuple[tarfile.TarInfo, bytes | None]
ZipMember = tuple[str | zipfile.ZipInfo, bytes]


# Builders of tar.gz archives


def tar_gz(*members: TarMember, tar_format: int = tarfile.PAX_FORMAT) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", format=tar_format) as archive:
        for info, content in members:
            archive.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def tar_file(name: str, content: bytes = b"data\n") -> TarMember:
    info = tarfile.TarInfo(name)
    info.size = len(content)
    return info, content


def tar_entry(name: str, entry_type: bytes, linkname: str = "") -> TarMember:
    info = tarfile.TarInfo(name)
    info.type = entry_type
    info.linkname = linkname
    return info, None


def tar_dir(name: str) -> TarMember:
    return tar_entry(name, tarfile.DIRTYPE)


def tar_symlink(name: str, target: str) -> TarMember:
    return tar_entry(name, tarfile.SYMTYPE, target)


def tar_hardlink(name: str, target: str) -> TarMember:
    return tar_entry(name, tarfile.LNKTYPE, target)


def uncompressed_tar(*members: TarMember) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, content in members:
            archive.addfile(info, io.BytesIO(content) if content is not None else None)
    return buffer.getvalue()


def gzip_of_zeros(size_mib: int) -> bytes:
    """Gzip `size_mib` MiB of zeros while compressing only 2 MiB of them.

    After a full flush the compressor starts from an empty history, so every
    further 1 MiB chunk of zeros compresses to the same bytes and can be repeated.
    """
    chunk = bytes(MIB)
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    head = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    body = compressor.compress(chunk) + compressor.flush(zlib.Z_FULL_FLUSH)
    final_block = compressor.flush()[:-8]  # without the trailer written for 2 MiB
    crc = 0
    for _ in range(size_mib):
        crc = zlib.crc32(chunk, crc)
    trailer = struct.pack("<II", crc, size_mib * MIB & 0xFFFFFFFF)
    return head + body * (size_mib - 1) + final_block + trailer


# Builders of zip archives


def zip_archive(*members: ZipMember, compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, content in members:
            archive.writestr(name, content)
    return buffer.getvalue()


def zip_with_mode(name: str, file_type: int, content: bytes = b"") -> ZipMember:
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix, so unzip honours the mode bits
    info.external_attr = (file_type | 0o644) << 16
    return info, content


def zip_symlink(name: str, target: str) -> ZipMember:
    return zip_with_mode(name, stat.S_IFLNK, target.encode())


def zip_zeros(name: str, size_mib: int) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(name, "w") as entry:
            chunk = bytes(MIB)
            for _ in range(size_mib):
                entry.write(chunk)
    return buffer.getvalue()


def patch_zip_entry(data: bytes, name: str, **values: int) -> bytes:
    """Overwrite header fields of one entry in both its local header and central directory record.

    `values` takes flag_bits, crc, compress_size, file_size and header_offset
    (central directory only).
    """
    # Field name -> (struct format, offset in the local header, offset in the
    # central directory record).
    layout = {
        "flag_bits": ("<H", 6, 8),
        "crc": ("<I", 14, 16),
        "compress_size": ("<I", 18, 20),
        "file_size": ("<I", 22, 24),
        "header_offset": ("<I", None, 42),
    }
    patched = bytearray(data)
    end_of_directory = data.rindex(b"PK\x05\x06")
    (record,) = struct.unpack_from("<I", data, end_of_directory + 16)
    while data[record : record + 4] == b"PK\x01\x02":
        name_length, extra_length, comment_length = struct.unpack_from("<HHH", data, record + 28)
        (local_header,) = struct.unpack_from("<I", data, record + 42)
        if data[record + 46 : record + 46 + name_length].decode() == name:
            for field, value in values.items():
                field_format, local_offset, central_offset = layout[field]
                struct.pack_into(field_format, patched, record + central_offset, value)
                if local_offset is not None:
                    struct.pack_into(field_format, patched, local_header + local_offset, value)
            return bytes(patched)
        record += 46 + name_length + extra_length + comment_length
    raise AssertionError(f"no central directory record for {name!r}")


def read_all(data: bytes, limits: ArchiveLimits = ArchiveLimits()) -> list[tuple[str, bytes]]:
    return list(iter_files(data, limits))


def traced_rejection(read: Callable[..., object], data: bytes) -> tuple[ArchiveError, int]:
    """Return the ArchiveError that `read(data)` raises and the peak memory allocated meanwhile."""
    tracemalloc.start()
    try:
        with pytest.raises(ArchiveError) as caught:
            read(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return caught.value, peak


READERS = [
    pytest.param(inspect_archive, id="inspect_archive"),
    pytest.param(read_all, id="iter_files"),
]
RANDOM_BYTES = random.Random(7).randbytes(64 * 1024)


# Valid archives


def test_tar_gz_valid_summary_and_files():
    data = tar_gz(
        tar_dir("."),
        tar_file("./README.md", b"# demo\n"),
        tar_dir("src/pkg"),
        tar_file("src/pkg/__init__.py", b""),
        tar_file("src/pkg/mod.py", b"def f():\n    return 1\n"),
        tar_symlink("docs/readme", "../README.md"),
        tar_hardlink("copy.md", "README.md"),
    )

    info = inspect_archive(data)

    assert info == ArchiveInfo(
        format="tar.gz",
        compressed_bytes=len(data),
        expanded_bytes=len(b"# demo\n") + len(b"def f():\n    return 1\n"),
        file_count=3,
        sha256=hashlib.sha256(data).hexdigest(),
    )
    assert read_all(data) == [
        ("README.md", b"# demo\n"),
        ("src/pkg/__init__.py", b""),
        ("src/pkg/mod.py", b"def f():\n    return 1\n"),
    ]


def test_zip_valid_summary_and_files():
    data = zip_archive(
        ("README.md", b"# demo\n"),
        ("src/", b""),
        ("src/pkg/mod.py", b"def f():\n    return 1\n" * 50),
        ("win\\path.txt", b"windows separators"),
        zip_symlink("docs/readme", "../README.md"),
    )

    info = inspect_archive(data)

    assert info == ArchiveInfo(
        format="zip",
        compressed_bytes=len(data),
        expanded_bytes=len(b"# demo\n")
        + 50 * len(b"def f():\n    return 1\n")
        + len(b"windows separators"),
        file_count=3,
        sha256=hashlib.sha256(data).hexdigest(),
    )
    assert read_all(data) == [
        ("README.md", b"# demo\n"),
        ("src/pkg/mod.py", b"def f():\n    return 1\n" * 50),
        ("win/path.txt", b"windows separators"),
    ]


def test_format_detected_from_magic_bytes():
    # The builders never see a file name, so the format can only come from the bytes.
    assert inspect_archive(tar_gz(tar_file("a.txt"))).format == "tar.gz"
    assert inspect_archive(zip_archive(("a.txt", b"data"))).format == "zip"


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(
            lambda members: tar_gz(*(tar_file(name, content) for name, content in members)),
            id="tar.gz",
        ),
        pytest.param(lambda members: zip_archive(*members), id="zip"),
    ],
)
def test_limits_inclusive_at_boundary(build):
    limits = ArchiveLimits(max_files=2, max_path_depth=3, max_member_bytes=100)
    data = build([("a/b/c.txt", bytes(100)), ("d.txt", b"1")])

    info = inspect_archive(data, limits)

    assert info.file_count == 2
    assert info.expanded_bytes == 101
    assert read_all(data, limits) == [("a/b/c.txt", bytes(100)), ("d.txt", b"1")]


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(
            lambda: tar_gz(
                tar_file("lib/real.py", b"x = 1\n"),
                tar_symlink("lib/alias.py", "real.py"),
                tar_symlink("up", "."),
                tar_symlink("top", "up/lib/../lib/real.py"),
                tar_hardlink("again.py", "lib/real.py"),
            ),
            id="tar.gz",
        ),
        pytest.param(
            lambda: zip_archive(
                ("lib/real.py", b"x = 1\n"), zip_symlink("lib/alias.py", "../lib/real.py")
            ),
            id="zip",
        ),
    ],
)
def test_links_inside_root_accepted_not_yielded(build):
    data = build()

    info = inspect_archive(data)

    assert info.file_count == 1
    assert info.expanded_bytes == 6
    assert read_all(data) == [("lib/real.py", b"x = 1\n")]


def test_iter_files_streams_before_later_error():
    data = tar_gz(tar_file("ok.txt", b"ok"), tar_file("/etc/passwd"))
    files = iter_files(data)

    assert next(files) == ("ok.txt", b"ok")
    with pytest.raises(ArchiveError) as caught:
        next(files)
    assert caught.value.code == "absolute_path"


# Rejected archives


@dataclass(frozen=True)
class Rejection:
    build: Callable[[], bytes]
    code: str
    member: str | None
    limits: ArchiveLimits = ArchiveLimits()
    # Text the message must contain. None means the member's repr().
    mentions: str | None = None


def truncated_tar_gz() -> bytes:
    data = tar_gz(tar_file("big.bin", RANDOM_BYTES))
    return data[: len(data) // 2]


def tar_gz_without_end_marker() -> bytes:
    tar = uncompressed_tar(tar_file("a.txt", b"a" * 100))
    return gzip.compress(tar[:1024])  # one header and one data block, then nothing


def tar_gz_with_huge_pax_header() -> bytes:
    info, content = tar_file("a.txt")
    info.pax_headers = {"comment": "x" * (2 * MIB)}
    return tar_gz((info, content))


def tar_gz_with_non_utf8_name() -> bytes:
    info, content = tar_file("placeholder")
    tar = bytearray(uncompressed_tar((info, content)))
    tar[0:11] = b"bad\xff.txt\0\0\0\0"
    checksum = sum(tar[:148]) + 8 * 32 + sum(tar[156:512])
    tar[148:156] = b"%06o\0 " % checksum
    return gzip.compress(bytes(tar))


def zip_with_crc_error() -> bytes:
    data = bytearray(zip_archive(("a.txt", b"hello"), compression=zipfile.ZIP_STORED))
    data[data.index(b"hello")] = ord("j")
    return bytes(data)


def zip_with_flag(name: str, flag: int) -> bytes:
    # ZipFile.writestr() resets flag_bits, so the flag is patched in afterwards.
    return patch_zip_entry(zip_archive((name, b"data")), name, flag_bits=flag)


def zip_with_bzip2_entry() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_BZIP2) as archive:
        archive.writestr("a.txt", b"data")
    return buffer.getvalue()


def zip_with_overlapping_entries() -> bytes:
    data = zip_archive(
        ("a.bin", RANDOM_BYTES[:1000]),
        ("b.bin", RANDOM_BYTES[:1000]),
        compression=zipfile.ZIP_STORED,
    )
    return patch_zip_entry(data, "b.bin", header_offset=0)


def deep_path(components: int) -> str:
    return "/".join(["d"] * (components - 1) + ["f.txt"])


SMALL_FILES = ArchiveLimits(max_files=3)
TINY_MEMBER = ArchiveLimits(max_member_bytes=100)
SMALL_EXPANSION = ArchiveLimits(max_expanded_bytes=20_000)
LOW_RATIO = ArchiveLimits(max_ratio=50)
TINY_UPLOAD = ArchiveLimits(max_compressed_bytes=100)

TAR_REJECTIONS = {
    "absolute_path": Rejection(
        lambda: tar_gz(tar_file("/etc/passwd")), "absolute_path", "/etc/passwd"
    ),
    "dotdot": Rejection(lambda: tar_gz(tar_file("../evil.txt")), "path_traversal", "../evil.txt"),
    "dotdot_inside_path": Rejection(
        lambda: tar_gz(tar_file("a/../../x.txt")), "path_traversal", "a/../../x.txt"
    ),
    "backslash_dotdot": Rejection(
        lambda: tar_gz(tar_file("..\\evil.txt")), "path_traversal", "..\\evil.txt"
    ),
    "symlink_escaping": Rejection(
        lambda: tar_gz(tar_file("a.txt"), tar_symlink("docs/link", "../../etc/passwd")),
        "link_escape",
        "docs/link",
    ),
    "symlink_absolute": Rejection(
        lambda: tar_gz(tar_file("a.txt"), tar_symlink("link", "/etc/passwd")), "link_escape", "link"
    ),
    "symlink_through_symlink": Rejection(
        lambda: tar_gz(tar_file("a.txt"), tar_symlink("up", "."), tar_symlink("out", "up/..")),
        "link_escape",
        "out",
    ),
    "symlink_changed_by_later_symlink": Rejection(
        lambda: tar_gz(tar_file("a.txt"), tar_symlink("s", "d/.."), tar_symlink("d", ".")),
        "link_escape",
        "s",
    ),
    "symlink_loop": Rejection(
        lambda: tar_gz(tar_file("a.txt"), tar_symlink("a", "b"), tar_symlink("b", "a")),
        "link_escape",
        "b",
    ),
    "hardlink_escaping": Rejection(
        lambda: tar_gz(tar_file("a.txt"), tar_hardlink("h", "../../etc/passwd")), "link_escape", "h"
    ),
    "hardlink_absolute": Rejection(
        lambda: tar_gz(tar_file("a.txt"), tar_hardlink("h", "/etc/passwd")), "link_escape", "h"
    ),
    "char_device": Rejection(
        lambda: tar_gz(tar_file("a.txt"), tar_entry("dev/null", tarfile.CHRTYPE)),
        "special_file",
        "dev/null",
    ),
    "block_device": Rejection(
        lambda: tar_gz(tar_file("a.txt"), tar_entry("dev/sda", tarfile.BLKTYPE)),
        "special_file",
        "dev/sda",
    ),
    "fifo": Rejection(
        lambda: tar_gz(tar_file("a.txt"), tar_entry("pipe", tarfile.FIFOTYPE)),
        "special_file",
        "pipe",
    ),
    "too_many_files": Rejection(
        lambda: tar_gz(*(tar_file(f"f{index}.txt") for index in range(4))),
        "too_many_files",
        "f3.txt",
        SMALL_FILES,
    ),
    "too_many_entries": Rejection(
        lambda: tar_gz(tar_file("a.txt"), *(tar_dir(f"d{index}") for index in range(6))),
        "too_many_files",
        None,
        SMALL_FILES,
        mentions="6 entries",
    ),
    "path_too_deep": Rejection(
        lambda: tar_gz(tar_file(deep_path(33))), "path_too_deep", deep_path(33)
    ),
    "member_too_large": Rejection(
        lambda: tar_gz(tar_file("big.bin", RANDOM_BYTES[:101])), "too_large", "big.bin", TINY_MEMBER
    ),
    "expanded_too_large": Rejection(
        lambda: tar_gz(
            *(
                tar_file(f"f{index}.bin", RANDOM_BYTES[index * 8000 : (index + 1) * 8000])
                for index in range(3)
            )
        ),
        "expanded_too_large",
        None,
        SMALL_EXPANSION,
        mentions="20,000 bytes",
    ),
    "ratio_bomb": Rejection(
        lambda: tar_gz(tar_file("zeros.bin", bytes(4 * MIB))),
        "bomb",
        None,
        LOW_RATIO,
        mentions="50 times",
    ),
    "upload_too_large": Rejection(
        lambda: tar_gz(tar_file("a.bin", RANDOM_BYTES[:200])),
        "too_large",
        None,
        TINY_UPLOAD,
        mentions="100 bytes",
    ),
    "truncated": Rejection(truncated_tar_gz, "corrupt", "big.bin"),
    "gzip_trailer_missing": Rejection(
        lambda: tar_gz(tar_file("a.txt"))[:-4], "corrupt", None, mentions="Compressed file ended"
    ),
    "tar_end_marker_missing": Rejection(
        tar_gz_without_end_marker, "corrupt", None, mentions="tar header"
    ),
    "huge_pax_header": Rejection(
        tar_gz_with_huge_pax_header, "corrupt", None, mentions="1,048,576 bytes"
    ),
    "name_not_utf8": Rejection(
        tar_gz_with_non_utf8_name, "corrupt", "bad\udcff.txt", mentions="UTF-8"
    ),
    "gzip_not_tar": Rejection(
        lambda: gzip.compress(b"just some text, not a tar archive\n" * 40),
        "unknown_format",
        None,
        mentions="gzip",
    ),
    "no_members": Rejection(lambda: tar_gz(), "empty", None, mentions="no regular files"),
    "only_directories_and_links": Rejection(
        lambda: tar_gz(tar_dir("src"), tar_symlink("src/link", "x")),
        "empty",
        None,
        mentions="no regular files",
    ),
}

ZIP_REJECTIONS = {
    "absolute_path": Rejection(
        lambda: zip_archive(("/etc/passwd", b"x")), "absolute_path", "/etc/passwd"
    ),
    "drive_letter": Rejection(
        lambda: zip_archive(("C:/Windows/win.ini", b"x")), "absolute_path", "C:/Windows/win.ini"
    ),
    "drive_letter_backslash": Rejection(
        lambda: zip_archive(("C:\\evil.txt", b"x")), "absolute_path", "C:\\evil.txt"
    ),
    "drive_relative": Rejection(
        lambda: zip_archive(("c:evil.txt", b"x")), "absolute_path", "c:evil.txt"
    ),
    "backslash_absolute": Rejection(
        lambda: zip_archive(("\\evil.txt", b"x")), "absolute_path", "\\evil.txt"
    ),
    "unc_path": Rejection(
        lambda: zip_archive(("\\\\server\\share\\x.txt", b"x")),
        "absolute_path",
        "\\\\server\\share\\x.txt",
    ),
    "dotdot": Rejection(
        lambda: zip_archive(("../evil.txt", b"x")), "path_traversal", "../evil.txt"
    ),
    "dotdot_inside_path": Rejection(
        lambda: zip_archive(("a/../../x.txt", b"x")), "path_traversal", "a/../../x.txt"
    ),
    "backslash_dotdot": Rejection(
        lambda: zip_archive(("a\\..\\..\\x.txt", b"x")), "path_traversal", "a\\..\\..\\x.txt"
    ),
    "symlink_escaping": Rejection(
        lambda: zip_archive(("a.txt", b"x"), zip_symlink("docs/link", "../../outside")),
        "link_escape",
        "docs/link",
    ),
    "symlink_absolute": Rejection(
        lambda: zip_archive(("a.txt", b"x"), zip_symlink("link", "/etc/passwd")),
        "link_escape",
        "link",
    ),
    "fifo_mode": Rejection(
        lambda: zip_archive(("a.txt", b"x"), zip_with_mode("pipe", stat.S_IFIFO)),
        "special_file",
        "pipe",
    ),
    "char_device_mode": Rejection(
        lambda: zip_archive(("a.txt", b"x"), zip_with_mode("dev/null", stat.S_IFCHR)),
        "special_file",
        "dev/null",
    ),
    "too_many_files": Rejection(
        lambda: zip_archive(*((f"f{index}.txt", b"x") for index in range(4))),
        "too_many_files",
        "f3.txt",
        SMALL_FILES,
    ),
    "too_many_entries": Rejection(
        lambda: zip_archive(("a.txt", b"x"), *((f"d{index}/", b"") for index in range(6))),
        "too_many_files",
        None,
        SMALL_FILES,
        mentions="6 entries",
    ),
    "path_too_deep": Rejection(
        lambda: zip_archive((deep_path(33), b"x")), "path_too_deep", deep_path(33)
    ),
    "member_too_large": Rejection(
        lambda: zip_archive(("big.bin", RANDOM_BYTES[:101])), "too_large", "big.bin", TINY_MEMBER
    ),
    "expanded_too_large": Rejection(
        lambda: zip_archive(
            *(
                (f"f{index}.bin", RANDOM_BYTES[index * 8000 : (index + 1) * 8000])
                for index in range(3)
            )
        ),
        "expanded_too_large",
        None,
        SMALL_EXPANSION,
        mentions="20,000 bytes",
    ),
    "ratio_bomb": Rejection(
        lambda: zip_zeros("zeros.bin", 4), "bomb", None, LOW_RATIO, mentions="50 times"
    ),
    "overlapping_entries": Rejection(zip_with_overlapping_entries, "bomb", "b.bin"),
    "upload_too_large": Rejection(
        lambda: zip_archive(("a.bin", RANDOM_BYTES[:200])),
        "too_large",
        None,
        TINY_UPLOAD,
        mentions="100 bytes",
    ),
    "truncated": Rejection(
        lambda: zip_archive(("a.bin", RANDOM_BYTES))[:40_000],
        "corrupt",
        None,
        mentions="not a zip file",
    ),
    "crc_mismatch": Rejection(zip_with_crc_error, "corrupt", "a.txt", mentions="CRC"),
    "declared_size_too_large": Rejection(
        lambda: patch_zip_entry(zip_archive(("a.txt", b"hello" * 100)), "a.txt", file_size=600),
        "corrupt",
        "a.txt",
        mentions="expands to 500 bytes",
    ),
    "encrypted": Rejection(
        lambda: zip_with_flag("secret.txt", 0x1), "unknown_format", "secret.txt"
    ),
    "bzip2": Rejection(zip_with_bzip2_entry, "unknown_format", "a.txt", mentions="method 12"),
    "no_entries": Rejection(lambda: zip_archive(), "empty", None, mentions="no regular files"),
    "only_directories": Rejection(
        lambda: zip_archive(("src/", b"")), "empty", None, mentions="no regular files"
    ),
}

OTHER_REJECTIONS = {
    "zero_bytes": Rejection(lambda: b"", "empty", None, mentions="0 bytes"),
    "random_bytes": Rejection(
        lambda: b"\x00" + RANDOM_BYTES[:999], "unknown_format", None, mentions="00 "
    ),
    "gzip_bomb": Rejection(lambda: gzip_of_zeros(1024), "bomb", None, mentions="200 times"),
}

REJECTIONS = [
    pytest.param(case, id=f"{group}-{name}")
    for group, cases in (
        ("tar.gz", TAR_REJECTIONS),
        ("zip", ZIP_REJECTIONS),
        ("any", OTHER_REJECTIONS),
    )
    for name, case in cases.items()
]


@pytest.mark.parametrize("read", READERS)
@pytest.mark.parametrize("case", REJECTIONS)
def test_hostile_archive_rejected(case: Rejection, read):
    data = case.build()

    with pytest.raises(ArchiveError) as caught:
        read(data, case.limits)

    error = caught.value
    assert error.code == case.code, str(error)
    assert error.member == case.member, str(error)
    mentions = case.mentions if case.mentions is not None else repr(case.member)
    assert mentions in str(error)
    assert "upload" in str(error)  # every message ends with the next step


def test_gzip_bomb_stops_with_bounded_memory():
    data = gzip_of_zeros(1024)

    error, peak = traced_rejection(inspect_archive, data)

    assert error.code == "bomb"
    # Decompressing up to the 200:1 limit would hold about 200 MiB if it were
    # buffered. Streaming keeps only a few chunks of 64 KiB.
    assert peak < 4 * MIB


def test_gzip_of_zeros_is_valid_gzip():
    # The bomb test above relies on this helper producing a well-formed stream.
    assert gzip.decompress(gzip_of_zeros(3)) == bytes(3 * MIB)


@pytest.fixture(scope="module")
def zip_of_64_mib_zeros() -> bytes:
    return zip_zeros("bomb.bin", 64)


@pytest.mark.parametrize("read", READERS)
@pytest.mark.parametrize(
    ("lies", "mentions"),
    [
        # Caught before decompressing: 64 KB of deflate data cannot expand to only 1,000 bytes.
        pytest.param({"file_size": 1000}, "declares 1,000 bytes", id="size_only"),
        # Sizes consistent with each other: zipfile stops at 1,000 bytes and the CRC fails.
        pytest.param({"file_size": 1000, "compress_size": 900}, "CRC", id="both_sizes"),
    ],
)
def test_zip_bomb_lying_sizes_rejected_early(zip_of_64_mib_zeros, lies, mentions, read):
    data = patch_zip_entry(zip_of_64_mib_zeros, "bomb.bin", **lies)

    error, peak = traced_rejection(read, data)

    assert error.code == "corrupt", str(error)
    assert error.member == "bomb.bin"
    assert mentions in str(error)
    assert peak < 4 * MIB


def test_zip_bomb_rejected_from_declared_sizes(zip_of_64_mib_zeros):
    error, peak = traced_rejection(inspect_archive, zip_of_64_mib_zeros)

    assert error.code == "bomb"
    assert error.member is None
    # The declared sizes alone show the ratio, so nothing is decompressed.
    assert peak < MIB


def test_zip_entry_cap_checked_before_parsing():
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for index in range(20_000):
            archive.writestr(f"f{index}.txt", b"")
    data = buffer.getvalue()

    error, peak = traced_rejection(
        lambda data: inspect_archive(data, ArchiveLimits(max_files=100)), data
    )

    assert error.code == "too_many_files"
    assert error.member is None
    assert "200 entries" in str(error)
    # zipfile.ZipFile() alone peaks at about 10 MiB for these 20,000 records
    # (tracemalloc, CPython 3.11).
    assert peak < MIB


def test_tar_metadata_not_kept_across_entries():
    generator = random.Random(5)
    members = []
    for index in range(40):
        info, content = tar_file(f"f{index}.txt", b"x")
        info.pax_headers = {"comment": generator.randbytes(50_000).hex()}
        members.append((info, content))
    data = tar_gz(*members)

    tracemalloc.start()
    try:
        info = inspect_archive(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert info.file_count == 40
    # Each entry carries 100 KB of pax metadata, 4 MB in all, and only the
    # current entry's may stay in memory.
    assert peak < 2 * MIB


SMALL_ARCHIVES = [
    pytest.param(
        lambda: tar_gz(tar_file("a.txt", b"hello " * 50), tar_symlink("l", "a.txt")), id="tar.gz"
    ),
    pytest.param(lambda: zip_archive(("a.txt", b"hello " * 50), ("d/", b"")), id="zip"),
]


@pytest.mark.parametrize("build", SMALL_ARCHIVES)
def test_every_truncation_rejected(build):
    data = build()

    for length in range(len(data)):
        with pytest.raises(ArchiveError):
            inspect_archive(data[:length])


@pytest.mark.parametrize("build", SMALL_ARCHIVES)
def test_mutated_archive_raises_only_archive_error(build):
    data = build()
    generator = random.Random(3)

    for _ in range(500):
        mutated = bytearray(data)
        for _ in range(generator.randint(1, 3)):
            mutated[generator.randrange(len(mutated))] = generator.randrange(256)
        try:
            inspect_archive(bytes(mutated))
        except ArchiveError:
            pass  # any other exception fails the test


def test_archive_error_survives_pickling():
    error = ArchiveError("path_traversal", "archive entry '../x' leaves the archive root", "../x")

    copy = pickle.loads(pickle.dumps(error))

    assert type(copy) is ArchiveError
    assert copy.code == "path_traversal"
    assert copy.member == "../x"
    assert str(copy) == str(error)


@pytest.mark.parametrize("field", ["max_compressed_bytes", "max_files", "max_ratio"])
def test_limits_reject_non_positive(field):
    with pytest.raises(ValueError, match=field):
        ArchiveLimits(**{field: 0})
