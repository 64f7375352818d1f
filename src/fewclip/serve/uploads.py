"""Request bodies for the server: read with a size limit, multipart uploads parsed in memory.

Nothing from a request is written to disk: the body is read into memory up to a limit (413
beyond it, before the rest is read), and ``multipart/form-data`` parts are collected by
python-multipart's streaming parser into bytes.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from fewclip.errors import FewclipError

__all__ = ["BodyTooLarge", "Upload", "parse_multipart", "read_body"]


class BodyTooLarge(FewclipError, ValueError):
    """The request body is larger than the server accepts (HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"request body larger than {limit / 2**20:g} MiB (the server's --max-upload-mb)"
        )


class BadForm(FewclipError, ValueError):
    """The body is not a readable multipart form (HTTP 400)."""


@dataclass(frozen=True)
class Upload:
    """One file part of a multipart form."""

    field: str
    filename: str
    data: bytes


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, refusing one larger than ``limit`` bytes: at once when the
    ``Content-Length`` header says so, else as soon as the streamed bytes pass the limit."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


class _Part:
    """The headers and data of the part the parser is in."""

    def __init__(self) -> None:
        self.begin()

    def begin(self) -> None:
        self.headers: dict[bytes, bytes] = {}
        self.field = b""
        self.value = b""
        self.data: list[bytes] = []

    def header_field(self, data: bytes, start: int, end: int) -> None:
        self.field += data[start:end]

    def header_value(self, data: bytes, start: int, end: int) -> None:
        self.value += data[start:end]

    def header_end(self) -> None:
        self.headers[self.field.lower()] = self.value
        self.field, self.value = b"", b""

    def add_data(self, data: bytes, start: int, end: int) -> None:
        self.data.append(data[start:end])


def _disposition(value: bytes) -> dict[str, str]:
    from python_multipart.multipart import parse_options_header

    _, params = parse_options_header(value)
    return {k.decode("latin-1"): v.decode("utf-8", "replace") for k, v in params.items()}


def parse_multipart(content_type: str, body: bytes) -> list[Upload]:
    """The file parts (those with a ``filename``) of a ``multipart/form-data`` body, in order;
    plain form fields are ignored. Raises :class:`BadForm` for a malformed body."""
    from python_multipart.multipart import MultipartParser, parse_options_header

    kind, params = parse_options_header(content_type)
    boundary = params.get(b"boundary")
    if kind != b"multipart/form-data" or not boundary:
        raise BadForm("expected a multipart/form-data body with a boundary")
    uploads: list[Upload] = []
    part = _Part()

    def end() -> None:
        disp = _disposition(part.headers.get(b"content-disposition", b""))
        if "filename" in disp:
            uploads.append(Upload(disp.get("name", ""), disp["filename"], b"".join(part.data)))

    parser = MultipartParser(
        boundary,
        callbacks={  # type: ignore[arg-type]
            "on_part_begin": part.begin,
            "on_header_field": part.header_field,
            "on_header_value": part.header_value,
            "on_header_end": part.header_end,
            "on_part_data": part.add_data,
            "on_part_end": end,
        },
    )
    try:
        parser.write(body)
        parser.finalize()
    except Exception as e:
        raise BadForm(f"malformed multipart body ({type(e).__name__}: {e})") from None
    return uploads
