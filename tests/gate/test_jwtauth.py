"""
Tests for L{qwen_twist.gate.jwtauth}: HS256, RS256 and ES256 tokens, every
refusal rule with time driven by a L{Clock}, the key files read at
start-up, and error messages that never echo the token.
"""

from __future__ import annotations

import base64
import datetime
import functools
import hashlib
import hmac
import json
from typing import Any, Dict, Optional

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID
from hypothesis import given, settings, strategies as st

from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase

from qwen_twist.config import ConfigError, JWTConfig
from qwen_twist.gate.keys import presented_key
from qwen_twist.gate.jwtauth import JwtError, JwtIdentity, JwtVerifier

START = 1_800_000_000
SECRET = b"s3cret-" + b"x" * 60


@functools.lru_cache(maxsize=None)
def rsa_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


@functools.lru_cache(maxsize=None)
def ec_key(curve: str = "P-256") -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key({"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}[curve])


def public_pem(private: Any) -> bytes:
    return private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(private: Any) -> bytes:
    return private.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def raw_token(header: Dict[str, Any], claims: Dict[str, Any], signature: bytes) -> str:
    """
    A token assembled by hand, for headers PyJWT would not produce.
    """
    return ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode()), b64(signature)]
    )


def hs256_with(secret: bytes, claims: Dict[str, Any], header: Optional[Dict[str, Any]] = None) -> str:
    """
    An HS256 token signed by hand with any bytes as the HMAC secret (PyJWT
    refuses a PEM key as an HMAC secret, which is the attack).
    """
    header = header or {"alg": "HS256", "typ": "JWT"}
    signing_input = ".".join(
        [b64(json.dumps(header).encode()), b64(json.dumps(claims).encode())]
    )
    signature = hmac.new(secret, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64(signature)


class VerifierMixin:
    """
    A verifier over key files in a temporary directory, a clock, and an
    assertion that a token is refused without leaking it.
    """

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(START)

    def file(self, content: bytes) -> str:
        path = self.mktemp()  # type: ignore[attr-defined]
        with open(path, "wb") as f:
            f.write(content)
        return path

    def verifier(self, algorithm: str = "HS256", **settings: Any) -> JwtVerifier:
        if algorithm == "HS256":
            settings.setdefault("secret_file", self.file(SECRET))
        elif algorithm == "RS256":
            settings.setdefault("public_key_file", self.file(public_pem(rsa_key())))
        else:
            settings.setdefault("public_key_file", self.file(public_pem(ec_key())))
        return JwtVerifier(JWTConfig(enabled=True, algorithm=algorithm, **settings))

    def claims(self, **overrides: Any) -> Dict[str, Any]:
        now = self.clock.seconds()
        claims = {"sub": "alice", "iat": now, "exp": now + 60}
        claims.update(overrides)
        return {k: v for k, v in claims.items() if v is not None}

    def hs256(self, **overrides: Any) -> str:
        return jwt.encode(self.claims(**overrides), SECRET, algorithm="HS256")

    def refused(self, verifier: JwtVerifier, token: str, reason: str) -> JwtError:
        error = self.assertRaises(  # type: ignore[attr-defined]
            JwtError, verifier.verify, token, self.clock.seconds()
        )
        message = str(error)
        self.assertIn(reason, message)  # type: ignore[attr-defined]
        for part in [token] + [p for p in token.split(".") if len(p) > 3]:
            self.assertNotIn(part, message)  # type: ignore[attr-defined]
        return error


class HS256Tests(VerifierMixin, SynchronousTestCase):
    """
    Tokens signed with the shared secret.
    """

    def test_valid(self) -> None:
        """
        A token with the secret's signature, C{exp} and C{iat} gives the
        user claim and all claims.
        """
        token = self.hs256(role="admin")
        identity = self.verifier().verify(token, self.clock.seconds())
        self.assertEqual(identity, JwtIdentity("alice", self.claims(role="admin")))

    def test_bad_signature(self) -> None:
        """
        A token signed with another secret, or with a changed payload, is
        refused.
        """
        verifier = self.verifier()
        other = jwt.encode(self.claims(), b"y" * 40, algorithm="HS256")
        self.refused(verifier, other, "bad token signature")
        header, _, signature = self.hs256().split(".")
        forged = ".".join([header, b64(json.dumps(self.claims(sub="root")).encode()), signature])
        self.refused(verifier, forged, "bad token signature")

    def test_expired(self) -> None:
        """
        A token is accepted until its C{exp} and refused from then on.
        """
        verifier = self.verifier()
        token = self.hs256()
        self.clock.advance(59.9)
        self.assertEqual(verifier.verify(token, self.clock.seconds()).user, "alice")
        self.clock.advance(0.1)
        self.refused(verifier, token, "token expired")

    def test_leeway(self) -> None:
        """
        C{leeway} extends C{exp} by that many seconds and no more.
        """
        verifier = self.verifier(leeway=10.0)
        token = self.hs256()
        self.clock.advance(69)
        self.assertEqual(verifier.verify(token, self.clock.seconds()).user, "alice")
        self.clock.advance(1)
        self.refused(verifier, token, "token expired")

    def test_not_yet_valid(self) -> None:
        """
        A token whose C{nbf} is in the future is refused until then.
        """
        verifier = self.verifier()
        now = self.clock.seconds()
        token = self.hs256(nbf=now + 30)
        self.refused(verifier, token, "not yet valid")
        self.clock.advance(30)
        self.assertEqual(verifier.verify(token, self.clock.seconds()).user, "alice")

    def test_issued_in_future(self) -> None:
        """
        A token whose C{iat} is in the future is refused (beyond leeway).
        """
        now = self.clock.seconds()
        token = self.hs256(iat=now + 5, exp=now + 60)
        self.refused(self.verifier(), token, "issued in the future")
        self.assertEqual(
            self.verifier(leeway=5.0).verify(token, self.clock.seconds()).user, "alice"
        )

    def test_lifetime(self) -> None:
        """
        C{exp - iat} up to C{max_lifetime} is accepted, longer refused.
        """
        now = self.clock.seconds()
        verifier = self.verifier(max_lifetime=300.0)
        self.assertEqual(
            verifier.verify(self.hs256(exp=now + 300), self.clock.seconds()).user, "alice"
        )
        self.refused(verifier, self.hs256(exp=now + 301), "max_lifetime")
        self.refused(verifier, self.hs256(exp=now + 365 * 86400), "max_lifetime")
        skewed = self.verifier(leeway=10.0)
        self.refused(skewed, self.hs256(iat=now + 5, exp=now + 3), "not after")

    def test_missing_exp(self) -> None:
        """
        A token without C{exp} is refused.
        """
        self.refused(self.verifier(), self.hs256(exp=None), "no exp claim")

    def test_missing_iat(self) -> None:
        """
        A token without C{iat} is refused (the lifetime cannot be known).
        """
        self.refused(self.verifier(), self.hs256(iat=None), "no iat claim")

    def test_time_claims_not_numbers(self) -> None:
        """
        C{exp}, C{iat} and C{nbf} must be numbers.
        """
        verifier = self.verifier()
        now = self.clock.seconds()
        for claims, name in (
            (dict(exp="tomorrow"), "exp"),
            (dict(exp=True), "exp"),
            (dict(iat=str(now)), "iat"),
            (dict(nbf=[now]), "nbf"),
        ):
            self.refused(verifier, self.hs256(**claims), "%s claim is not a number" % (name,))

    def test_issuer(self) -> None:
        """
        With C{issuer} set, C{iss} must equal it.
        """
        verifier = self.verifier(issuer="https://idp.example")
        self.assertEqual(
            verifier.verify(self.hs256(iss="https://idp.example"), self.clock.seconds()).user,
            "alice",
        )
        self.refused(verifier, self.hs256(iss="https://evil.example"), "issuer")
        self.refused(verifier, self.hs256(), "issuer")
        listed = hs256_with(SECRET, self.claims(iss=["https://idp.example"]))
        self.refused(verifier, listed, "issuer")

    def test_audience(self) -> None:
        """
        With C{audience} set, C{aud} (a string or a list) must contain it.
        """
        verifier = self.verifier(audience="qwengate")
        now = self.clock.seconds()
        self.assertEqual(verifier.verify(self.hs256(aud="qwengate"), now).user, "alice")
        self.assertEqual(verifier.verify(self.hs256(aud=["x", "qwengate"]), now).user, "alice")
        self.refused(verifier, self.hs256(aud="other"), "audience does not include")
        self.refused(verifier, self.hs256(aud=["a", "b"]), "audience does not include")
        self.refused(verifier, self.hs256(), "aud claim is missing")
        self.refused(verifier, self.hs256(aud=5), "aud claim is missing or malformed")

    def test_audience_unexpected(self) -> None:
        """
        Without C{audience} configured, a token meant for some audience is
        refused (RFC 7519 4.1.3); one without C{aud} is fine.
        """
        verifier = self.verifier()
        self.refused(verifier, self.hs256(aud="other-service"), "audience is not set")

    def test_user_claim(self) -> None:
        """
        The configured user claim must be a non-empty printable string.
        """
        verifier = self.verifier()
        for sub in (42, ["alice"], {"name": "alice"}, "", "   ", True, "a\nb", "x" * 257):
            self.refused(verifier, self.hs256(sub=sub), "token claim 'sub'")
        self.refused(verifier, self.hs256(sub=None), "token claim 'sub'")
        by_email = self.verifier(user_claim="email")
        self.assertEqual(
            by_email.verify(self.hs256(email="a@example.com"), self.clock.seconds()).user,
            "a@example.com",
        )
        self.refused(by_email, self.hs256(), "token claim 'email'")

    def test_alg_none(self) -> None:
        """
        Unsigned tokens (C{alg: none}) are refused, with an empty or a
        made-up signature, and never reach signature verification.
        """
        verifier = self.verifier()
        self.patch(jwt, "decode", lambda *a, **k: self.fail("decode called"))
        unsigned = raw_token({"alg": "none", "typ": "JWT"}, self.claims(), b"")
        self.refused(verifier, unsigned, "malformed token")
        for alg in ("none", "None", "NONE"):
            token = raw_token({"alg": alg}, self.claims(), b"sig")
            self.refused(verifier, token, "algorithm is not HS256")
        self.refused(verifier, raw_token({"typ": "JWT"}, self.claims(), b"sig"), "algorithm")

    def test_asymmetric_token_refused(self) -> None:
        """
        An RS256 or ES256 token (even a validly signed one) is refused by
        an HS256 verifier before any key is used.
        """
        verifier = self.verifier()
        rs = jwt.encode(self.claims(), rsa_key(), algorithm="RS256")
        es = jwt.encode(self.claims(), ec_key(), algorithm="ES256")
        self.patch(jwt, "decode", lambda *a, **k: self.fail("decode called"))
        self.refused(verifier, rs, "algorithm is not HS256")
        self.refused(verifier, es, "algorithm is not HS256")

    def test_other_hmac_algorithms(self) -> None:
        """
        HS384 and HS512 tokens made with the right secret are refused: only
        the configured algorithm counts.
        """
        verifier = self.verifier()
        for alg in ("HS384", "HS512"):
            token = jwt.encode(self.claims(), SECRET, algorithm=alg)
            self.refused(verifier, token, "algorithm is not HS256")

    def test_critical_header(self) -> None:
        """
        A token declaring critical header extensions is refused.
        """
        token = hs256_with(SECRET, self.claims(), {"alg": "HS256", "crit": ["exp"], "exp": 1})
        self.refused(self.verifier(), token, "critical")

    def test_garbage(self) -> None:
        """
        Strings that are not JWTs are refused with a JwtError.
        """
        verifier = self.verifier()
        header = b64(b'{"alg":"HS256"}')
        for token in (
            "",
            "qg-" + "a" * 43,
            "a.b",
            "a.b.c.d",
            "a..c",
            "!!!.???.###",
            "eyJ.eyJ.c2ln",
            b64(b"not json") + "." + b64(b"{}") + ".c2ln",
            b64(b"[1]") + "." + b64(b"{}") + ".c2ln",
            header + "." + b64(b"not json") + ".c2ln",
            header + "." + b64(b"[1, 2]") + ".c2ln",
            "a" * 9000 + ".b.c",
        ):
            self.assertRaises(JwtError, verifier.verify, token, self.clock.seconds())

    def test_json_payload_not_object(self) -> None:
        """
        A correctly signed token whose payload is not a JSON object is
        refused.
        """
        header = b64(json.dumps({"alg": "HS256"}).encode())
        payload = b64(b"[1, 2]")
        signing_input = header + "." + payload
        signature = hmac.new(SECRET, signing_input.encode(), hashlib.sha256).digest()
        self.refused(self.verifier(), signing_input + "." + b64(signature), "malformed")

    @settings(max_examples=300, deadline=None, derandomize=True, database=None)
    @given(
        st.one_of(
            st.text(max_size=200),
            st.lists(
                st.text(alphabet="ABCDEFabcdef0123456789-_=+/. ", max_size=40),
                min_size=3,
                max_size=3,
            ).map(".".join),
        )
    )
    def test_fuzz(self, token: str) -> None:
        """
        Arbitrary text is refused with a JwtError and nothing else.
        """
        verifier = self._fuzz_verifier
        with self.assertRaises(JwtError):
            verifier.verify(token, START)

    @functools.cached_property
    def _fuzz_verifier(self) -> JwtVerifier:
        return self.verifier()

    def test_secret_trailing_newline(self) -> None:
        """
        A secret file written with C{echo} (a trailing newline) verifies
        tokens signed with the secret itself.
        """
        verifier = self.verifier(secret_file=self.file(SECRET + b"\n"))
        self.assertEqual(verifier.verify(self.hs256(), self.clock.seconds()).user, "alice")


class RS256Tests(VerifierMixin, SynchronousTestCase):
    """
    Tokens signed with an RSA key, verified with its public key.
    """

    def test_valid(self) -> None:
        """
        A token signed with the private key verifies with the public key.
        """
        claims = self.claims(
            iss="https://login.example.com/realms/staff",
            aud="qwengate",
            email="alice@example.com",
            name="Alice Example",
        )
        token = jwt.encode(claims, rsa_key(), algorithm="RS256")
        verifier = self.verifier("RS256", audience="qwengate")
        self.assertEqual(verifier.verify(token, self.clock.seconds()).user, "alice")
        # A typical RS256 token is longer than 512 characters and still
        # comes through the credential headers.
        self.assertGreater(len(token), 512)
        self.assertEqual(presented_key(b"Bearer " + token.encode(), None), token)

    def test_certificate(self) -> None:
        """
        The public key may be given as a PEM certificate.
        """
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "idp")])
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(rsa_key().public_key())
            .serial_number(1)
            .not_valid_before(datetime.datetime(2020, 1, 1))
            .not_valid_after(datetime.datetime(2040, 1, 1))
            .sign(rsa_key(), hashes.SHA256())
        )
        path = self.file(certificate.public_bytes(serialization.Encoding.PEM))
        token = jwt.encode(self.claims(), rsa_key(), algorithm="RS256")
        verifier = self.verifier("RS256", public_key_file=path)
        self.assertEqual(verifier.verify(token, self.clock.seconds()).user, "alice")

    def test_other_key(self) -> None:
        """
        A token signed by another RSA key is refused.
        """
        other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        token = jwt.encode(self.claims(), other, algorithm="RS256")
        self.refused(self.verifier("RS256"), token, "bad token signature")

    def test_expired(self) -> None:
        """
        RS256 tokens expire on the injected clock too.
        """
        verifier = self.verifier("RS256")
        token = jwt.encode(self.claims(), rsa_key(), algorithm="RS256")
        self.clock.advance(60)
        self.refused(verifier, token, "token expired")

    def test_algorithm_confusion(self) -> None:
        """
        An HS256 token whose HMAC secret is the verifier's own public key
        (PEM, as published) is refused before the key is used.
        """
        verifier = self.verifier("RS256")
        token = hs256_with(public_pem(rsa_key()), self.claims())
        self.patch(jwt, "decode", lambda *a, **k: self.fail("decode called"))
        self.refused(verifier, token, "algorithm is not RS256")

    def test_other_asymmetric_algorithms(self) -> None:
        """
        PS256 and RS512 tokens from the same key are refused.
        """
        for alg in ("RS512", "PS256"):
            token = jwt.encode(self.claims(), rsa_key(), algorithm=alg)
            self.refused(self.verifier("RS256"), token, "algorithm is not RS256")


class ES256Tests(VerifierMixin, SynchronousTestCase):
    """
    Tokens signed with a P-256 key.
    """

    def test_valid(self) -> None:
        """
        A token signed with the private key verifies with the public key.
        """
        token = jwt.encode(self.claims(), ec_key(), algorithm="ES256")
        self.assertEqual(self.verifier("ES256").verify(token, self.clock.seconds()).user, "alice")

    def test_bad_signature(self) -> None:
        """
        A token signed by another P-256 key, or with a cut signature, is
        refused.
        """
        other = ec.generate_private_key(ec.SECP256R1())
        verifier = self.verifier("ES256")
        self.refused(verifier, jwt.encode(self.claims(), other, algorithm="ES256"), "signature")
        token = jwt.encode(self.claims(), ec_key(), algorithm="ES256")
        head, _, signature = token.rpartition(".")
        flipped = ("B" if signature[0] == "A" else "A") + signature[1:]
        self.refused(verifier, head + "." + flipped, "signature")

    def test_algorithm_confusion(self) -> None:
        """
        An HS256 token signed with the EC public key as HMAC secret, and an
        RS256 token, are refused.
        """
        verifier = self.verifier("ES256")
        confused = hs256_with(public_pem(ec_key()), self.claims())
        rs = jwt.encode(self.claims(), rsa_key(), algorithm="RS256")
        self.patch(jwt, "decode", lambda *a, **k: self.fail("decode called"))
        self.refused(verifier, confused, "algorithm is not ES256")
        self.refused(verifier, rs, "algorithm is not ES256")

    def test_not_yet_valid(self) -> None:
        """
        C{nbf} is honoured for ES256 tokens.
        """
        now = self.clock.seconds()
        token = jwt.encode(self.claims(nbf=now + 10), ec_key(), algorithm="ES256")
        self.refused(self.verifier("ES256"), token, "not yet valid")


class LooksLikeJwtTests(SynchronousTestCase):
    """
    L{JwtVerifier.looks_like_jwt} tells JWTs from API keys.
    """

    def test_shapes(self) -> None:
        """
        Three non-empty base64url segments are a JWT; keys and other
        shapes are not.
        """
        self.assertTrue(JwtVerifier.looks_like_jwt("eyJh.eyJz.c2ln"))
        self.assertTrue(JwtVerifier.looks_like_jwt("a-_b.c.d"))
        for value in (
            "qg-" + "a" * 43, "", "a.b", "a.b.c.d", "a..c", ".b.c", "a.b.",
            "a.b.c=", "a+b.c.d", "a/b.c.d", "a b.c.d", "é.b.c",
        ):
            self.assertFalse(JwtVerifier.looks_like_jwt(value), value)


class KeyFileTests(VerifierMixin, SynchronousTestCase):
    """
    Key files are read once at start-up; problems name the config key.
    """

    def config_error(self, algorithm: str, **settings: Any) -> ConfigError:
        return self.assertRaises(
            ConfigError,
            JwtVerifier,
            JWTConfig(enabled=True, algorithm=algorithm, **settings),
        )

    def test_read_once(self) -> None:
        """
        The key is read when the verifier is built: changing the file later
        does not change what verifies.
        """
        path = self.file(SECRET)
        verifier = self.verifier(secret_file=path)
        with open(path, "wb") as f:
            f.write(b"z" * 40)
        self.assertEqual(verifier.verify(self.hs256(), self.clock.seconds()).user, "alice")

    def test_secret_unreadable(self) -> None:
        """
        A missing secret file names C{auth.jwt.secret_file}.
        """
        error = self.config_error("HS256", secret_file=self.mktemp())
        self.assertEqual(error.path, "auth.jwt.secret_file")
        self.assertIn("cannot read", error.problem)

    def test_secret_too_short(self) -> None:
        """
        A secret under 32 bytes (or empty) is refused.
        """
        for secret in (b"", b"\n", b"short", b"x" * 31 + b"\n"):
            error = self.config_error("HS256", secret_file=self.file(secret))
            self.assertEqual(error.path, "auth.jwt.secret_file")
            self.assertIn("at least 32", error.problem)
        self.verifier(secret_file=self.file(b"x" * 32))

    def test_secret_is_pem(self) -> None:
        """
        A PEM key in the secret file (the algorithm-confusion setup) is
        refused.
        """
        error = self.config_error("HS256", secret_file=self.file(public_pem(rsa_key())))
        self.assertEqual(error.path, "auth.jwt.secret_file")
        self.assertIn("PEM", error.problem)

    def test_public_key_errors(self) -> None:
        """
        Missing, garbage, private, wrong-type, wrong-curve and short keys
        are refused, naming C{auth.jwt.public_key_file}.
        """
        cases = [
            ("RS256", None, "cannot read"),
            ("RS256", b"not a key", "no valid PEM"),
            ("RS256", b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "no valid PEM"),
            ("RS256", private_pem(rsa_key()), "private key"),
            ("RS256", public_pem(ec_key()), "not an RSA key"),
            ("RS256", public_pem(rsa_key(1024)), "at least 2048"),
            ("ES256", public_pem(rsa_key()), "not a P-256"),
            ("ES256", public_pem(ec_key("P-384")), "not a P-256"),
            ("ES256", private_pem(ec_key()), "private key"),
        ]
        for algorithm, content, problem in cases:
            path = self.mktemp() if content is None else self.file(content)
            error = self.config_error(algorithm, public_key_file=path)
            self.assertEqual(error.path, "auth.jwt.public_key_file", problem)
            self.assertIn(problem, error.problem)

    def test_no_key_configured(self) -> None:
        """
        A verifier without its key file set names the missing key.
        """
        self.assertEqual(self.config_error("HS256").path, "auth.jwt.secret_file")
        self.assertEqual(self.config_error("ES256").path, "auth.jwt.public_key_file")
