"""`Content-Type` of downloads: Go's `mime.TypeByExtension`, then Go's
`http.DetectContentType` sniffing of the first 512 bytes."""

from __future__ import annotations

import functools
import mimetypes

SNIFF_LEN = 512

# Go's built-in table (the expanded one of recent releases); it wins over the
# guest's shared-mime-info globs.
_BUILTIN = {
    ".avif": "image/avif",
    ".bmp": "image/bmp",
    ".css": "text/css; charset=utf-8",
    ".csv": "text/csv; charset=utf-8",
    ".doc": "application/msword",
    ".docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    ".gif": "image/gif",
    ".gz": "application/gzip",
    ".htm": "text/html; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".ico": "image/vnd.microsoft.icon",
    ".jpeg": "image/jpeg",
    ".jpg": "image/jpeg",
    ".js": "text/javascript; charset=utf-8",
    ".json": "application/json",
    ".md": "text/markdown; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".mp3": "audio/mpeg",
    ".mp4": "video/mp4",
    ".odp": "application/vnd.oasis.opendocument.presentation",
    ".ods": "application/vnd.oasis.opendocument.spreadsheet",
    ".odt": "application/vnd.oasis.opendocument.text",
    ".oga": "audio/ogg",
    ".ogg": "audio/ogg",
    ".ogv": "video/ogg",
    ".otf": "font/otf",
    ".pdf": "application/pdf",
    ".png": "image/png",
    ".ppt": "application/vnd.ms-powerpoint",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".rtf": "application/rtf",
    ".svg": "image/svg+xml",
    ".tar": "application/x-tar",
    ".text": "text/plain; charset=utf-8",
    ".tif": "image/tiff",
    ".tiff": "image/tiff",
    ".ttf": "font/ttf",
    ".txt": "text/plain; charset=utf-8",
    ".wasm": "application/wasm",
    ".wav": "audio/wav",
    ".weba": "audio/webm",
    ".webm": "video/webm",
    ".webp": "image/webp",
    ".woff": "font/woff",
    ".woff2": "font/woff2",
    ".xls": "application/vnd.ms-excel",
    ".xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
    ".xml": "text/xml; charset=utf-8",
    ".zip": "application/zip",
}

# The guest's MIME database, read as Go reads it: the first globs2 file found,
# else the mime.types files.
GLOBS2_FILES = ("/usr/local/share/mime/globs2", "/usr/share/mime/globs2")
MIME_TYPES_FILES = (
    "/etc/mime.types",
    "/etc/apache2/mime.types",
    "/etc/apache/mime.types",
    "/etc/httpd/conf/mime.types",
)


def _with_charset(mime_type: str) -> str:
    if mime_type.startswith("text/") and "charset=" not in mime_type:
        return mime_type + "; charset=utf-8"
    return mime_type


def _load_globs2(path: str, table: dict[str, str]) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return False
    for line in lines:
        fields = line.split(":")
        if len(fields) < 3 or not fields[0] or len(fields[2]) < 3:
            continue
        if fields[0][0] == "#" or not fields[2].startswith("*."):
            continue
        ext = fields[2][1:]
        if any(c in ext for c in "?*[") or ext in table:
            continue  # weight order: the first entry wins, built-ins win
        table[ext] = _with_charset(fields[1])
    return True


@functools.cache
def _tables() -> tuple[dict[str, str], dict[str, str]]:
    table = dict(_BUILTIN)
    if not any(_load_globs2(path, table) for path in GLOBS2_FILES):
        for path in MIME_TYPES_FILES:
            found = mimetypes.read_mime_types(path) or {}
            table.update({ext: _with_charset(t) for ext, t in found.items()})
    lower: dict[str, str] = {}
    for ext, mime_type in table.items():
        lower.setdefault(ext.lower(), mime_type)
    return table, lower


def go_ext(name: str) -> str:
    """Go's `filepath.Ext`: from the last `.` of the last element (`.env` → `.env`)."""
    for i in range(len(name) - 1, -1, -1):
        if name[i] == "/":
            return ""
        if name[i] == ".":
            return name[i:]
    return ""


def type_by_extension(name: str) -> str:
    ext = go_ext(name)
    if not ext:
        return ""
    table, lower = _tables()
    return table.get(ext) or lower.get(ext.lower(), "")


# --- Go's http.DetectContentType (WHATWG MIME sniffing, Go's subset) ---

_WS = b"\t\n\x0c\r "
_HTML_TAGS = (
    b"<!DOCTYPE HTML",
    b"<HTML",
    b"<HEAD",
    b"<SCRIPT",
    b"<IFRAME",
    b"<H1",
    b"<DIV",
    b"<FONT",
    b"<TABLE",
    b"<A",
    b"<STYLE",
    b"<TITLE",
    b"<B",
    b"<BODY",
    b"<BR",
    b"<P",
    b"<!--",
)
_BINARY_BYTES = frozenset([*range(0x00, 0x09), 0x0B, *range(0x0E, 0x1B), *range(0x1C, 0x20)])


def _html(data: bytes, tag: bytes) -> bool:
    if len(data) < len(tag) + 1:
        return False
    for i, b in enumerate(tag):
        db = data[i]
        if 0x41 <= b <= 0x5A:
            db &= 0xDF
        if db != b:
            return False
    return data[len(tag)] in b" >"


def _masked(data: bytes, mask: bytes, pattern: bytes) -> bool:
    if len(data) < len(pattern):
        return False
    return all(data[i] & m == p for i, (m, p) in enumerate(zip(mask, pattern, strict=True)))


def _mp4(data: bytes) -> bool:
    if len(data) < 12:
        return False
    box = int.from_bytes(data[:4], "big")
    if len(data) < box or box % 4 != 0 or data[4:8] != b"ftyp":
        return False
    return any(data[st : st + 3] == b"mp4" for st in range(8, box, 4) if st != 12)


_EXACT_BEFORE_BOM = ((b"%PDF-", "application/pdf"), (b"%!PS-Adobe-", "application/postscript"))
_MASKED_BOMS = (
    (b"\xff\xff\x00\x00", b"\xfe\xff\x00\x00", "text/plain; charset=utf-16be"),
    (b"\xff\xff\x00\x00", b"\xff\xfe\x00\x00", "text/plain; charset=utf-16le"),
    (b"\xff\xff\xff\x00", b"\xef\xbb\xbf\x00", "text/plain; charset=utf-8"),
)
_IMAGES_EXACT = (
    (b"\x00\x00\x01\x00", "image/x-icon"),
    (b"\x00\x00\x02\x00", "image/x-icon"),
    (b"BM", "image/bmp"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)
_RIFF_MASK = b"\xff\xff\xff\xff\x00\x00\x00\x00\xff\xff\xff\xff"
_MEDIA_MASKED = (
    (b".snd", b"\xff\xff\xff\xff", "audio/basic"),
    (b"FORM\x00\x00\x00\x00AIFF", _RIFF_MASK, "audio/aiff"),
    (b"ID3", b"\xff\xff\xff", "audio/mpeg"),
    (b"OggS\x00", b"\xff\xff\xff\xff\xff", "application/ogg"),
    (b"MThd\x00\x00\x00\x06", b"\xff" * 8, "audio/midi"),
    (b"RIFF\x00\x00\x00\x00AVI ", _RIFF_MASK, "video/avi"),
    (b"RIFF\x00\x00\x00\x00WAVE", _RIFF_MASK, "audio/wave"),
)
_AFTER_MP4_EXACT = ((b"\x1a\x45\xdf\xa3", "video/webm"),)
_FONTS_AND_ARCHIVES = (
    (b"\x00\x01\x00\x00", "font/ttf"),
    (b"OTTO", "font/otf"),
    (b"ttcf", "font/collection"),
    (b"wOFF", "font/woff"),
    (b"wOF2", "font/woff2"),
    (b"\x1f\x8b\x08", "application/x-gzip"),
    (b"PK\x03\x04", "application/zip"),
    (b"Rar!\x1a\x07\x00", "application/x-rar-compressed"),
    (b"Rar!\x1a\x07\x01\x00", "application/x-rar-compressed"),
    (b"\x00asm", "application/wasm"),
)


def detect_content_type(data: bytes) -> str:
    """The type Go's `http.DetectContentType` gives the first 512 bytes of a file."""
    data = data[:SNIFF_LEN]
    first = 0
    while first < len(data) and data[first] in _WS:
        first += 1
    trimmed = data[first:]
    for tag in _HTML_TAGS:
        if _html(trimmed, tag):
            return "text/html; charset=utf-8"
    if trimmed.startswith(b"<?xml"):
        return "text/xml; charset=utf-8"
    for sig, ctype in _EXACT_BEFORE_BOM:
        if data.startswith(sig):
            return ctype
    for mask, pattern, ctype in _MASKED_BOMS:
        if _masked(data, mask, pattern):
            return ctype
    for sig, ctype in _IMAGES_EXACT:
        if data.startswith(sig):
            return ctype
    if _masked(
        data,
        b"\xff\xff\xff\xff\x00\x00\x00\x00\xff\xff\xff\xff\xff\xff",
        b"RIFF\x00\x00\x00\x00WEBPVP",
    ):
        return "image/webp"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    for pattern, mask, ctype in _MEDIA_MASKED:
        if _masked(data, mask, pattern):
            return ctype
    if _mp4(data):
        return "video/mp4"
    for sig, ctype in _AFTER_MP4_EXACT:
        if data.startswith(sig):
            return ctype
    if _masked(data, b"\x00" * 34 + b"\xff\xff", b"\x00" * 34 + b"LP"):
        return "application/vnd.ms-fontobject"
    for sig, ctype in _FONTS_AND_ARCHIVES:
        if data.startswith(sig):
            return ctype
    if not any(b in _BINARY_BYTES for b in trimmed):
        return "text/plain; charset=utf-8"
    return "application/octet-stream"
