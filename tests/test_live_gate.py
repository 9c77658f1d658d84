"""
The gate end to end over real sockets: API keys with the official SDK,
Retry-After honoured by the SDK's retry logic, mutual TLS, and bans applied
at accept time.
"""

from __future__ import annotations

import datetime
import http.client
import json
import os
import ssl
import time

from twisted.trial.unittest import TestCase

import treq

from qwen_twist.gate.keyfile import add_key

from tests.support import async_test, in_thread, sdk, start_stack

MESSAGES = [{"role": "user", "content": "Hi"}]


def _keys_file(testcase) -> tuple:
    directory = testcase.mktemp()
    os.makedirs(directory)
    path = os.path.join(directory, "keys.yaml")
    return path, add_key(path, "alice", now=time.time())


def make_client_ca(directory: str) -> dict:
    """
    A client CA and a client certificate (CN=svc-bot) it signed, as PEM
    files; plus a certificate from an unrelated CA.
    """
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    now = datetime.datetime.now(datetime.timezone.utc)

    def name(cn):
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject, key, issuer, issuer_key, ca):
        builder = (
            x509.CertificateBuilder().subject_name(name(subject)).issuer_name(name(issuer))
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        return builder.sign(issuer_key, hashes.SHA256())

    def write(filename, data):
        path = os.path.join(directory, filename)
        with open(path, "wb") as f:
            f.write(data)
        return path

    def pem_key(key):
        return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                 serialization.NoEncryption())

    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = cert("client-ca", ca_key, "client-ca", ca_key, True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = cert("svc-bot", client_key, "client-ca", ca_key, False)
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    rogue = cert("rogue", rogue_key, "rogue", rogue_key, False)
    return {
        "ca": write("ca.pem", ca.public_bytes(pem)),
        "cert": write("client.pem", client.public_bytes(pem)),
        "key": write("client.key", pem_key(client_key)),
        "rogue_cert": write("rogue.pem", rogue.public_bytes(pem)),
        "rogue_key": write("rogue.key", pem_key(rogue_key)),
    }


def https_get(url: str, cafile: str, path: str, cert=None, key=None) -> tuple:
    """
    One blocking HTTPS GET with the stdlib (optionally with a client
    certificate); returns C{(status, body)}.
    """
    context = ssl.create_default_context(cafile=cafile)
    if cert:
        context.load_cert_chain(cert, key)
    host, port = url.split("//")[1].split(":")
    connection = http.client.HTTPSConnection(host, int(port), context=context, timeout=10)
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


class ApiKeyTests(TestCase):
    """
    Keys through the official SDK.
    """

    @async_test
    async def test_sdk_with_and_without_key(self) -> None:
        """
        The SDK's api_key works as a Bearer key; a wrong one raises
        C{openai.AuthenticationError} with code C{invalid_api_key}.
        """
        openai = sdk("openai")

        path, key = _keys_file(self)
        stack = await start_stack(self, {"auth": {"required": True, "keys_file": path}})
        good = stack.openai_client(api_key=key)
        reply = await in_thread(good.chat.completions.create, model="qwen3:8b", messages=MESSAGES)
        self.assertTrue(reply.choices[0].message.content)
        bad = stack.openai_client(api_key="qg-wrong")
        try:
            await in_thread(bad.chat.completions.create, model="qwen3:8b", messages=MESSAGES)
        except openai.AuthenticationError as e:
            self.assertEqual(e.code, "invalid_api_key")
        else:
            self.fail("no AuthenticationError")
        self.assertEqual(len(stack.record.for_path("/api/chat")), 1)

    @async_test
    async def test_sdk_honours_retry_after(self) -> None:
        """
        Over the per-key limit the gateway answers 429 with a Retry-After
        computed from the bucket; the SDK waits that long and its retry
        succeeds.
        """
        path, key = _keys_file(self)
        stack = await start_stack(self, {
            "auth": {"required": True, "keys_file": path},
            "rate_limits": {"per_key_requests": 1, "per_key_window": 1.0},
        })
        client = stack.openai_client(api_key=key, max_retries=2)
        await in_thread(client.chat.completions.create, model="qwen3:8b", messages=MESSAGES)
        started = time.monotonic()
        raw = await in_thread(client.chat.completions.with_raw_response.create,
                              model="qwen3:8b", messages=MESSAGES)
        self.assertEqual(raw.http_response.status_code, 200)
        self.assertGreaterEqual(time.monotonic() - started, 0.5)
        self.assertEqual(len(stack.record.for_path("/api/chat")), 2)
        self.assertEqual(raw.headers["x-ratelimit-limit-requests"], "1")


class BanAtAcceptTests(TestCase):
    """
    A banned address gets a few readable answers, then is refused before
    any TLS work.
    """

    @async_test
    async def test_banned_peer_refused_before_handshake(self) -> None:
        """
        After three failed authentications from 127.0.0.1, a new connection
        from it (past the answer budget) is closed at accept time: the TLS
        handshake never happens.
        """
        path, key = _keys_file(self)
        stack = await start_stack(self, {"auth": {"required": True, "keys_file": path},
                                         "connections": {"refusal_answers": 0}})
        for _ in range(3):
            response = await stack.post(
                "/v1/chat/completions", json={"model": "qwen3:8b", "messages": MESSAGES},
                headers={"Authorization": "Bearer nope"},
            )
            self.assertEqual(response.code, 401)
            await treq.content(response)
        built = len(stack.service.factory.protocols)
        try:
            await in_thread(https_get, stack.url, stack.cafile, "/health")
        except (ssl.SSLError, OSError):
            pass
        else:
            self.fail("a banned peer completed a request")
        self.assertEqual(stack.service.peer_filter.refused["banned"], 1)
        self.assertLessEqual(len(stack.service.factory.protocols), built)

    @async_test
    async def test_sdk_sees_ban(self) -> None:
        """
        A client with a valid key behind a banned address (a colleague on
        the same NAT) gets, through the openai SDK, a 403 C{address_banned}
        saying until when, with C{Retry-After} (the ban's remaining time)
        and no word of the credential that was tried -- not a connection
        reset.
        """
        openai = sdk("openai")

        path, key = _keys_file(self)
        stack = await start_stack(self, {"auth": {"required": True, "keys_file": path},
                                         "bans": {"failures": 1, "duration": 600.0}})
        response = await stack.post(
            "/v1/chat/completions", json={"model": "qwen3:8b", "messages": MESSAGES},
            headers={"Authorization": "Bearer qg-guessed-secret"},
        )
        self.assertEqual(response.code, 401)
        await treq.content(response)
        client = stack.openai_client(api_key=key)
        try:
            await in_thread(client.chat.completions.create, model="qwen3:8b",
                            messages=MESSAGES)
        except openai.PermissionDeniedError as e:
            self.assertEqual(e.code, "address_banned")
            self.assertIn(int(e.response.headers["retry-after"]), (599, 600, 601))
            self.assertIn("banned until", e.message)
            self.assertNotIn(key, e.message)
            self.assertNotIn("qg-guessed-secret", str(e.body))
        else:
            self.fail("no PermissionDeniedError")
        self.assertEqual(stack.service.peer_filter.answered["banned"], 1)
        self.assertEqual(len(stack.record.for_path("/api/chat")), 0)

    @async_test
    async def test_sdk_sees_connection_cap(self) -> None:
        """
        Over C{connections.max_per_ip}, the SDK gets a 429
        C{too_many_connections} with C{Retry-After} instead of a reset.
        """
        openai = sdk("openai")

        stack = await start_stack(self, {"connections": {"max_per_ip": 1}})
        holder = ssl.create_default_context(cafile=stack.cafile).wrap_socket(
            __import__("socket").create_connection(("127.0.0.1", stack.port.getHost().port)),
            server_hostname="127.0.0.1", do_handshake_on_connect=False)
        self.addCleanup(holder.close)
        await in_thread(holder.do_handshake)
        client = stack.openai_client()
        try:
            await in_thread(client.models.list)
        except openai.RateLimitError as e:
            self.assertEqual(e.code, "too_many_connections")
            self.assertEqual(e.response.headers["retry-after"], "1")
            self.assertIn("too many open connections from this address", e.message)
        else:
            self.fail("no RateLimitError")
        self.assertEqual(stack.service.peer_filter.answered["per_ip"], 1)


class MutualTLSTests(TestCase):
    """
    Client certificates, optional and required.
    """

    async def _stack(self, mode: str, identity: bool = True):
        directory = self.mktemp()
        os.makedirs(directory)
        self.files = make_client_ca(directory)
        return await start_stack(self, {"auth": {
            "required": True, "keys_file": None,
            "mtls": {"mode": mode, "client_ca": self.files["ca"],
                     "identity_from_subject": identity}}})

    @async_test
    async def test_required(self) -> None:
        """
        With C{require}, a client without a certificate (or with one from
        another CA) fails the handshake; with a good one its subject is the
        identity and the API answers.
        """
        stack = await self._stack("require")
        files = self.files
        for cert, key in ((None, None), (files["rogue_cert"], files["rogue_key"])):
            try:
                await in_thread(https_get, stack.url, stack.cafile, "/v1/models", cert, key)
            except (ssl.SSLError, OSError):
                pass
            else:
                self.fail("handshake succeeded without a valid client certificate")
        status, body = await in_thread(https_get, stack.url, stack.cafile, "/v1/models",
                                       files["cert"], files["key"])
        self.assertEqual(status, 200, body)
        self.assertIn("qwen3:8b", [m["id"] for m in json.loads(body)["data"]])

    @async_test
    async def test_optional(self) -> None:
        """
        With C{optional}, a client without a certificate connects but has
        no identity (401); one with a certificate is identified by it.
        """
        stack = await self._stack("optional")
        status, body = await in_thread(https_get, stack.url, stack.cafile, "/v1/models")
        self.assertEqual(status, 401)
        status, _ = await in_thread(https_get, stack.url, stack.cafile, "/v1/models",
                                    self.files["cert"], self.files["key"])
        self.assertEqual(status, 200)
