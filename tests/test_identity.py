"""Token verification with real keys of every accepted algorithm, and the development issuer."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from connector.crypto.keyfile import KeyFileError
from connector.identity.dev_issuer import DevIssuer
from connector.identity.errors import AuthError, ForbiddenError
from connector.identity.jwks import RemoteJwks, StaticJwks
from connector.identity.roles import Role
from connector.identity.verifier import TokenVerifier, TrustedIssuer, require_roles

ISS = "https://hdab.example.eu"
AUD = "imaging-connector"

KEYS: dict[str, Any] = {
    "RS256": (rsa.generate_private_key(public_exponent=65537, key_size=2048), RSAAlgorithm),
    "ES256": (ec.generate_private_key(ec.SECP256R1()), ECAlgorithm),
    "EdDSA": (ed25519.Ed25519PrivateKey.generate(), OKPAlgorithm),
}


def jwk_of(alg: str, kid: str, key: Any = None) -> dict[str, Any]:
    private, algorithm = KEYS[alg]
    jwk = json.loads(algorithm.to_jwk((key or private).public_key()))
    jwk.update(kid=kid, use="sig")
    return jwk


JWKS = {"keys": [jwk_of(alg, f"kid-{alg}") for alg in KEYS]}


def make_token(alg: str = "ES256", key: Any = None, kid: str | None = None, **claims: Any) -> str:
    now = int(time.time())
    payload = {
        "iss": ISS,
        "sub": "u1",
        "aud": AUD,
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "roles": ["hdab"],
    }
    payload.update(claims)
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, key or KEYS[alg][0], algorithm=alg, headers={"kid": kid or f"kid-{alg}"})


def verifier(**kwargs: Any) -> TokenVerifier:
    issuer = TrustedIssuer(
        ISS,
        StaticJwks(JWKS),
        roles_claim=kwargs.pop("roles_claim", "roles"),
        algorithms=kwargs.pop("algorithms", ("RS256", "ES256", "EdDSA")),
    )
    return TokenVerifier([issuer], audience=AUD, **kwargs)


def code_of(token: str, v: TokenVerifier | None = None) -> str:
    with pytest.raises(AuthError) as caught:
        (v or verifier()).verify(token)
    assert token not in str(caught.value) and token not in caught.value.detail
    return caught.value.code


@pytest.mark.parametrize("alg", list(KEYS))
def test_each_algorithm_verifies(alg: str) -> None:
    principal = verifier().verify(make_token(alg, org="Sciensano", country="BE", jti="t-1"))
    assert (principal.subject, principal.roles, principal.issuer) == ("u1", frozenset({Role.HDAB}), ISS)
    assert (principal.organisation, principal.country, principal.token_id) == ("Sciensano", "BE", "t-1")


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"exp": int(time.time()) - 600, "iat": int(time.time()) - 900, "nbf": None}, "token_expired"),
        ({"nbf": int(time.time()) + 600}, "token_not_yet_valid"),
        ({"iat": int(time.time()) + 600}, "token_not_yet_valid"),
        ({"aud": "another-service"}, "wrong_audience"),
        ({"iss": "https://evil.example"}, "unknown_issuer"),
        ({"iss": None}, "missing_claim"),
        ({"sub": None}, "missing_claim"),
        ({"exp": None}, "missing_claim"),
        ({"exp": int(time.time()) + 10 * 86400}, "token_lifetime_too_long"),
        ({"roles": ["admin", "root"]}, "no_known_role"),
        ({"roles": None}, "no_known_role"),
    ],
)
def test_claim_failures(claims: dict[str, Any], code: str) -> None:
    assert code_of(make_token(**claims)) == code


def test_unknown_kid_and_forged_signature() -> None:
    assert code_of(make_token(kid="kid-unknown")) == "unknown_key"
    assert code_of(make_token(key=ec.generate_private_key(ec.SECP256R1()))) == "invalid_signature"


def test_alg_none_is_refused() -> None:
    unsigned = jwt.encode(
        {"iss": ISS, "sub": "u1", "aud": AUD, "iat": 1, "exp": 2**40, "roles": ["dpo"]},
        key=None,
        algorithm="none",
    )
    assert code_of(unsigned) == "unsupported_algorithm"


def test_hmac_signed_with_the_public_key_is_refused() -> None:
    # Algorithm confusion: an attacker signs HS256 with the (public) RSA key as the secret.
    public_pem = (
        KEYS["RS256"][0]
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    header = {"alg": "HS256", "kid": "kid-RS256", "typ": "JWT"}
    segments = [
        jwt.utils.base64url_encode(json.dumps(header).encode()),
        jwt.utils.base64url_encode(
            json.dumps(
                {"iss": ISS, "sub": "x", "aud": AUD, "iat": 1, "exp": 2**40, "roles": ["dpo"]}
            ).encode()
        ),
    ]
    import hashlib
    import hmac

    signature = hmac.new(public_pem, b".".join(segments), hashlib.sha256).digest()
    forged = b".".join([*segments, jwt.utils.base64url_encode(signature)]).decode()
    assert code_of(forged) == "unsupported_algorithm"


def test_key_used_with_another_algorithm_is_refused() -> None:
    # The ES256 key's kid on an EdDSA token: the key type decides, not the header.
    assert code_of(make_token("EdDSA", kid="kid-ES256")) == "unsupported_algorithm"


def test_algorithm_not_allowed_for_issuer() -> None:
    assert code_of(make_token("RS256"), verifier(algorithms=("ES256",))) == "unsupported_algorithm"


@pytest.mark.parametrize("token", ["", "abc", "a.b", "a.b.c", "eyJ.eyJ.x", "ü.ö.ä"])
def test_malformed_tokens(token: str) -> None:
    with pytest.raises(AuthError) as caught:
        verifier().verify(token)
    assert caught.value.code in {"missing_token", "malformed_token"}


def test_bearer_header_parsing() -> None:
    assert TokenVerifier.bearer_from_header("Bearer abc") == "abc"
    assert TokenVerifier.bearer_from_header("bearer  abc ") == "abc"
    for header, code in [
        (None, "missing_token"),
        ("", "missing_token"),
        ("Basic abc", "malformed_token"),
        ("Bearer", "malformed_token"),
        ("Bearer   ", "malformed_token"),
    ]:
        with pytest.raises(AuthError) as caught:
            TokenVerifier.bearer_from_header(header)
        assert caught.value.code == code


def test_roles_from_keycloak_path_and_space_separated_string() -> None:
    keycloak = verifier(roles_claim="realm_access.roles")
    token = make_token(roles=None, realm_access={"roles": ["researcher", "offline_access"]})
    assert keycloak.verify(token).roles == {Role.RESEARCHER}
    assert verifier().verify(make_token(roles="dpo steward unknown")).roles == {Role.DPO, Role.STEWARD}


def test_leeway_is_honoured_and_bounded() -> None:
    just_expired = make_token(exp=int(time.time()) - 30)
    assert verifier(leeway_seconds=60).verify(just_expired).subject == "u1"
    assert code_of(just_expired, verifier(leeway_seconds=0)) == "token_expired"
    for bad in (-1, 301, 3600):
        with pytest.raises(ValueError, match="leeway"):
            verifier(leeway_seconds=bad)


def test_require_roles() -> None:
    principal = verifier().verify(make_token(roles=["researcher"]))
    require_roles(principal, [Role.RESEARCHER, Role.DPO])
    with pytest.raises(ForbiddenError, match="'researcher' may not call this; allowed: dpo"):
        require_roles(principal, [Role.DPO])


def test_dev_issuer_key_is_created_once_private_and_reused(tmp_path: Path) -> None:
    first = DevIssuer.load_or_create(tmp_path / "dev", "urn:dev", AUD)
    key_file = tmp_path / "dev" / "ed25519.pem"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    again = DevIssuer.load_or_create(tmp_path / "dev", "urn:dev", AUD)
    assert again.key_id == first.key_id
    token = first.issue("alice", [Role.DPO, "steward"], ttl_seconds=120, organisation="UZ", country="BE")
    principal = TokenVerifier([again.trusted_issuer()], audience=AUD).verify(token)
    assert principal.roles == {Role.DPO, Role.STEWARD}
    assert (principal.organisation, principal.country) == ("UZ", "BE")
    assert first.jwks()["keys"][0]["kid"] == first.key_id


def test_dev_issuer_refuses_unknown_roles(tmp_path: Path) -> None:
    issuer = DevIssuer.load_or_create(tmp_path, "urn:dev", AUD)
    with pytest.raises(ValueError, match="superuser"):
        issuer.issue("x", ["superuser"])
    with pytest.raises(ValueError, match="none given"):
        issuer.issue("x", [])


def test_dev_issuer_corrupt_key_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    (tmp_path / "dev" / "ed25519.pem").write_text("not a key")
    with pytest.raises(KeyFileError, match="corrupt"):
        DevIssuer.load_or_create(tmp_path / "dev", "urn:dev", AUD)
    assert (tmp_path / "dev" / "ed25519.pem").read_text() == "not a key"


class JwksServer:
    """A real HTTP server on 127.0.0.1 publishing a JWKS and counting requests."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": [jwk_of("ES256", "kid-ES256")]}
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                body = json.dumps(owner.jwks).encode()
                self.send_response(200)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.server.shutdown()


def remote_verifier(source: RemoteJwks) -> TokenVerifier:
    return TokenVerifier([TrustedIssuer(ISS, source)], audience=AUD)


def test_remote_jwks_is_cached(jwks_server: JwksServer) -> None:
    v = remote_verifier(RemoteJwks(jwks_server.url))
    for _ in range(5):
        v.verify(make_token())
    assert jwks_server.requests == 1


def test_remote_jwks_refetches_once_on_rotation_and_rate_limits_unknown_kids(jwks_server: JwksServer) -> None:
    source = RemoteJwks(jwks_server.url, min_refetch_seconds=0.5)
    v = remote_verifier(source)
    v.verify(make_token())
    time.sleep(0.6)
    jwks_server.jwks["keys"].append(jwk_of("RS256", "kid-RS256"))  # the issuer rotates in a new key
    assert v.verify(make_token("RS256")).subject == "u1"
    assert jwks_server.requests == 2
    for index in range(20):  # a flood of made-up kids
        assert code_of(make_token(kid=f"random-{index}"), v) == "unknown_key"
    assert jwks_server.requests <= 3


def test_unreachable_jwks_url() -> None:
    v = remote_verifier(RemoteJwks("http://127.0.0.1:1/jwks", timeout_s=1))
    assert code_of(make_token(), v) == "jwks_unavailable"
