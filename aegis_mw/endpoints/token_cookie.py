"""``/dashboard?token=...`` traded for a cookie, so the token leaves the URL.

A token in a URL is written into the server's access log (and the browser's
history) on every page load. The first load with a valid token answers 303 to
the same URL without it, other query parameters kept, and sets the
``aegis_token`` cookie once for each path the page's requests go to: the
page, the JSON API and the stream (a cookie has one path, and their common
parent would be ``/``, sending the token with every request to the app).
HttpOnly (no script reads it), SameSite=Strict (no other site's page makes
the browser send it), Secure when the request came over https, and no
expiry: it ends with the browser's session.
"""

from __future__ import annotations

from http.cookies import Morsel, SimpleCookie
from urllib.parse import quote_from_bytes, unquote_plus

from ..core.settings import AegisSettings
from .response import Response

TOKEN_COOKIE = "aegis_token"
#: Kept as they are in the query string; anything else is %-escaped.
_SAFE = "!$'()*+,;=:@/?%"


def cookie_paths(settings: AegisSettings) -> tuple[str, ...]:
    """Where the page's own requests go: the page, the JSON API, the stream."""
    paths = (settings.dashboard_path, settings.api_path, settings.ws_path)
    return tuple(dict.fromkeys(path for path in paths if path))


def without_token(query_string: bytes) -> str:
    """The query string without its ``token`` parameters, the others kept as
    they came (as ASCII: bytes a server passed raw are %-escaped)."""
    kept = []
    for part in query_string.split(b"&"):
        name = part.split(b"=", 1)[0].decode("latin-1")
        if part and unquote_plus(name) != "token":
            kept.append(quote_from_bytes(part, safe=_SAFE))
    return "&".join(kept)


def token_login(
    token: str, page: str, query_string: bytes, paths: tuple[str, ...], *, secure: bool
) -> Response:
    """303 to ``page`` with ``query_string`` less its token, setting the cookie
    for each of ``paths``."""
    query = without_token(query_string)
    headers = [
        ("location", f"{page}?{query}" if query else page),
        ("referrer-policy", "no-referrer"),
    ]
    # Quoted and escaped as SimpleCookie does (a token may hold ';' or '"'),
    # which is how the cookie is read back.
    coded = SimpleCookie().value_encode(token)[1]
    for path in paths:
        morsel: Morsel[str] = Morsel()
        morsel.set(TOKEN_COOKIE, token, coded)
        morsel["path"] = path
        morsel["httponly"] = True
        morsel["samesite"] = "Strict"
        if secure:
            morsel["secure"] = True
        headers.append(("set-cookie", morsel.OutputString()))
    return Response(303, b"", "text/plain; charset=utf-8", headers)
