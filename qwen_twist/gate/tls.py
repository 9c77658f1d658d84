# -*- test-case-name: tests.gate.test_tls -*-
"""
Server TLS: certificate chain and key from PEM files, a TLS 1.2 floor set
explicitly, ECDHE+AEAD suites only, and a self-signed certificate for
development.

Why explicit: Twisted 22.4 (Debian 12) defaults to a TLS 1.0 floor and its
default cipher string still admits RSA key exchange and CBC suites; newer
Twisted raised the floor. Setting both here makes the .deb and the venv
behave the same. TLS 1.3 suites are left to OpenSSL's defaults (all AEAD);
pyOpenSSL 23.0 cannot set them anyway.

Every problem is a L{ConfigError} naming the key to fix, raised at start-up,
not at the first handshake.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from typing import Any, Callable, List, Optional, Tuple

from OpenSSL import SSL, crypto
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLServerConnectionCreator
from twisted.logger import Logger
from zope.interface import implementer

from qwen_twist.config import ConfigError, MutualTLSConfig, TLSConfig
from qwen_twist.interfaces import IReconfigurable

_BEGIN = b"-----BEGIN CERTIFICATE-----"

_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def _read(path: str, key: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError(key, "cannot read %s: %s" % (path, e.strerror or e))


def load_chain(path: str, key: str = "tls.certificate") -> List[crypto.X509]:
    """
    All certificates of a PEM file, leaf first.
    """
    data = _read(path, key)
    blocks = [_BEGIN + part for part in data.split(_BEGIN)[1:]]
    if not blocks:
        raise ConfigError(key, "%s contains no PEM certificate" % (path,))
    try:
        return [crypto.load_certificate(crypto.FILETYPE_PEM, b) for b in blocks]
    except crypto.Error:
        raise ConfigError(key, "%s contains an invalid certificate" % (path,))


def load_key(path: str, key: str = "tls.private_key") -> crypto.PKey:
    """
    An unencrypted PEM private key.
    """
    data = _read(path, key)

    def no_passphrase(*args: Any) -> bytes:
        raise ConfigError(key, "%s is encrypted; qwengate needs an unencrypted key" % (path,))

    try:
        return crypto.load_privatekey(crypto.FILETYPE_PEM, data, no_passphrase)
    except crypto.Error:
        raise ConfigError(key, "%s contains no valid PEM private key" % (path,))


def _public_bytes(public_key: Any) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def fingerprint(cert: crypto.X509) -> str:
    """
    The certificate's SHA-256 fingerprint, as operators compare it.
    """
    return cert.digest("sha256").decode("ascii")


def ensure_self_signed(state_dir: str, now: Optional[datetime.datetime] = None) -> Tuple[str, str, bool]:
    """
    Create a self-signed certificate for C{localhost}, C{127.0.0.1} and
    C{::1} in C{state_dir/tls} unless one is already there.

    @return: C{(certificate path, key path, created)}.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    directory = os.path.join(state_dir, "tls")
    cert_path = os.path.join(directory, "cert.pem")
    key_path = os.path.join(directory, "key.pem")
    if os.path.exists(cert_path) and os.path.exists(key_path):
        return cert_path, key_path, False
    try:
        os.makedirs(directory, mode=0o700, exist_ok=True)
    except OSError as e:
        raise ConfigError("state_dir", "cannot create %s: %s" % (directory, e.strerror or e))
    now = now or datetime.datetime.now(datetime.timezone.utc)
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=825))
        .add_extension(
            x509.SubjectAlternativeName(
                [
                    x509.DNSName("localhost"),
                    x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                    x509.IPAddress(ipaddress.ip_address("::1")),
                ]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True, key_cert_sign=True, content_commitment=False,
                key_encipherment=False, data_encipherment=False, key_agreement=False,
                crl_sign=False, encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False
        )
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    try:
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            # A key file left from an interrupted run keeps its old mode
            # through O_TRUNC; make it private before writing the new key.
            os.fchmod(f.fileno(), 0o600)
            f.write(key_pem)
        with open(cert_path, "wb") as f:
            f.write(cert.public_bytes(serialization.Encoding.PEM))
    except OSError as e:
        raise ConfigError(
            "state_dir", "cannot write %s: %s" % (e.filename or directory, e.strerror or e)
        )
    return cert_path, key_path, True


def certificate_options(
    config: TLSConfig,
    state_dir: str,
    log: Optional[Callable[..., None]] = None,
    mtls: Optional[MutualTLSConfig] = None,
) -> ssl.CertificateOptions:
    """
    Build the server's C{CertificateOptions} from the C{tls} section (and
    C{auth.mtls} for client certificates).

    @param log: called as C{log(format, **fields)} for the self-signed
        certificate notice (its path and fingerprint).
    @param mtls: with mode C{optional}, a client certificate that is sent
        must verify against C{client_ca}; with C{require}, a handshake
        without one fails.
    @raise ConfigError: unreadable or mismatched files, bad cipher string.
    """
    cert_path, key_path = config.certificate, config.private_key
    if config.self_signed and not (cert_path and key_path):
        cert_path, key_path, created = ensure_self_signed(state_dir)
    chain = load_chain(cert_path)
    key = load_key(key_path)
    leaf = chain[0]
    if _public_bytes(leaf.get_pubkey().to_cryptography_key()) != _public_bytes(
        key.to_cryptography_key().public_key()
    ):
        raise ConfigError(
            "tls.private_key", "%s does not match the certificate in %s" % (key_path, cert_path)
        )
    if config.self_signed and log is not None:
        log(
            "development TLS certificate {path}, SHA-256 fingerprint {fingerprint}",
            path=cert_path,
            fingerprint=fingerprint(leaf),
        )
    ciphers = ssl.AcceptableCiphers.fromOpenSSLCipherString(config.ciphers)
    if not getattr(ciphers, "_ciphers", True):
        raise ConfigError("tls.ciphers", "selects no cipher suite: %r" % (config.ciphers,))
    client: dict = {}
    if mtls is not None and mtls.mode != "off":
        client = {
            "verify": True,
            "caCerts": load_chain(mtls.client_ca, "auth.mtls.client_ca"),
            "requireCertificate": mtls.mode == "require",
        }
    options = ssl.CertificateOptions(
        privateKey=key,
        certificate=leaf,
        extraCertChain=chain[1:],
        raiseMinimumTo=_VERSIONS[config.min_version],
        acceptableCiphers=ciphers,
        **client,
    )
    options.getContext()
    return options


@implementer(IOpenSSLServerConnectionCreator, IReconfigurable)
class ReloadableServerTLS:
    """
    The server's TLS settings, swappable at run time: SIGHUP replaces the
    certificate (a renewed one from certbot, say) for new connections while
    connections already open keep theirs.

    Why a bad file on reload is not fatal here: the certificate is one file
    among several a reload reads, and a half-written renewal must not stop
    a key revocation or a lowered limit from taking effect. The running
    certificate stays, and the log says why.

    @ivar options: the C{CertificateOptions} in force.
    @ivar config: the L{qwen_twist.config.Config} last given, or L{None}.
    """

    log = Logger()

    uses = ("tls", "auth.mtls")

    def __init__(self, options: ssl.CertificateOptions, config: Any = None) -> None:
        self.options = options
        self.config = config

    def reconfigure(self, config: Any) -> None:
        """
        Load the certificate, key and client CA named by C{config}; on any
        problem keep serving the running ones.
        """
        self.config = config
        try:
            self.options = certificate_options(config.tls, config.state_dir,
                                               mtls=config.auth.mtls)
        except ConfigError as e:
            self.log.error("TLS files not reloaded, keeping the running certificate: {error}",
                           error=str(e))

    def serverConnectionForTLS(self, tlsProtocol: Any) -> SSL.Connection:
        return SSL.Connection(self.options.getContext(), None)
