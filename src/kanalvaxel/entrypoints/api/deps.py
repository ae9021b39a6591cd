"""Request dependencies: the container and the authenticated client."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from kanalvaxel.bootstrap import Container
from kanalvaxel.entrypoints.api.errors import AuthError
from kanalvaxel.ports import ClientRecord

_bearer = HTTPBearer(auto_error=False, description="An API key made with `kanalvaxel clients add`.")


def container(request: Request) -> Container:
    c: Container = request.app.state.container
    return c


def client(
    c: Annotated[Container, Depends(container)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> ClientRecord:
    if credentials is None:
        raise AuthError("an API key is required: Authorization: Bearer <key>")
    found = c.clients.authenticate(credentials.credentials)
    if found is None:
        raise AuthError("the API key is unknown or revoked")
    return found


ContainerDep = Annotated[Container, Depends(container)]
ClientDep = Annotated[ClientRecord, Depends(client)]
