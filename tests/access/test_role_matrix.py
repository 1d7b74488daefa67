"""Every route of the API by every role: who is let through, who is refused.

Reads (``GET``) take any role of the ``api`` group's rule and nobody without
one; writes take the editor role and above, alert channels the admin role.
A request let through may still be refused for its content (a 400 naming a
missing field, a 404): what is checked here is only whether the access rule
let it through (never 401 or 403), or refused it with the status its role
deserves."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from aegis_mw.endpoints.api import PARAMETERS
from aegis_mw.endpoints.writes import READ_ROLES, WRITES, write_role
from tests.api_apps import ADMIN, API, EDITOR, VIEWER, Served, serving

pytestmark = pytest.mark.anyio

#: role -> the token that carries it (None: no credentials)
ROLES = {"none": None, "viewer": VIEWER, "editor": EDITOR, "admin": ADMIN}
#: role -> its rank: a role may do what those below it may (the roles' names
#: are those ``write_role`` gives)
RANK = {"none": 0, "viewer": 1, "editor": 2, "admin": 3}


def routes() -> list[tuple[str, str]]:
    reads = [("GET", endpoint) for endpoint in PARAMETERS if endpoint != "openapi.json"]
    writes = [(method, endpoint) for endpoint, methods in WRITES.items() for method in methods]
    return [*reads, *writes]


def needed(method: str, endpoint: str) -> int:
    """The rank a request needs: a read the viewer's (the audit log the
    admin's), a write its role's."""
    if method == "GET":
        return RANK[READ_ROLES.get(endpoint, "viewer")]
    return RANK[write_role(endpoint)]


#: The app over ASGI (Starlette) and over WSGI (Flask): each checks access itself.
serve = serving(Served)


@pytest.mark.parametrize("role", list(ROLES))
@pytest.mark.parametrize(("method", "endpoint"), routes())
async def test_each_route_lets_through_exactly_the_roles_it_should(
    serve: Callable[..., Awaitable[Served]], role: str, method: str, endpoint: str
) -> None:
    served = await serve(alerts_enabled=True)
    headers = {} if method == "GET" else {"content-type": "application/json"}
    body = b"{}" if method in ("POST", "PUT", "PATCH") else None
    answer = await served.request(
        method, f"{API}/{endpoint}", token=ROLES[role], headers=headers, content=body
    )
    if role == "none":
        assert answer.status_code == 401, answer.text
        assert "WWW-Authenticate" in answer.headers
    elif RANK[role] < needed(method, endpoint):
        assert answer.status_code == 403, answer.text
        assert answer.json()["error"]["code"] == "forbidden"
    else:
        assert answer.status_code not in (401, 403), answer.text


def test_the_matrix_covers_every_route_of_the_api() -> None:
    """New endpoints join the matrix by being in PARAMETERS or WRITES."""
    covered = {endpoint for _, endpoint in routes()}
    assert covered >= {"events", "incidents", "incident", "incident-timeline", "stats"}
    assert {"alert-channels", "alert-rules", "silences", "custom-metrics"} <= covered
    assert needed("PUT", "alert-channels") == RANK["admin"]
    assert needed("POST", "events") == needed("PATCH", "incidents") == RANK["editor"]
    assert needed("GET", "audit") == RANK["admin"] > needed("GET", "incidents")
