"""
Tests for L{qwen_twist.gate.tls}: the server's TLS profile checked with real
handshakes on loopback, the development certificate, and start-up errors.

The handshake tests listen with the production stack
(C{TLSMemoryBIOFactory(options, False, factory)} on a plain TCP endpoint) and
connect with Python's own C{ssl} module from a thread, a TLS implementation
independent of the one under test. Every refusal test also runs the same
client against a deliberately permissive server (a raw pyOpenSSL context)
and sees it succeed, so a refusal proves the server's policy and not a
client that cannot speak the protocol at all.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import os
import socket
import ssl as stdlib_ssl
import stat
import warnings
from typing import Any, List, NamedTuple, Optional, Tuple

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from OpenSSL import SSL
from zope.interface import implementer

from twisted.internet import defer, threads
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.internet.protocol import Factory, Protocol
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import SynchronousTestCase, TestCase

from qwen_twist.gate import tls
from qwen_twist.config import ConfigError, TLSConfig

GREETING = b"hello\n"

# Suites a client offers to prove the server's cipher policy. RSA key
# exchange, including its AEAD variants (no forward secrecy):
RSA_KX = "AES128-SHA:AES256-SHA:AES128-SHA256:AES128-GCM-SHA256:AES256-GCM-SHA384"
# ECDHE but CBC (not AEAD):
ECDHE_CBC = (
    "ECDHE-ECDSA-AES128-SHA:ECDHE-ECDSA-AES256-SHA:"
    "ECDHE-ECDSA-AES128-SHA256:ECDHE-ECDSA-AES256-SHA384"
)
AEAD_TLS12 = ("-GCM-SHA256", "-GCM-SHA384", "-CHACHA20-POLY1305")


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


# Certificates -------------------------------------------------------------


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.timezone.utc)


def make_certificate(
    subject: str,
    key: Any,
    issuer: Optional[Tuple[x509.Certificate, Any]] = None,
    ca: bool = False,
) -> x509.Certificate:
    """
    A certificate for C{subject}, self-signed unless C{issuer} (its
    certificate and key) is given; a CA when C{ca}, else a localhost server
    certificate.
    """
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)])
    issuer_name, signing_key = (issuer[0].subject, issuer[1]) if issuer else (name, key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(_now() - datetime.timedelta(days=1))
        .not_valid_after(_now() + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, crl_sign=True,
                content_commitment=False, key_encipherment=False, data_encipherment=False,
                key_agreement=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    else:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost")]), critical=False
        ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
    return builder.sign(signing_key, hashes.SHA256())


def utc(cert: x509.Certificate, name: str) -> datetime.datetime:
    """
    A validity bound as an aware datetime (C{*_utc} properties exist from
    cryptography 42; Debian 12 has 38).
    """
    value = getattr(cert, name + "_utc", None)
    if value is None:
        value = getattr(cert, name).replace(tzinfo=datetime.timezone.utc)
    return value


def ec_key() -> Any:
    return ec.generate_private_key(ec.SECP256R1())


def rsa_key() -> Any:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def cert_pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


def key_pem(key: Any, password: Optional[bytes] = None, traditional: bool = False) -> bytes:
    encryption: Any = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    fmt = (
        serialization.PrivateFormat.TraditionalOpenSSL
        if traditional
        else serialization.PrivateFormat.PKCS8
    )
    return key.private_bytes(serialization.Encoding.PEM, fmt, encryption)


def write(directory: str, name: str, data: bytes) -> str:
    path = os.path.join(directory, name)
    with open(path, "wb") as f:
        f.write(data)
    return path


# Servers and clients -------------------------------------------------------


class _Greeter(Protocol):
    """
    Says hello, then waits for the client to close.
    """

    def __init__(self) -> None:
        self.lost: defer.Deferred = defer.Deferred()

    def connectionMade(self) -> None:
        self.transport.write(GREETING)

    def connectionLost(self, reason: Any = None) -> None:
        self.lost.callback(None)


class _GreeterFactory(Factory):
    protocol = _Greeter

    def __init__(self) -> None:
        self.connections: List[_Greeter] = []

    def buildProtocol(self, addr: Any) -> Any:
        p = Factory.buildProtocol(self, addr)
        self.connections.append(p)
        return p


@implementer(IOpenSSLServerConnectionCreator)
class _PermissiveContextFactory:
    """
    A control server: a raw pyOpenSSL context that allows TLS 1.1 and
    whatever cipher string the test gives (at OpenSSL security level 0,
    which TLS 1.1's MD5+SHA1 signatures need on OpenSSL 3).
    """

    def __init__(self, cert_path: str, key_path: str, ciphers: bytes = b"DEFAULT") -> None:
        self._context = SSL.Context(SSL.TLS_METHOD)
        self._context.set_min_proto_version(SSL.TLS1_1_VERSION)
        self._context.set_cipher_list(ciphers + b":@SECLEVEL=0")
        self._context.use_certificate_chain_file(cert_path)
        self._context.use_privatekey_file(key_path)

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self._context, None)


class Handshake(NamedTuple):
    version: str
    cipher: str
    greeting: bytes


def _connect(port: int, context: stdlib_ssl.SSLContext) -> Handshake:
    """
    Blocking: handshake with C{127.0.0.1:port} as C{localhost}, read the
    greeting, close. Runs in a thread.
    """
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as conn:
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(64)
                if not chunk:
                    break
                data += chunk
            version = conn.version()
            cipher = conn.cipher()
            return Handshake(version or "", cipher[0] if cipher else "", data)


def client_context(
    minimum: Optional[stdlib_ssl.TLSVersion] = None,
    maximum: Optional[stdlib_ssl.TLSVersion] = None,
    ciphers: Optional[str] = None,
    cafile: Optional[str] = None,
) -> stdlib_ssl.SSLContext:
    """
    A client context; without C{cafile} it does not verify (so a refusal
    can only come from version or cipher negotiation).
    """
    context = stdlib_ssl.SSLContext(stdlib_ssl.PROTOCOL_TLS_CLIENT)
    if cafile is None:
        context.check_hostname = False
        context.verify_mode = stdlib_ssl.CERT_NONE
    else:
        context.load_verify_locations(cafile=cafile)
    with warnings.catch_warnings():
        # TLSv1_1 is deprecated in the ssl module; using it is the point.
        warnings.simplefilter("ignore", DeprecationWarning)
        if minimum is not None:
            context.minimum_version = minimum
        if maximum is not None:
            context.maximum_version = maximum
    if ciphers is not None:
        context.set_ciphers(ciphers)
    return context


def tls11_client() -> stdlib_ssl.SSLContext:
    """
    A client that offers TLS 1.1 and nothing else, with every suite
    OpenSSL still has for it.
    """
    return client_context(
        stdlib_ssl.TLSVersion.TLSv1_1, stdlib_ssl.TLSVersion.TLSv1_1, "DEFAULT:@SECLEVEL=0"
    )


def tls12_client(ciphers: Optional[str] = None, cafile: Optional[str] = None) -> stdlib_ssl.SSLContext:
    return client_context(
        stdlib_ssl.TLSVersion.TLSv1_2, stdlib_ssl.TLSVersion.TLSv1_2, ciphers, cafile
    )


def tls13_client(cafile: Optional[str] = None) -> stdlib_ssl.SSLContext:
    return client_context(
        stdlib_ssl.TLSVersion.TLSv1_3, stdlib_ssl.TLSVersion.TLSv1_3, cafile=cafile
    )


class HandshakeTests(TestCase):
    """
    What a client can and cannot negotiate with the server's options.
    """

    def setUp(self) -> None:
        self.state_dir = os.path.abspath(self.mktemp())
        self.cert_path, self.key_path, _ = tls.ensure_self_signed(self.state_dir)

    def options(self, **settings: Any) -> Any:
        """
        Server options from a tls section (self-signed unless files given).
        """
        settings.setdefault("self_signed", True)
        return tls.certificate_options(TLSConfig(**settings), self.state_dir)

    @defer.inlineCallbacks
    def listen(self, context_factory: Any) -> Any:
        """
        Serve C{context_factory} on an ephemeral loopback port, the way the
        gateway does; stopped (and its connections awaited) at cleanup.

        @return: a Deferred firing with the port number.
        """
        reactor = _reactor()
        factory = _GreeterFactory()
        endpoint = TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1")
        port = yield endpoint.listen(TLSMemoryBIOFactory(context_factory, False, factory))

        def close() -> defer.Deferred:
            d = defer.maybeDeferred(port.stopListening)
            d.addCallback(
                lambda _: defer.gatherResults([c.lost for c in factory.connections])
            )
            d.addTimeout(10, reactor)
            return d

        self.addCleanup(close)
        return port.getHost().port

    @defer.inlineCallbacks
    def handshake(self, context_factory: Any, client: stdlib_ssl.SSLContext) -> Any:
        """
        Connect C{client} to a server with C{context_factory}.

        @return: a Deferred firing with a L{Handshake}.
        """
        port = yield self.listen(context_factory)
        result = yield threads.deferToThread(_connect, port, client)
        return result

    @defer.inlineCallbacks
    def assertRefused(self, context_factory: Any, client: stdlib_ssl.SSLContext, *alerts: str) -> Any:
        """
        The server ends the handshake with one of the TLS C{alerts} (so the
        refusal is the server's decision, not a local client error).
        """
        port = yield self.listen(context_factory)
        error = yield self.assertFailure(
            threads.deferToThread(_connect, port, client), stdlib_ssl.SSLError
        )
        self.assertIn(error.reason, alerts, str(error))
        return error

    @defer.inlineCallbacks
    def test_tls12(self):
        """
        A TLS 1.2 client that verifies the development certificate (as
        localhost) negotiates TLS 1.2 with an ECDHE key exchange and an AEAD
        cipher, and talks to the application.
        """
        result = yield self.handshake(self.options(), tls12_client(cafile=self.cert_path))
        self.assertEqual(result.version, "TLSv1.2")
        self.assertTrue(result.cipher.startswith("ECDHE-ECDSA-"), result.cipher)
        self.assertTrue(result.cipher.endswith(AEAD_TLS12), result.cipher)
        self.assertEqual(result.greeting, GREETING)

    @defer.inlineCallbacks
    def test_tls13(self):
        """
        A TLS 1.3 client negotiates TLS 1.3.
        """
        result = yield self.handshake(self.options(), tls13_client(cafile=self.cert_path))
        self.assertEqual(result.version, "TLSv1.3")
        self.assertTrue(result.cipher.startswith("TLS_"), result.cipher)
        self.assertEqual(result.greeting, GREETING)

    @defer.inlineCallbacks
    def test_default_client_gets_tls13(self):
        """
        A client allowing everything gets the highest version.
        """
        result = yield self.handshake(self.options(), client_context(cafile=self.cert_path))
        self.assertEqual(result.version, "TLSv1.3")

    @defer.inlineCallbacks
    def test_tls11_refused(self):
        """
        A client that only speaks TLS 1.1 is refused with a protocol_version
        alert, although it completes a TLS 1.1 handshake with a server that
        allows 1.1 (the control).
        """
        control = yield self.handshake(
            _PermissiveContextFactory(self.cert_path, self.key_path), tls11_client()
        )
        self.assertEqual(control.version, "TLSv1.1")
        yield self.assertRefused(
            self.options(), tls11_client(), "TLSV1_ALERT_PROTOCOL_VERSION"
        )

    @defer.inlineCallbacks
    def test_min_version_13_refuses_12(self):
        """
        With C{min_version: "1.3"} a TLS 1.2 client is refused (the same
        client succeeds with the default floor), and a TLS 1.3 client works.
        """
        control = yield self.handshake(self.options(), tls12_client())
        self.assertEqual(control.version, "TLSv1.2")
        yield self.assertRefused(
            self.options(min_version="1.3"), tls12_client(), "TLSV1_ALERT_PROTOCOL_VERSION"
        )
        result = yield self.handshake(self.options(min_version="1.3"), tls13_client())
        self.assertEqual(result.version, "TLSv1.3")

    @defer.inlineCallbacks
    def test_rsa_key_exchange_refused(self):
        """
        With an RSA certificate, a client offering only RSA key exchange
        suites (C{AES128-SHA} and friends, CBC and GCM) is refused; the
        permissive control server accepts the same client.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        key = rsa_key()
        cert_path = write(directory, "cert.pem", cert_pem(make_certificate("localhost", key)))
        key_path = write(directory, "key.pem", key_pem(key))
        control = yield self.handshake(
            _PermissiveContextFactory(cert_path, key_path, RSA_KX.encode("ascii")),
            tls12_client(RSA_KX),
        )
        self.assertIn(control.cipher, RSA_KX.split(":"))
        options = self.options(self_signed=False, certificate=cert_path, private_key=key_path)
        yield self.assertRefused(options, tls12_client(RSA_KX), "SSLV3_ALERT_HANDSHAKE_FAILURE")
        result = yield self.handshake(options, tls12_client())
        self.assertTrue(result.cipher.startswith("ECDHE-RSA-"), result.cipher)
        self.assertTrue(result.cipher.endswith(AEAD_TLS12), result.cipher)

    @defer.inlineCallbacks
    def test_ecdhe_cbc_refused(self):
        """
        A client offering only ECDHE suites with CBC ciphers is refused: the
        TLS 1.2 suites are AEAD only. The permissive control accepts it.
        """
        control = yield self.handshake(
            _PermissiveContextFactory(self.cert_path, self.key_path, ECDHE_CBC.encode("ascii")),
            tls12_client(ECDHE_CBC),
        )
        self.assertIn(control.cipher, ECDHE_CBC.split(":"))
        yield self.assertRefused(
            self.options(), tls12_client(ECDHE_CBC), "SSLV3_ALERT_HANDSHAKE_FAILURE"
        )

    @defer.inlineCallbacks
    def test_configured_ciphers(self):
        """
        C{tls.ciphers} is what TLS 1.2 negotiates from.
        """
        result = yield self.handshake(self.options(ciphers="ECDHE+CHACHA20"), tls12_client())
        self.assertEqual(result.cipher, "ECDHE-ECDSA-CHACHA20-POLY1305")
        result = yield self.handshake(self.options(ciphers="ECDHE+AES128+AESGCM"), tls12_client())
        self.assertEqual(result.cipher, "ECDHE-ECDSA-AES128-GCM-SHA256")

    @defer.inlineCallbacks
    def test_intermediate_chain_served(self):
        """
        A certificate file holding the leaf and its intermediate serves
        both: a client that trusts only the root CA verifies the server.
        With the leaf alone in the file the same client fails (the control).
        """
        directory = self.mktemp()
        os.mkdir(directory)
        root_key, intermediate_key, leaf_key = ec_key(), ec_key(), ec_key()
        root = make_certificate("qwengate test root", root_key, ca=True)
        intermediate = make_certificate(
            "qwengate test intermediate", intermediate_key, (root, root_key), ca=True
        )
        leaf = make_certificate("localhost", leaf_key, (intermediate, intermediate_key))
        cafile = write(directory, "root.pem", cert_pem(root))
        fullchain = write(directory, "fullchain.pem", cert_pem(leaf, intermediate))
        leaf_only = write(directory, "leaf.pem", cert_pem(leaf))
        key_path = write(directory, "key.pem", key_pem(leaf_key))

        self.assertEqual(len(tls.load_chain(fullchain)), 2)
        options = self.options(self_signed=False, certificate=fullchain, private_key=key_path)
        result = yield self.handshake(options, client_context(cafile=cafile))
        self.assertEqual(result.greeting, GREETING)

        options = self.options(self_signed=False, certificate=leaf_only, private_key=key_path)
        port = yield self.listen(options)
        error = yield self.assertFailure(
            threads.deferToThread(_connect, port, client_context(cafile=cafile)),
            stdlib_ssl.SSLCertVerificationError,
        )
        self.assertIn("unable to get local issuer certificate", str(error))


class SelfSignedTests(SynchronousTestCase):
    """
    L{tls.ensure_self_signed}: the development certificate.
    """

    def setUp(self) -> None:
        self.state_dir = os.path.abspath(self.mktemp())

    def load(self, path: str) -> x509.Certificate:
        with open(path, "rb") as f:
            return x509.load_pem_x509_certificate(f.read())

    def test_created(self):
        """
        The certificate and key are created in C{state_dir/tls}, for
        localhost, 127.0.0.1 and ::1, and the key matches.
        """
        cert_path, key_path, created = tls.ensure_self_signed(self.state_dir)
        self.assertTrue(created)
        self.assertEqual(cert_path, os.path.join(self.state_dir, "tls", "cert.pem"))
        self.assertEqual(key_path, os.path.join(self.state_dir, "tls", "key.pem"))
        cert = self.load(cert_path)
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(names.get_values_for_type(x509.DNSName), ["localhost"])
        self.assertEqual(
            names.get_values_for_type(x509.IPAddress),
            [ipaddress.ip_address("127.0.0.1"), ipaddress.ip_address("::1")],
        )
        self.assertEqual(cert.subject, cert.issuer)
        with open(key_path, "rb") as f:
            key = serialization.load_pem_private_key(f.read(), password=None)
        spki = serialization.PublicFormat.SubjectPublicKeyInfo
        self.assertEqual(
            key.public_key().public_bytes(serialization.Encoding.DER, spki),
            cert.public_key().public_bytes(serialization.Encoding.DER, spki),
        )

    def test_key_is_private(self):
        """
        The key file is mode 0600 and its directory 0700.
        """
        _, key_path, _ = tls.ensure_self_signed(self.state_dir)
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        self.assertEqual(stat.S_IMODE(os.stat(os.path.dirname(key_path)).st_mode) & 0o077, 0)

    def test_stale_key_made_private(self):
        """
        A world-readable key file left without its certificate is replaced
        by a new key with mode 0600.
        """
        directory = os.path.join(self.state_dir, "tls")
        os.makedirs(directory)
        stale = write(directory, "key.pem", b"old")
        os.chmod(stale, 0o644)
        _, key_path, created = tls.ensure_self_signed(self.state_dir)
        self.assertTrue(created)
        self.assertEqual(stat.S_IMODE(os.stat(key_path).st_mode), 0o600)
        tls.load_key(key_path)

    def test_reused(self):
        """
        A second call finds the files and changes nothing.
        """
        cert_path, key_path, _ = tls.ensure_self_signed(self.state_dir)
        before = [open(p, "rb").read() for p in (cert_path, key_path)]
        again = tls.ensure_self_signed(self.state_dir)
        self.assertEqual(again, (cert_path, key_path, False))
        self.assertEqual([open(p, "rb").read() for p in (cert_path, key_path)], before)

    def test_validity(self):
        """
        The certificate is valid from just before C{now} for about two
        years (825 days, the longest browsers accept).
        """
        now = datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.timezone.utc)
        cert_path, _, _ = tls.ensure_self_signed(self.state_dir, now=now)
        cert = self.load(cert_path)
        self.assertEqual(utc(cert, "not_valid_before"), now - datetime.timedelta(minutes=5))
        self.assertEqual(utc(cert, "not_valid_after"), now + datetime.timedelta(days=825))

    def test_fingerprint_logged(self):
        """
        Building options for a self-signed config reports the certificate's
        path and SHA-256 fingerprint through the log callback.
        """
        calls: list = []
        tls.certificate_options(
            TLSConfig(self_signed=True),
            self.state_dir,
            lambda fmt, **fields: calls.append((fmt, fields)),
        )
        cert_path = os.path.join(self.state_dir, "tls", "cert.pem")
        der = self.load(cert_path).public_bytes(serialization.Encoding.DER)
        digest = hashlib.sha256(der).hexdigest().upper()
        expected = ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))
        self.assertEqual(len(calls), 1)
        fmt, fields = calls[0]
        self.assertEqual(fields, {"path": cert_path, "fingerprint": expected})
        self.assertIn("{fingerprint}", fmt)
        self.assertIn("{path}", fmt)

    def test_files_win_over_self_signed(self):
        """
        With C{self_signed} and both files set, the files are used and no
        certificate is generated.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        key = ec_key()
        cert = make_certificate("localhost", key)
        cert_path = write(directory, "c.pem", cert_pem(cert))
        key_path = write(directory, "k.pem", key_pem(key))
        calls: list = []
        tls.certificate_options(
            TLSConfig(self_signed=True, certificate=cert_path, private_key=key_path),
            self.state_dir,
            lambda fmt, **fields: calls.append(fields),
        )
        self.assertFalse(os.path.exists(self.state_dir))

    def test_no_log_for_real_certificates(self):
        """
        Real certificate files are not announced as a development
        certificate.
        """
        directory = self.mktemp()
        os.mkdir(directory)
        key = ec_key()
        cert_path = write(directory, "c.pem", cert_pem(make_certificate("localhost", key)))
        key_path = write(directory, "k.pem", key_pem(key))
        calls: list = []
        tls.certificate_options(
            TLSConfig(certificate=cert_path, private_key=key_path),
            self.state_dir,
            lambda fmt, **fields: calls.append(fields),
        )
        self.assertEqual(calls, [])

    def test_unwritable_state_dir(self):
        """
        A state directory that cannot hold the certificate is a config
        error naming C{state_dir}, not a traceback.
        """
        blocker = os.path.abspath(self.mktemp())
        with open(blocker, "w") as f:
            f.write("a file, not a directory")
        error = self.assertRaises(ConfigError, tls.ensure_self_signed, blocker)
        self.assertEqual(error.path, "state_dir")
        # The certificate's path taken by a directory.
        os.makedirs(os.path.join(self.state_dir, "tls", "cert.pem"))
        error = self.assertRaises(ConfigError, tls.ensure_self_signed, self.state_dir)
        self.assertEqual(error.path, "state_dir")
        self.assertIn("cert.pem", error.problem)


class CertificateErrorTests(SynchronousTestCase):
    """
    Start-up errors of L{tls.certificate_options}, each naming the key to
    fix.
    """

    def setUp(self) -> None:
        self.directory = os.path.abspath(self.mktemp())
        os.mkdir(self.directory)
        self.key = ec_key()
        self.cert = make_certificate("localhost", self.key)
        self.cert_path = write(self.directory, "cert.pem", cert_pem(self.cert))
        self.key_path = write(self.directory, "key.pem", key_pem(self.key))

    def build(self, **settings: Any) -> Any:
        settings.setdefault("certificate", self.cert_path)
        settings.setdefault("private_key", self.key_path)
        return tls.certificate_options(TLSConfig(**settings), self.directory)

    def assertConfigError(self, path: str, text: str, **settings: Any) -> ConfigError:
        error = self.assertRaises(ConfigError, self.build, **settings)
        self.assertEqual(error.path, path)
        self.assertIn(text, error.problem)
        self.assertTrue(str(error).startswith(path + ": "))
        return error

    def test_valid(self):
        """
        Matching files build options (the baseline for the errors below).
        """
        self.assertIsNotNone(self.build().getContext())

    def test_missing_certificate(self):
        """
        A missing certificate file names C{tls.certificate} and the path.
        """
        missing = os.path.join(self.directory, "nope.pem")
        error = self.assertConfigError("tls.certificate", "cannot read", certificate=missing)
        self.assertIn(missing, error.problem)
        self.assertIn("No such file or directory", error.problem)

    def test_missing_key(self):
        """
        A missing key file names C{tls.private_key}.
        """
        missing = os.path.join(self.directory, "nope.pem")
        self.assertConfigError("tls.private_key", missing, private_key=missing)

    def test_key_does_not_match(self):
        """
        A key that is not the certificate's names C{tls.private_key}.
        """
        other = write(self.directory, "other.pem", key_pem(ec_key()))
        self.assertConfigError("tls.private_key", "does not match", private_key=other)
        other = write(self.directory, "other-rsa.pem", key_pem(rsa_key()))
        self.assertConfigError("tls.private_key", "does not match", private_key=other)

    def test_key_of_intermediate(self):
        """
        The key must match the first (leaf) certificate of the file, not a
        later one.
        """
        chain = write(
            self.directory, "chain.pem", cert_pem(make_certificate("localhost", ec_key()), self.cert)
        )
        self.assertConfigError("tls.private_key", "does not match", certificate=chain)

    def test_encrypted_key(self):
        """
        An encrypted key (PKCS#8 or traditional PEM) names
        C{tls.private_key} and says it is encrypted.
        """
        for traditional in (False, True):
            encrypted = write(
                self.directory, "enc.pem", key_pem(self.key, b"secret", traditional)
            )
            self.assertConfigError("tls.private_key", "is encrypted", private_key=encrypted)

    def test_garbage_certificate(self):
        """
        A certificate file with no PEM certificate, or a broken one, names
        C{tls.certificate}.
        """
        for data, text in [
            (b"", "contains no PEM certificate"),
            (b"not a certificate\n", "contains no PEM certificate"),
            (key_pem(self.key), "contains no PEM certificate"),
            (
                b"-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n",
                "contains an invalid certificate",
            ),
        ]:
            path = write(self.directory, "bad.pem", data)
            self.assertConfigError("tls.certificate", text, certificate=path)

    def test_garbage_key(self):
        """
        A key file without a valid PEM key (garbage, empty, a certificate)
        names C{tls.private_key}.
        """
        for data in [
            b"",
            b"garbage\n",
            cert_pem(self.cert),
            b"-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----\n",
        ]:
            path = write(self.directory, "bad.pem", data)
            self.assertConfigError("tls.private_key", "no valid PEM private key", private_key=path)

    def test_bad_ciphers(self):
        """
        A cipher string that selects nothing names C{tls.ciphers}.
        """
        self.assertConfigError("tls.ciphers", "selects no cipher suite", ciphers="NOT-A-CIPHER")

    def test_certificate_directory(self):
        """
        A directory where the certificate belongs names C{tls.certificate}.
        """
        self.assertConfigError("tls.certificate", "cannot read", certificate=self.directory)
