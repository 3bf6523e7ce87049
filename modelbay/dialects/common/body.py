"""Request bodies read under a size limit: the one rule every dialect's routes follow.

A body is refused with `TooLarge` (each dialect answers it as 413 in its own error shape) as soon
as it is known to pass the limit: at once when its `Content-Length` says so, else when the bytes
streamed so far do. No route holds more than the limit of one body, and a client announcing a
bigger one is answered before it has sent it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from modelbay.core.decimals import MAX_DIGITS
from modelbay.core.errors import InvalidInput, TooLarge

#: Form fields besides the file a multipart upload may carry (the SDKs send none).
MAX_FORM_FIELDS = 16


def too_large(limit: int) -> TooLarge:
    return TooLarge(f"The request body is larger than the limit of {limit} bytes")


def check_declared_size(content_length: str | None, limit: int) -> None:
    """Refuse at once a body whose `Content-Length` passes `limit` (the server has checked its syntax)."""
    declared = content_length or ""
    if declared.isascii() and declared.isdigit() and (len(declared) > MAX_DIGITS or int(declared) > limit):
        raise too_large(limit)


async def body_chunks(request: Request, limit: int) -> AsyncIterator[bytes]:
    """The body as it arrives; raises `TooLarge` before it is read when it says it is too large,
    or as soon as the bytes received pass `limit`."""
    check_declared_size(request.headers.get("content-length"), limit)
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        yield chunk


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, refused with `TooLarge` before more than `limit` bytes of it are held."""
    return b"".join([chunk async for chunk in body_chunks(request, limit)])


@asynccontextmanager
async def multipart_file(request: Request, limit: int, field: str) -> AsyncIterator[UploadFile]:
    """The file part `field` of a `multipart/form-data` body read under `limit`, spooled to disk
    past 1 MiB by the parser; the form's files are closed on leaving.

    Parsed here rather than by FastAPI's `File(...)`, which reads the whole body before any check."""
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidInput(f"The body must be multipart/form-data with a '{field}' file")
    parser = MultiPartParser(request.headers, body_chunks(request, limit), max_files=1, max_fields=MAX_FORM_FIELDS)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise InvalidInput(f"The multipart body is not valid: {exc.message}") from None
    try:
        upload = form.get(field)
        if not isinstance(upload, UploadFile):
            raise InvalidInput(f"The multipart body needs a file part named '{field}'")
        yield upload
    finally:
        await form.close()
