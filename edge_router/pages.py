"""The pages the router itself answers with (never the tool's): small, static, no client input."""

from __future__ import annotations

from http import HTTPStatus

_TEMPLATE = (
    "<!doctype html><html><head><meta charset=utf-8><title>{title}</title></head>"
    "<body style=\"font-family:sans-serif;max-width:40em;margin:4em auto\">"
    "<h1>{title}</h1><p>{text}</p><p><small>dit4c edge router</small></p></body></html>\n"
)

TEXTS = {
    400: "The request was malformed.",
    404: "There is no instance at this address.",
    408: "The request took too long to arrive.",
    421: "This connection already serves another instance.",
    429: "Too many connections from your address. Close some and try again.",
    431: "The request headers are too large.",
    502: "The instance did not answer. It may be starting up or shutting down.",
    503: "The instance is starting or offline. Try again in a moment.",
    504: "The instance took too long to answer.",
}


def error_response(status: int, *, text: str | None = None) -> bytes:
    """A complete HTTP/1.1 response that closes the connection."""
    title = f"{status} {HTTPStatus(status).phrase}"
    body = _TEMPLATE.format(title=title, text=text or TEXTS.get(status, "")).encode()
    head = (f"HTTP/1.1 {title}\r\nContent-Type: text/html; charset=utf-8\r\n"
            f"Content-Length: {len(body)}\r\nCache-Control: no-store\r\nConnection: close\r\n"
            + ("Retry-After: 5\r\n" if status in (429, 503) else "") + "\r\n")
    return head.encode() + body
