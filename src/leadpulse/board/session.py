"""Signing in to the board: a person presents the API token once (a form, never a URL) and gets
a session cookie: HttpOnly (no script reads it), SameSite=Strict (no other site's page sends
it, so no cross-site request forgery), Secure when the board is served over HTTPS, and signed
with an HMAC (itsdangerous, timestamped: it expires).

The signing secret is derived from the API token (HMAC of the token and a fixed label), so every
worker behind a load balancer accepts every other's cookies without another secret to
distribute, and rotating the token signs everybody out. With no token set the board is open,
like the JSON API.
"""

from __future__ import annotations

import hashlib
import hmac

from aiohttp import web
from itsdangerous import BadSignature, TimestampSigner
from pydantic import SecretStr

COOKIE = "leadpulse_board"
#: how long a sign-in lasts (a working day and a half)
MAX_AGE_S = 12 * 3600
_LABEL = b"leadpulse board session v1"


class Sessions:
    def __init__(self, token: SecretStr | None) -> None:
        self.token = token
        self._signer: TimestampSigner | None = None
        if token is not None:
            secret = hmac.new(token.get_secret_value().encode(), _LABEL, hashlib.sha256).digest()
            self._signer = TimestampSigner(secret, salt="board-session", digest_method=hashlib.sha256)

    @property
    def open(self) -> bool:
        return self.token is None

    def token_matches(self, presented: str) -> bool:
        if self.token is None:
            return True
        # surrogateescape: undecodable bytes are a wrong token, not an error (as api._authorized)
        return hmac.compare_digest(presented.encode("utf-8", "surrogateescape"), self.token.get_secret_value().encode())

    def signed_in(self, request: web.BaseRequest) -> bool:
        if self._signer is None:
            return True
        cookie = request.cookies.get(COOKIE)
        if not cookie:
            return False
        try:
            self._signer.unsign(cookie, max_age=MAX_AGE_S)
        except BadSignature:  # also SignatureExpired
            return False
        return True

    def bearer_ok(self, request: web.BaseRequest) -> bool:
        """The JSON API's way in, accepted by the board's JSON too."""
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        return self.token is None or (scheme.lower() == "bearer" and self.token_matches(presented))

    def allowed(self, request: web.BaseRequest) -> bool:
        return self.signed_in(request) or self.bearer_ok(request)

    def sign_in(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        assert self._signer is not None
        response.set_cookie(COOKIE, self._signer.sign(b"board").decode(), max_age=MAX_AGE_S, path="/board",
                            httponly=True, samesite="Strict", secure=_https(request))

    def sign_out(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        response.del_cookie(COOKIE, path="/board", httponly=True, samesite="Strict", secure=_https(request))


def _https(request: web.BaseRequest) -> bool:
    # Behind a TLS-terminating proxy the scheme arrives as X-Forwarded-Proto: honoured only for
    # making the cookie stricter, never looser.
    return request.secure or request.headers.get("X-Forwarded-Proto", "").lower() == "https"
