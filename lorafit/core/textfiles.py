"""What a file that should be UTF-8 text looks like when it is not, and what to do about it.

Stdlib only: the recipe loader, the data readers and the run directory all explain a bad file the same way."""

from __future__ import annotations

import os

SUFFIXES = (".jsonl", ".json", ".parquet", ".csv")  # the local file kinds data.train / data.eval read
HEAD = 1 << 16  # bytes sniffed at the start of a file
UTF8_BOM = b"\xef\xbb\xbf"
_MAGIC = (
    (b"PAR1", "a Parquet file"),
    (b"\x1f\x8b", "gzip-compressed"),
    (b"BZh", "bzip2-compressed"),
    (b"\xfd7zXZ\x00", "xz-compressed"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed"),
    (b"PK\x03\x04", "a zip archive (an .xlsx workbook is one)"),
    (b"\xd0\xcf\x11\xe0", "an old Office file (.xls)"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"ARROW1", "an Arrow file"),
    (b"\x89PNG", "a PNG image"),
    (b"%PDF", "a PDF"),
)


def describe_bytes(head: bytes) -> str:
    """What the start of a file looks like, in a few words: `UTF-16 text`, `gzip-compressed`, `binary`, ..."""
    if head.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        return "UTF-32 text"
    if head.startswith((b"\xff\xfe", b"\xfe\xff")):
        return "UTF-16 text"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    sample = head[:4096]
    if len(sample) >= 4 and b"\x00" in sample:
        # ASCII in UTF-16 without a BOM: every other byte is 0 (odd ones little-endian, even ones big-endian).
        even, odd = sample[0::2], sample[1::2]
        if odd.count(0) > 0.7 * len(odd) and even.count(0) < 0.1 * len(even):
            return "UTF-16 text"
        if even.count(0) > 0.7 * len(even) and odd.count(0) < 0.1 * len(odd):
            return "UTF-16 text"
        return "binary"
    try:
        text = sample.decode("utf-8")
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data" and len(head) < HEAD:
            return "UTF-8 text cut off in the middle of a character (truncated)"
        if exc.reason == "unexpected end of data":
            text = sample[: exc.start].decode("utf-8")  # only the sample was cut
        else:
            controls = sum(b < 9 or 13 < b < 32 for b in sample)
            return "binary" if controls > 0.05 * len(sample) else "text in another encoding (Latin-1 / Windows-1252?)"
    if text.startswith("\ufeff"):
        text = text[1:]
    start = text.lstrip()[:1]
    return "JSON text" if start in ("{", "[") else "empty" if not start else "text"


def encoding_fix(kind: str, name: str) -> str:
    stem, suffix = os.path.splitext(name)
    if kind.startswith(("UTF-16", "UTF-32")):
        enc = kind.split()[0].lower()
        return f"convert it to UTF-8: iconv -f {enc} -t utf-8 {name} > {stem}.utf8{suffix}"
    if kind.startswith("text in another encoding"):
        return f"convert it to UTF-8: iconv -f cp1252 -t utf-8 {name} > {stem}.utf8{suffix} (or -f latin1)"
    if kind.endswith("-compressed"):
        tool = {"gzip": "gunzip -k", "bzip2": "bunzip2 -k", "xz": "unxz -k", "zstd": "unzstd"}[kind.split("-")[0]]
        return f"decompress it first: {tool} {name}"
    if kind.startswith("a zip archive"):
        return "unpack it, or export the sheet as CSV UTF-8 (comma delimited)"
    if kind == "a Parquet file":
        return f"give it the .parquet extension: mv {name} {stem}.parquet"
    if "truncated" in kind:
        return "the file is cut off: copy or export it again"
    return f"point data.train / data.eval at {', '.join(SUFFIXES)} files"
