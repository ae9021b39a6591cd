"""Request dependencies: the container and the authenticated client."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from kanalvaxel.bootstrap import Container
from kanalvaxel.entrypoints.api.errors import NO_KEY, UNKNOWN_KEY, AuthError
from kanalvaxel.entrypoints.api.guard import CLIENT_STATE
from kanalvaxel.ports import ClientRecord

_bearer = HTTPBearer(auto_error=False, description="An API key made with `kanalvaxel clients add`.")


# Both are `async def` although they wait for nothing: FastAPI runs a plain `def` dependency in the
# threadpool, and the hop to a thread and back cost more than all they do.
async def container(request: Request) -> Container:
    c: Container = request.app.state.container
    return c


async def client(
    request: Request,
    c: Annotated[Container, Depends(container)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ClientRecord:
    # The guard has authenticated the request before its body was read (guard.py); this is the same check
    # for an app mounted without it.
    known = getattr(request.state, CLIENT_STATE, None)
    if isinstance(known, ClientRecord):
        return known
    if credentials is None:
        raise AuthError(NO_KEY)
    found = c.clients.remembered(credentials.credentials) or await run_in_threadpool(
        c.clients.authenticate, credentials.credentials
    )
    if found is None:
        raise AuthError(UNKNOWN_KEY)
    return found


ContainerDep = Annotated[Container, Depends(container)]
ClientDep = Annotated[ClientRecord, Depends(client)]
