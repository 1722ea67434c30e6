"""The dashboard's safety rules: authentication, cross-site refusal, response headers.

Kept apart from the routes so that each rule is small enough to read in one go and to test
on its own. Nothing here imports werkzeug: the rules work on the WSGI environ.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import logging
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any, TypeAlias
from urllib.parse import urlsplit

from workmatic.exceptions import ValidationError

if TYPE_CHECKING:
    from _typeshed.wsgi import WSGIEnvironment

__all__ = [
    "SECURITY_HEADERS",
    "Auth",
    "Authenticator",
    "is_same_origin",
    "make_authenticator",
]

logger = logging.getLogger(__name__)

#: What ``auth=`` accepts: ``(user, password)`` for HTTP basic auth, or a callable that is
#: given the WSGI environ and returns whether the request may see the dashboard.
Auth: TypeAlias = "tuple[str, str] | Callable[[WSGIEnvironment], bool] | None"

#: Sent with every response of the dashboard (pages, static files, JSON, errors, redirects).
SECURITY_HEADERS: dict[str, str] = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
        "form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
}

_DEFAULT_PORTS = {"http": 80, "https": 443}


class Authenticator:
    """Decide whether a request may use the dashboard.

    :param check: returns True when the environ is allowed in.
    :param challenge: the ``WWW-Authenticate`` value to send with a 401, or None to answer
        403 instead (a callable ``auth=`` has no standard challenge to offer).
    """

    def __init__(self, check: Callable[[WSGIEnvironment], bool], challenge: str | None) -> None:
        self._check = check
        self.challenge = challenge

    def __call__(self, environ: WSGIEnvironment) -> bool:
        """Return True when the request is allowed in; an exception in the check denies.

        :param environ: the request's WSGI environ.
        """
        try:
            return bool(self._check(environ))
        except Exception:
            logger.exception("the dashboard's auth callable raised; request denied")
            return False


def make_authenticator(auth: Auth) -> Authenticator | None:
    """Turn the ``auth=`` option into an :class:`Authenticator` (None: no authentication).

    :param auth: ``None``, ``(user, password)`` or a callable ``(environ) -> bool``.
    :returns: the authenticator, or None when ``auth`` is None.
    :raises workmatic.ValidationError: when ``auth`` is none of those.
    """
    if auth is None:
        return None
    if isinstance(auth, tuple):
        if len(auth) != 2 or not all(isinstance(part, str) for part in auth):
            raise ValidationError({"auth": ["Expected (user, password), two strings."]})
        user, password = auth
        if not user or ":" in user:
            raise ValidationError({"auth": ["The user must be non-empty and contain no ':'."]})
        if not password:
            raise ValidationError({"auth": ["The password must not be empty."]})
        expected_user = user.encode("utf-8")
        expected_password = password.encode("utf-8")

        def check_basic(environ: WSGIEnvironment) -> bool:
            return _basic_credentials_match(environ, expected_user, expected_password)

        return Authenticator(check_basic, 'Basic realm="Workmatic", charset="UTF-8"')
    if callable(auth):
        return Authenticator(auth, None)
    raise ValidationError({"auth": ["Expected (user, password) or a callable (environ) -> bool."]})


def _basic_credentials_match(
    environ: MutableMapping[str, Any], expected_user: bytes, expected_password: bytes
) -> bool:
    """Compare the request's basic credentials with the expected ones in constant time."""
    header = environ.get("HTTP_AUTHORIZATION", "")
    if not isinstance(header, str):
        return False
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != "basic":
        return False
    try:
        decoded = base64.b64decode(value.strip().encode("latin-1"), validate=True)
    except (binascii.Error, ValueError, UnicodeEncodeError):
        return False
    user, separator, password = decoded.partition(b":")
    if not separator:
        return False
    # Both comparisons always run, so the time taken does not tell which part was wrong.
    user_ok = hmac.compare_digest(user, expected_user)
    password_ok = hmac.compare_digest(password, expected_password)
    return user_ok and password_ok


def is_same_origin(environ: MutableMapping[str, Any]) -> bool:
    """Tell whether a state-changing request may proceed (the cross-site request rule).

    - ``Sec-Fetch-Site`` present (every current browser sends it): only ``same-origin``
      passes.
    - otherwise an ``Origin`` header must name the request's own host (scheme's default
      port assumed when absent); ``Origin: null`` never passes.
    - neither header: the request does not come from a browser page (curl, a script, a
      health check), so it cannot be a cross-site request forgery and passes. Protect the
      dashboard with ``auth=`` when such clients must be kept out.

    :param environ: the request's WSGI environ.
    :returns: True when the request is same-origin or not from a browser.
    """
    site = environ.get("HTTP_SEC_FETCH_SITE")
    if site is not None:
        return str(site).strip().lower() == "same-origin"
    origin = environ.get("HTTP_ORIGIN")
    if origin is None:
        return True
    origin_parts = _origin(str(origin))
    if origin_parts is None:
        return False
    scheme, origin_host, origin_port = origin_parts
    host = environ.get("HTTP_HOST") or _server_host(environ)
    try:
        parsed = urlsplit("//" + str(host))
        own_host, own_port = parsed.hostname, parsed.port
    except ValueError:
        return False
    if own_host is None:
        return False
    return (own_host, own_port or _DEFAULT_PORTS[scheme]) == (origin_host, origin_port)


def _origin(origin: str) -> tuple[str, str, int] | None:
    """Split an ``Origin`` header into (scheme, host, port), or None if it is not a URL."""
    try:
        parsed = urlsplit(origin.strip())
        port = parsed.port
    except ValueError:
        return None
    scheme = parsed.scheme.lower()
    if scheme not in _DEFAULT_PORTS or not parsed.hostname:
        return None
    return scheme, parsed.hostname, port or _DEFAULT_PORTS[scheme]


def _server_host(environ: MutableMapping[str, Any]) -> str:
    name = str(environ.get("SERVER_NAME", ""))
    port = str(environ.get("SERVER_PORT", ""))
    return f"{name}:{port}" if port else name
