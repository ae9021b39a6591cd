"""The door of the HTTP API: who is asking, how much they send, and one access line per answer.

A pure ASGI middleware, outermost, so that it sees every request and every answer:

* **Authentication before the body.** A `/v1` request without a valid API key is answered 401 before one
  byte of its body is read, so an anonymous client cannot make the server read (or buffer) anything.
* **Size while it streams.** Content-Length over the limit is refused at once; a body without one
  (`Transfer-Encoding: chunked`) is counted as it arrives and refused with 413 the moment it passes the
  limit. The server stops reading there; uvicorn's flow control keeps the rest in the client's socket.
* **One access line** for every answer, 500 and 503 included, with the path escaped and identity numbers
  masked; **one traceback** for an error nobody handled, logged here with the request it belongs to.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from kanalvaxel.domain.errors import UnavailableError
from kanalvaxel.domain.masking import escape_controls, mask_identity_numbers
from kanalvaxel.entrypoints.api import errors
from kanalvaxel.ports import ClientRecord

access_log = logging.getLogger("kanalvaxel.access")
log = logging.getLogger("kanalvaxel.entrypoints.api")

#: Where the authenticated client is kept for the route's dependency (scope["state"]).
CLIENT_STATE = "kanalvaxel_client"
#: Paths that need an API key.
PROTECTED_PREFIX = "/v1/"


class BodyTooLargeError(HTTPException):
    """Raised from `receive` when a streamed body passes the limit. An HTTPException, because FastAPI turns
    any other exception raised while it reads a body into a 400."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, f"the request body is larger than the limit of {limit} bytes")


class Guard:
    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        authenticate: Callable[[str], ClientRecord | None],
        remembered: Callable[[str], ClientRecord | None] = lambda _key: None,
    ) -> None:
        """`authenticate` may ask the database (it runs in the threadpool); `remembered` answers from
        memory only (on the event loop), None meaning "ask `authenticate`"."""
        self.app = app
        self.max_body = max_body
        self.authenticate = authenticate
        self.remembered = remembered

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        where = f"{escape_controls(scope['method'])} {escape_controls(mask_identity_numbers(scope['path']))}"
        status: list[int] = []
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        body = _BodyState(headers)

        async def send_and_note(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(int(message["status"]))
                if body.unread:
                    # Answered before the body was read to its end (401, 413): close the connection, or
                    # the server would go on reading (and discarding) whatever the client still sends.
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            early = await self._refuse_early(scope, headers)
            if early is not None:
                await early(scope, receive, send_and_note)
            else:
                await self.app(scope, self._counting(receive, body), send_and_note)
        except UnavailableError as exc:  # a dependency failed outside a route's own handling
            if not status:
                await errors.unavailable(exc)(scope, receive, send_and_note)
        except Exception:
            log.exception("unhandled error in %s", where)
            if not status:
                await errors.internal_error()(scope, receive, send_and_note)
        finally:
            access_log.info(
                "%s %d %.1f ms", where, status[0] if status else 500, (time.perf_counter() - started) * 1000
            )

    async def _refuse_early(self, scope: Scope, headers: dict[str, str]) -> Any:
        length = headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self.max_body:
            return errors.problem(
                413,
                "too-large",
                "Request too large",
                f"the request body is {int(length)} bytes; the limit is {self.max_body}",
            )
        if not scope["path"].startswith(PROTECTED_PREFIX):
            return None
        scheme, _, key = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            return errors.problem(401, "unauthorized", "Authentication required", errors.NO_KEY, field=None)
        client = self.remembered(key.strip()) or await run_in_threadpool(self.authenticate, key.strip())
        if client is None:
            return errors.problem(
                401, "unauthorized", "Authentication required", errors.UNKNOWN_KEY, field=None
            )
        scope.setdefault("state", {})[CLIENT_STATE] = client
        return None

    def _counting(self, receive: Receive, body: _BodyState) -> Receive:
        seen = 0
        limit = self.max_body

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLargeError(limit)
                if not message.get("more_body", False):
                    body.unread = False
            return message

        return counted


class _BodyState:
    """Whether a request has a body that has not been read to its end."""

    def __init__(self, headers: dict[str, str]) -> None:
        length = headers.get("content-length", "").strip()
        self.unread = "transfer-encoding" in headers or (length.isdigit() and int(length) > 0)
