# -*- test-case-name: tests.gate.test_jwtauth -*-
"""
JWT bearer tokens: one configured algorithm, one key, claims checked
against an injected clock.

Why the claims are checked here and not by PyJWT: PyJWT compares C{exp},
C{nbf} and C{iat} with the wall clock and offers no clock to inject, so
tests could only exercise expiry by sleeping. PyJWT verifies the signature
(with C{algorithms=[configured]}), and L{JwtVerifier.verify} checks every
claim against the C{now} it is given, the same way on PyJWT 2.6 (Debian 12)
and 2.15.

The rules, each a refusal with a L{JwtError}:
  - the header's C{alg} must be the configured one (C{auth.jwt.algorithm}),
    checked before the key is touched: C{alg: none}, and the classic
    confusion of an HS256 token "signed" with an RSA/EC public key as the
    HMAC secret, never reach a verifier; an RS256 token is equally refused
    by an HS256 verifier;
  - the signature must verify with the configured secret or public key;
  - C{exp} and C{iat} are required numbers; C{exp} must be in the future,
    C{iat} not in the future, C{nbf} (optional) not in the future, and
    C{exp - iat} at most C{max_lifetime}; C{leeway} absorbs clock skew;
  - C{iss} must equal C{auth.jwt.issuer} when that is set; C{aud} (a
    string or a list) must contain C{auth.jwt.audience} when that is set,
    and a token that names an audience is refused when none is configured
    (RFC 7519 section 4.1.3);
  - the C{user_claim} (default C{sub}) must be a non-empty string of at
    most 256 printable characters: it becomes the identity in logs.

Error messages are safe to log: they never contain the token or anything
copied from it.

Key files are read once, at start-up: an HS256 secret (trailing newlines
are ignored; at least 32 bytes, RFC 7518 section 3.2; a PEM key there is
refused), or a PEM public key or certificate for RS256 (RSA, at least 2048
bits) or ES256 (P-256). A private key is refused: the gateway only
verifies.
"""

from __future__ import annotations

import base64
import json
import math
from dataclasses import dataclass
from typing import Any, Dict

import jwt
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from qwen_twist.config import ConfigError, JWTConfig

#: Longest token looked at; larger ones are refused unparsed.
MAX_TOKEN_CHARS = 8192

MIN_SECRET_BYTES = 32

MIN_RSA_BITS = 2048

_MAX_USER_CHARS = 256

_B64URL = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")

# Claims are checked here against the injected clock; PyJWT only verifies
# the signature. verify_sub/verify_jti exist from PyJWT 2.10 and are
# ignored by 2.6.
_DECODE_OPTIONS = {
    "verify_signature": True,
    "verify_exp": False,
    "verify_nbf": False,
    "verify_iat": False,
    "verify_aud": False,
    "verify_iss": False,
    "verify_sub": False,
    "verify_jti": False,
    "require": [],
}


class JwtError(Exception):
    """
    A refused token. The message is safe to log: it never contains the
    token or text taken from it.
    """


@dataclass(frozen=True)
class JwtIdentity:
    """
    A verified token.

    @ivar user: the value of the configured user claim.
    @ivar claims: every claim of the token.
    """

    user: str
    claims: Dict[str, Any]


class JwtVerifier:
    """
    Verifies tokens against one C{auth.jwt} configuration.
    """

    def __init__(self, config: JWTConfig) -> None:
        """
        Read the secret or public key file named by C{config}.

        @raise ConfigError: naming C{auth.jwt.secret_file} or
            C{auth.jwt.public_key_file} when it is unset, unreadable or
            does not hold a usable key.
        """
        self._config = config
        self._algorithm = config.algorithm
        self._key: Any
        if config.algorithm == "HS256":
            self._key = _read_secret(config.secret_file)
        else:
            self._key = _read_public_key(config.public_key_file, config.algorithm)

    @staticmethod
    def looks_like_jwt(value: str) -> bool:
        """
        Whether C{value} has the shape of a signed JWT: three non-empty
        base64url segments separated by dots.
        """
        parts = value.split(".")
        if len(parts) != 3:
            return False
        for part in parts:
            if not part or not _B64URL.issuperset(part):
                return False
        return True

    def verify(self, token: str, now: float) -> JwtIdentity:
        """
        Check C{token} at Unix time C{now}.

        @return: the identity the token carries.
        @raise JwtError: the token is refused; the message says why.
        """
        if len(token) > MAX_TOKEN_CHARS or not self.looks_like_jwt(token):
            raise JwtError("malformed token")
        header = _header(token[: token.index(".")])
        if header.get("alg") != self._algorithm:
            raise JwtError("token algorithm is not %s" % (self._algorithm,))
        if "crit" in header:
            raise JwtError("token has critical header extensions")
        try:
            claims = jwt.decode(
                token, self._key, algorithms=[self._algorithm], options=_DECODE_OPTIONS
            )
        except jwt.InvalidSignatureError:
            raise JwtError("bad token signature")
        except (jwt.PyJWTError, ValueError, TypeError):
            raise JwtError("malformed token")
        if not isinstance(claims, dict):
            raise JwtError("malformed token")
        return JwtIdentity(self._check_claims(claims, now), claims)

    def _check_claims(self, claims: Dict[str, Any], now: float) -> str:
        """
        The time, issuer, audience and user claims; returns the user.
        """
        config = self._config
        leeway = config.leeway
        exp = _time_claim(claims, "exp")
        iat = _time_claim(claims, "iat")
        if exp is None:
            raise JwtError("token has no exp claim")
        if iat is None:
            raise JwtError("token has no iat claim")
        if exp <= now - leeway:
            raise JwtError("token expired")
        if iat > now + leeway:
            raise JwtError("token issued in the future (iat)")
        nbf = _time_claim(claims, "nbf")
        if nbf is not None and nbf > now + leeway:
            raise JwtError("token not yet valid (nbf)")
        if exp <= iat:
            raise JwtError("token exp is not after its iat")
        if exp - iat > config.max_lifetime:
            raise JwtError(
                "token lifetime (exp - iat) exceeds auth.jwt.max_lifetime (%g s)"
                % (config.max_lifetime,)
            )
        if config.issuer is not None and claims.get("iss") != config.issuer:
            raise JwtError("token issuer is not the configured auth.jwt.issuer")
        if "aud" in claims or config.audience is not None:
            audience = claims.get("aud")
            if isinstance(audience, str):
                audience = [audience]
            if not isinstance(audience, list) or not all(
                isinstance(a, str) for a in audience
            ):
                raise JwtError("token aud claim is missing or malformed")
            if config.audience is None:
                raise JwtError("token names an audience but auth.jwt.audience is not set")
            if config.audience not in audience:
                raise JwtError("token audience does not include auth.jwt.audience")
        user = claims.get(config.user_claim)
        if (
            not isinstance(user, str)
            or not user.strip()
            or len(user) > _MAX_USER_CHARS
            or not user.isprintable()
        ):
            raise JwtError(
                "token claim %r is missing or not a user name "
                "(1 to %d printable characters)" % (config.user_claim, _MAX_USER_CHARS)
            )
        return user


def _header(segment: str) -> Dict[str, Any]:
    """
    The JOSE header, parsed here rather than by PyJWT so that the
    algorithm check comes first and refusals read the same on every PyJWT
    version.
    """
    try:
        header = json.loads(base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4)))
    except (ValueError, RecursionError):
        raise JwtError("malformed token header")
    if not isinstance(header, dict):
        raise JwtError("malformed token header")
    return header


def _time_claim(claims: Dict[str, Any], name: str) -> Any:
    """
    The NumericDate claim C{name}, C{None} when absent.

    @raise JwtError: present but not a finite number.
    """
    value = claims.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise JwtError("token %s claim is not a number" % (name,))
    return value


def _read(path: Any, key: str) -> bytes:
    if path is None:
        raise ConfigError(key, "is required for this algorithm")
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(key, "cannot read %s: %s" % (path, e.strerror or e))


def _read_secret(path: Any) -> bytes:
    """
    The HS256 shared secret: the file's bytes without trailing newlines.
    """
    key = "auth.jwt.secret_file"
    secret = _read(path, key).rstrip(b"\r\n")
    if b"-----BEGIN" in secret or secret.startswith((b"ssh-", b"ecdsa-")):
        raise ConfigError(
            key, "%s holds a PEM or SSH key; HS256 needs a shared secret" % (path,)
        )
    if len(secret) < MIN_SECRET_BYTES:
        raise ConfigError(
            key,
            "%s holds %d bytes; an HS256 secret needs at least %d (RFC 7518 3.2)"
            % (path, len(secret), MIN_SECRET_BYTES),
        )
    return secret


def _read_public_key(path: Any, algorithm: str) -> Any:
    """
    The RS256 or ES256 public key from a PEM public key or certificate.
    """
    key = "auth.jwt.public_key_file"
    data = _read(path, key)
    if b"PRIVATE KEY-----" in data:
        raise ConfigError(
            key,
            "%s holds a private key; give the public key only (and keep the "
            "private key off this host)" % (path,),
        )
    try:
        if b"-----BEGIN CERTIFICATE-----" in data:
            public = x509.load_pem_x509_certificate(data).public_key()
        else:
            public = serialization.load_pem_public_key(data)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ConfigError(key, "%s holds no valid PEM public key or certificate" % (path,))
    if algorithm == "RS256":
        if not isinstance(public, rsa.RSAPublicKey):
            raise ConfigError(key, "%s is not an RSA key, as RS256 needs" % (path,))
        if public.key_size < MIN_RSA_BITS:
            raise ConfigError(
                key,
                "%s is a %d-bit RSA key; RS256 needs at least %d bits"
                % (path, public.key_size, MIN_RSA_BITS),
            )
    else:
        if not isinstance(public, ec.EllipticCurvePublicKey) or not isinstance(
            public.curve, ec.SECP256R1
        ):
            raise ConfigError(key, "%s is not a P-256 EC key, as ES256 needs" % (path,))
    return public
