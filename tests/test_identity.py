"""Token verification with real keys of every accepted algorithm, the development issuer, and
remote JWKS fetched from a real HTTP server. Nothing here is mocked: keys are generated with
cryptography, tokens signed with pyjwt, and the JWKS server is a real socket on 127.0.0.1.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import stat
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
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
from connector.identity.errors import AUTH_ERROR_CODES, AuthError, ForbiddenError
from connector.identity.jwks import RemoteJwks, StaticJwks, load_jwks_file
from connector.identity.principal import Principal
from connector.identity.roles import Role, parse_roles
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


def claims_now(**claims: Any) -> dict[str, Any]:
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
    return {k: v for k, v in payload.items() if v is not None}


def make_token(
    alg: str = "ES256",
    key: Any = None,
    kid: str | None = None,
    headers: dict[str, Any] | None = None,
    **claims: Any,
) -> str:
    return jwt.encode(
        claims_now(**claims),
        key or KEYS[alg][0],
        algorithm=alg,
        headers={"kid": kid or f"kid-{alg}", **(headers or {})},
    )


def raw_token(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"sig") -> str:
    """A compact JWS assembled by hand, for shapes pyjwt refuses to produce."""
    parts = [json.dumps(header).encode(), json.dumps(payload).encode(), signature]
    return b".".join(jwt.utils.base64url_encode(part) for part in parts).decode()


def verifier(**kwargs: Any) -> TokenVerifier:
    issuer = TrustedIssuer(
        ISS,
        StaticJwks(JWKS),
        roles_claim=kwargs.pop("roles_claim", "roles"),
        algorithms=kwargs.pop("algorithms", ("RS256", "ES256", "EdDSA")),
    )
    return TokenVerifier([issuer], audience=AUD, **kwargs)


def code_of(token: str, v: TokenVerifier | None = None) -> str:
    """The AuthError code for `token`, checking that neither detail nor message quotes the token."""
    with pytest.raises(AuthError) as caught:
        (v or verifier()).verify(token)
    error = caught.value
    assert error.code in AUTH_ERROR_CODES
    assert error.detail and token not in error.detail and token not in str(error)
    # Not even the signature part, the one piece of a token that is secret-like in a log.
    if token.count(".") == 2 and len(token.rsplit(".", 1)[1]) > 8:
        assert token.rsplit(".", 1)[1] not in error.detail
    return error.code


# --- valid tokens -------------------------------------------------------------------------------


@pytest.mark.parametrize("alg", list(KEYS))
def test_each_algorithm_verifies(alg: str) -> None:
    token = make_token(alg, org="Sciensano", country="BE", jti="t-1", roles=["hdab", "peer"])
    principal = verifier().verify(token)
    assert isinstance(principal, Principal)
    assert (principal.subject, principal.issuer) == ("u1", ISS)
    assert principal.roles == frozenset({Role.HDAB, Role.PEER})
    assert (principal.organisation, principal.country, principal.token_id) == ("Sciensano", "BE", "t-1")
    assert principal.expires_at.tzinfo is not None
    assert principal.expires_at == datetime.fromtimestamp(principal.claims["exp"], UTC)
    assert token not in repr(principal)


def test_principal_claims_are_read_only() -> None:
    principal = verifier().verify(make_token())
    with pytest.raises(TypeError):
        principal.claims["roles"] = ["dpo"]  # type: ignore[index]


def test_optional_claims_absent_and_country_normalised() -> None:
    principal = verifier().verify(make_token(nbf=None))
    assert (principal.organisation, principal.country, principal.token_id) == (None, None, None)
    assert verifier().verify(make_token(country="nl")).country == "NL"


def test_token_without_kid_uses_the_single_key_for_its_algorithm() -> None:
    token = jwt.encode(claims_now(), KEYS["EdDSA"][0], algorithm="EdDSA")
    assert "kid" not in jwt.get_unverified_header(token)
    assert verifier().verify(token).subject == "u1"
    # With two keys for the algorithm and no kid, there is no telling which: refused.
    two = StaticJwks(
        {"keys": [jwk_of("EdDSA", "a"), jwk_of("EdDSA", "b", ed25519.Ed25519PrivateKey.generate())]}
    )
    assert code_of(token, TokenVerifier([TrustedIssuer(ISS, two)], AUD)) == "unknown_key"


# --- missing and malformed ----------------------------------------------------------------------


def test_missing_token() -> None:
    for token in (None, ""):
        with pytest.raises(AuthError) as caught:
            verifier().verify(token)
        assert caught.value.code == "missing_token"


def test_bearer_header_parsing() -> None:
    assert TokenVerifier.bearer_from_header("Bearer abc") == "abc"
    assert TokenVerifier.bearer_from_header("bearer  abc ") == "abc"
    assert TokenVerifier.bearer_from_header("BEARER\tabc") == "abc"
    for header, code in [
        (None, "missing_token"),
        ("", "missing_token"),
        ("   ", "missing_token"),
        ("Basic dXNlcjpwYXNz", "malformed_token"),
        ("abc.def.ghi", "malformed_token"),
        ("Bearer", "malformed_token"),
        ("Bearer   ", "malformed_token"),
        ("Bearer a b", "malformed_token"),
    ]:
        with pytest.raises(AuthError) as caught:
            TokenVerifier.bearer_from_header(header)
        assert caught.value.code == code, header
        assert "dXNlcjpwYXNz" not in caught.value.detail and "abc.def" not in caught.value.detail


@pytest.mark.parametrize(
    "token",
    ["abc", "a.b", "a.b.c", "eyJ.eyJ.x", "ü.ö.ä", "..", "a.b.c.d.e", "x" * 20_000],
)
def test_garbage_tokens_are_malformed(token: str) -> None:
    assert code_of(token) == "malformed_token"


def test_payload_that_is_not_an_object_is_malformed() -> None:
    header = {"alg": "ES256", "kid": "kid-ES256"}
    for payload in ([1, 2], "text", 42):
        segments = [json.dumps(header).encode(), json.dumps(payload).encode(), b"x"]
        token = b".".join(jwt.utils.base64url_encode(part) for part in segments).decode()
        assert code_of(token) == "malformed_token"


def test_non_string_kid_is_malformed() -> None:
    token = raw_token({"alg": "ES256", "kid": 7}, claims_now())
    assert code_of(token) == "malformed_token"


# --- time, audience, issuer, claims ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"exp": int(time.time()) - 600, "iat": int(time.time()) - 900, "nbf": None}, "token_expired"),
        ({"nbf": int(time.time()) + 600}, "token_not_yet_valid"),
        ({"iat": int(time.time()) + 600, "nbf": None}, "token_not_yet_valid"),
        ({"aud": "another-service"}, "wrong_audience"),
        ({"aud": ["another-service", "a-third"]}, "wrong_audience"),
        ({"iss": "https://evil.example"}, "unknown_issuer"),
        ({"iss": None}, "missing_claim"),
        ({"iss": ["https://hdab.example.eu"]}, "malformed_token"),
        ({"sub": None}, "missing_claim"),
        ({"sub": "  "}, "missing_claim"),
        ({"sub": 12}, "malformed_token"),
        ({"aud": None}, "missing_claim"),
        ({"exp": None}, "missing_claim"),
        ({"iat": None}, "missing_claim"),
        ({"exp": str(int(time.time()) + 300)}, "malformed_token"),
        ({"exp": True}, "malformed_token"),
        ({"nbf": [1]}, "malformed_token"),
        ({"iat": "soon"}, "malformed_token"),
        ({"exp": int(time.time()) + 10 * 86400}, "token_lifetime_too_long"),
        ({"roles": ["admin", "root"]}, "no_known_role"),
        ({"roles": None}, "no_known_role"),
        ({"roles": {"dpo": True}}, "no_known_role"),
        ({"roles": ["DPO"]}, "no_known_role"),
        ({"country": "Belgium"}, "malformed_token"),
        ({"org": ["a"]}, "malformed_token"),
        ({"jti": 5}, "malformed_token"),
    ],
)
def test_claim_failures(claims: dict[str, Any], code: str) -> None:
    assert code_of(make_token(**claims)) == code


def test_error_details_say_what_is_wrong() -> None:
    def detail(token: str) -> str:
        with pytest.raises(AuthError) as caught:
            verifier().verify(token)
        return caught.value.detail

    assert "'sub'" in detail(make_token(sub=None))
    assert "https://evil.example" in detail(make_token(iss="https://evil.example"))
    assert AUD in detail(make_token(aud="x"))
    assert "expired at 20" in detail(
        make_token(exp=int(time.time()) - 600, iat=int(time.time()) - 900, nbf=None)
    )
    assert "researcher" in detail(make_token(roles=["admin"]))


def test_far_future_exp_without_lifetime_limit_is_refused_not_crashing() -> None:
    unlimited = verifier(max_lifetime_seconds=None)
    assert unlimited.verify(make_token(exp=int(time.time()) + 30 * 86400)).subject == "u1"
    assert code_of(make_token(exp=10**20), unlimited) == "malformed_token"


def test_leeway_is_honoured_and_bounded() -> None:
    lenient, strict, widest = (
        verifier(leeway_seconds=60),
        verifier(leeway_seconds=0),
        verifier(leeway_seconds=300),
    )
    just_expired = make_token(exp=int(time.time()) - 30)
    assert lenient.verify(just_expired).subject == "u1"
    assert code_of(just_expired, strict) == "token_expired"
    early = make_token(nbf=int(time.time()) + 30)
    assert lenient.verify(early).subject == "u1"
    assert code_of(early, strict) == "token_not_yet_valid"
    # The upper bound is accepted; anything outside 0..300 is a configuration error.
    assert widest.verify(make_token(exp=int(time.time()) - 290)).subject == "u1"
    for bad in (-1, 301, 3600):
        with pytest.raises(ValueError, match="leeway"):
            verifier(leeway_seconds=bad)


def test_roles_from_keycloak_path_and_space_separated_string() -> None:
    keycloak = verifier(roles_claim="realm_access.roles")
    token = make_token(roles=None, realm_access={"roles": ["researcher", "offline_access"]})
    assert keycloak.verify(token).roles == {Role.RESEARCHER}
    assert code_of(make_token(realm_access="researcher"), keycloak) == "no_known_role"
    assert verifier().verify(make_token(roles="dpo steward unknown")).roles == {Role.DPO, Role.STEWARD}


def test_unknown_roles_only_give_no_known_role() -> None:
    assert code_of(make_token(roles="offline_access uma_authorization")) == "no_known_role"
    assert code_of(make_token(roles=[])) == "no_known_role"


# --- keys and algorithms ------------------------------------------------------------------------


def test_unknown_kid() -> None:
    assert code_of(make_token(kid="kid-unknown")) == "unknown_key"


def test_forged_signature_with_the_right_kid() -> None:
    for alg, other in [
        ("ES256", ec.generate_private_key(ec.SECP256R1())),
        ("RS256", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("EdDSA", ed25519.Ed25519PrivateKey.generate()),
    ]:
        assert code_of(make_token(alg, key=other)) == "invalid_signature"


def test_altered_claims_break_the_signature() -> None:
    header, payload, signature = make_token(roles=["researcher"]).split(".")
    claims = json.loads(jwt.utils.base64url_decode(payload))
    claims["roles"] = ["dpo"]
    altered = jwt.utils.base64url_encode(json.dumps(claims).encode()).decode()
    assert code_of(f"{header}.{altered}.{signature}") == "invalid_signature"


def test_keys_embedded_in_the_token_are_ignored() -> None:
    attacker = ec.generate_private_key(ec.SECP256R1())
    embedded = json.loads(ECAlgorithm.to_jwk(attacker.public_key()))
    token = make_token(key=attacker, headers={"jwk": embedded, "jku": "https://evil.example/jwks"})
    assert code_of(token) == "invalid_signature"


def test_key_of_another_trusted_issuer_is_not_accepted() -> None:
    other_key = ec.generate_private_key(ec.SECP256R1())
    other = TrustedIssuer(
        "https://other.example", StaticJwks({"keys": [jwk_of("ES256", "other", other_key)]})
    )
    v = TokenVerifier([TrustedIssuer(ISS, StaticJwks(JWKS)), other], audience=AUD)
    # Claims to be from ISS but is signed with (and names) the other issuer's key.
    assert code_of(make_token(key=other_key, kid="other"), v) == "unknown_key"
    assert v.verify(make_token(key=other_key, kid="other", iss="https://other.example")).issuer == (
        "https://other.example"
    )


def test_alg_none_is_refused() -> None:
    unsigned = jwt.encode(claims_now(roles=["dpo"]), key=None, algorithm="none")
    assert code_of(unsigned) == "unsupported_algorithm"
    # Also with a kid that exists and an empty signature, and with other spellings of "none".
    for alg in ("none", "None", "NONE"):
        token = raw_token({"alg": alg, "kid": "kid-ES256"}, claims_now(), signature=b"")
        assert code_of(token) == "unsupported_algorithm"
    assert code_of(raw_token({"kid": "kid-ES256"}, claims_now())) == "unsupported_algorithm"


@pytest.mark.parametrize("alg", ["HS256", "HS384", "HS512"])
def test_hmac_signed_with_the_public_key_is_refused(alg: str) -> None:
    # Algorithm confusion (CVE-2015-9235 class): the attacker uses the issuer's *public* key,
    # in the forms a naive verifier might feed to HMAC, as the shared secret.
    public = KEYS["RS256"][0].public_key()
    secrets_tried = [
        public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        json.dumps(jwk_of("RS256", "kid-RS256")).encode(),
    ]
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512}[alg]
    for secret in secrets_tried:
        segments = [
            jwt.utils.base64url_encode(json.dumps({"alg": alg, "kid": "kid-RS256", "typ": "JWT"}).encode()),
            jwt.utils.base64url_encode(json.dumps(claims_now(roles=["dpo"])).encode()),
        ]
        signature = hmac.new(secret, b".".join(segments), digest).digest()
        forged = b".".join([*segments, jwt.utils.base64url_encode(signature)]).decode()
        assert code_of(forged) == "unsupported_algorithm"


def test_hmac_cannot_even_be_configured() -> None:
    with pytest.raises(ValueError, match="unsupported algorithms"):
        TrustedIssuer(ISS, StaticJwks(JWKS), algorithms=("HS256",))
    with pytest.raises(ValueError, match="unsupported algorithms"):
        TrustedIssuer(ISS, StaticJwks(JWKS), algorithms=("RS256", "none"))


def test_key_used_with_another_algorithm_is_refused() -> None:
    # The ES256 key's kid on an EdDSA token: the key's type decides, not the header.
    assert code_of(make_token("EdDSA", kid="kid-ES256")) == "unsupported_algorithm"


def test_algorithm_not_allowed_for_issuer() -> None:
    assert code_of(make_token("RS256"), verifier(algorithms=("ES256",))) == "unsupported_algorithm"
    assert code_of(make_token("ES256"), verifier(algorithms=("EdDSA",))) == "unsupported_algorithm"


def test_other_asymmetric_algorithms_are_refused() -> None:
    rsa_key = KEYS["RS256"][0]
    for alg in ("PS256", "RS512"):
        token = jwt.encode(claims_now(), rsa_key, algorithm=alg, headers={"kid": "kid-RS256"})
        assert code_of(token) == "unsupported_algorithm"


def test_critical_header_extensions_are_refused() -> None:
    assert code_of(make_token(headers={"crit": ["exp"], "exp": 1})) == "malformed_token"


# --- JWKS contents ------------------------------------------------------------------------------


def test_jwks_keeps_only_public_signature_keys(caplog: pytest.LogCaptureFixture) -> None:
    private_rsa = json.loads(RSAAlgorithm.to_jwk(KEYS["RS256"][0]))  # includes "d", "p", "q", ...
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)  # noqa: S505 (must be refused)
    p384 = ec.generate_private_key(ec.SECP384R1())
    entries = [
        {**private_rsa, "kid": "private", "use": "sig"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "oct", "alg": "HS256"},
        {**json.loads(RSAAlgorithm.to_jwk(weak.public_key())), "kid": "weak"},
        {**jwk_of("ES256", "enc"), "use": "enc"},
        {**json.loads(ECAlgorithm.to_jwk(p384.public_key())), "kid": "p384", "alg": "ES256"},
        {"kty": "EC", "crv": "P-256", "x": "!!", "y": "??", "kid": "broken"},
        "not an object",
        jwk_of("ES256", "good"),
    ]
    with caplog.at_level(logging.WARNING):
        source = StaticJwks({"keys": entries})
    v = TokenVerifier([TrustedIssuer(ISS, source)], AUD)
    assert v.verify(make_token(kid="good")).subject == "u1"
    assert code_of(make_token("RS256", kid="private"), v) == "unknown_key"
    assert code_of(make_token("RS256", key=weak, kid="weak"), v) == "unknown_key"
    assert code_of(make_token(kid="enc"), v) == "unknown_key"
    assert code_of(make_token(key=p384, kid="p384"), v) == "unknown_key"
    # The log says why an entry was skipped, without quoting any key material.
    assert "private or symmetric" in caplog.text and "1024 bits" in caplog.text
    assert private_rsa["d"] not in caplog.text and "c2VjcmV0" not in caplog.text


def test_jwks_without_usable_keys_is_a_configuration_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no usable public signature key"):
        StaticJwks({"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "oct"}]})
    with pytest.raises(ValueError, match="not a JWKS"):
        StaticJwks({"kty": "OKP"})
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(JWKS))
    v = TokenVerifier([TrustedIssuer(ISS, load_jwks_file(path))], AUD)
    assert v.verify(make_token("RS256")).subject == "u1"
    path.write_text("{ not json")
    with pytest.raises(ValueError, match=r"jwks\.json is not valid JSON"):
        load_jwks_file(path)
    with pytest.raises(ValueError, match="cannot be read"):
        load_jwks_file(tmp_path / "absent.json")


def test_verifier_configuration_errors() -> None:
    issuer = TrustedIssuer(ISS, StaticJwks(JWKS))
    with pytest.raises(ValueError, match="twice"):
        TokenVerifier([issuer, issuer], AUD)
    with pytest.raises(ValueError, match="audience"):
        TokenVerifier([issuer], "")
    with pytest.raises(ValueError, match="roles_claim"):
        TrustedIssuer(ISS, StaticJwks(JWKS), roles_claim="realm_access..roles")


# --- roles --------------------------------------------------------------------------------------


def test_require_roles() -> None:
    principal = verifier().verify(make_token(roles=["researcher"]))
    require_roles(principal, [Role.RESEARCHER, Role.DPO])
    with pytest.raises(ForbiddenError, match="'researcher' may not call this; allowed: dpo") as caught:
        require_roles(principal, [Role.DPO])
    assert caught.value.code == "forbidden_role"
    several = verifier().verify(make_token(roles=["researcher", "peer"]))
    with pytest.raises(
        ForbiddenError, match="roles 'peer', 'researcher' may not call this; allowed: dpo, steward"
    ):
        require_roles(several, [Role.STEWARD, Role.DPO])
    with pytest.raises(ForbiddenError, match="allowed: no role"):
        require_roles(principal, [])


def test_parse_roles() -> None:
    assert parse_roles(["dpo", Role.PEER, "dpo"]) == {Role.DPO, Role.PEER}
    with pytest.raises(ValueError, match=r"'admin'.*choose from steward, dpo, researcher, hdab, peer"):
        parse_roles(["dpo", "admin"])


# --- the development issuer ---------------------------------------------------------------------


def rfc7638_thumbprint(jwk: dict[str, Any]) -> str:
    # RFC 7638 §3.2 for OKP (RFC 8037 §2): {"crv":..,"kty":..,"x":..} in this order, no whitespace.
    canonical = f'{{"crv":"{jwk["crv"]}","kty":"{jwk["kty"]}","x":"{jwk["x"]}"}}'
    return base64.urlsafe_b64encode(hashlib.sha256(canonical.encode()).digest()).rstrip(b"=").decode()


def test_dev_issuer_key_is_created_once_private_and_reused(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys" / "dev"
    first = DevIssuer.load_or_create(key_dir, "urn:dev", AUD)
    key_file = key_dir / "ed25519.pem"
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(key_dir).st_mode) == 0o700
    pem = key_file.read_bytes()
    assert b"PRIVATE KEY" in pem
    assert [p.name for p in key_dir.iterdir()] == ["ed25519.pem"]  # no temporary file left behind
    again = DevIssuer(key_dir, "urn:dev", AUD)
    assert again.key_id == first.key_id
    assert key_file.read_bytes() == pem
    token = first.issue("alice", [Role.DPO, "steward"], ttl_seconds=120, organisation="UZ", country="be")
    principal = TokenVerifier([again.trusted_issuer()], audience=AUD).verify(token)
    assert principal.roles == {Role.DPO, Role.STEWARD}
    assert (principal.subject, principal.issuer) == ("alice", "urn:dev")
    assert (principal.organisation, principal.country) == ("UZ", "BE")
    assert pem.decode() not in token


def test_dev_issuer_tightens_an_existing_folder(tmp_path: Path) -> None:
    key_dir = tmp_path / "dev"
    key_dir.mkdir(mode=0o755)
    key_dir.chmod(0o755)
    DevIssuer(key_dir)
    assert stat.S_IMODE(os.stat(key_dir).st_mode) == 0o700


def test_dev_issuer_jwks_and_key_id(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path)
    assert (issuer.issuer, issuer.audience) == ("urn:connector:dev-issuer", "imaging-connector")
    jwks = issuer.jwks()
    assert set(jwks) == {"keys"} and len(jwks["keys"]) == 1
    jwk = jwks["keys"][0]
    assert set(jwk) == {"kty", "crv", "x", "kid", "alg", "use"}
    assert (jwk["kty"], jwk["crv"], jwk["alg"], jwk["use"]) == ("OKP", "Ed25519", "EdDSA", "sig")
    assert jwk["kid"] == issuer.key_id == rfc7638_thumbprint(jwk)
    # The published key is the one in the key file.
    private = serialization.load_pem_private_key((tmp_path / "ed25519.pem").read_bytes(), None)
    assert json.loads(OKPAlgorithm.to_jwk(private.public_key()))["x"] == jwk["x"]  # type: ignore[arg-type]
    jwk["x"] = "tampered"
    assert issuer.jwks()["keys"][0]["x"] != "tampered"  # callers get a copy


def test_dev_issuer_claims(tmp_path: Path) -> None:
    issuer = DevIssuer(tmp_path, "urn:dev", AUD)
    before = int(time.time())
    token = issuer.issue("bob", ["researcher"], ttl_seconds=600, extra_claims={"purpose": "AI training"})
    header = jwt.get_unverified_header(token)
    assert (header["alg"], header["kid"]) == ("EdDSA", issuer.key_id)
    claims = jwt.decode(
        token,
        issuer.trusted_issuer().jwks.get_signing_key(issuer.key_id, "EdDSA"),
        algorithms=["EdDSA"],
        audience=AUD,
    )
    assert (claims["iss"], claims["sub"], claims["aud"], claims["roles"]) == (
        "urn:dev",
        "bob",
        AUD,
        ["researcher"],
    )
    assert before <= claims["iat"] == claims["nbf"] <= int(time.time())
    assert claims["exp"] == claims["iat"] + 600
    assert claims["purpose"] == "AI training"
    assert "org" not in claims and "country" not in claims
    assert len(claims["jti"]) >= 32
    other = jwt.decode(issuer.issue("bob", ["researcher"]), options={"verify_signature": False})
    assert other["jti"] != claims["jti"]


def test_dev_issuer_refuses_bad_arguments(tmp_path: Path) -> None:
    issuer = DevIssuer.load_or_create(tmp_path, "urn:dev", AUD)
    with pytest.raises(ValueError, match="superuser"):
        issuer.issue("x", ["superuser"])
    with pytest.raises(ValueError, match="none given"):
        issuer.issue("x", [])
    with pytest.raises(ValueError, match="subject"):
        issuer.issue(" ", ["dpo"])
    for ttl in (0, -5, 8 * 86400):
        with pytest.raises(ValueError, match="ttl_seconds"):
            issuer.issue("x", ["dpo"], ttl_seconds=ttl)
    with pytest.raises(ValueError, match="ISO 3166-1"):
        issuer.issue("x", ["dpo"], country="BEL")
    with pytest.raises(ValueError, match="roles"):
        issuer.issue("x", ["researcher"], extra_claims={"roles": ["dpo"]})
    with pytest.raises(ValueError, match="aud, iss"):
        issuer.issue("x", ["dpo"], extra_claims={"iss": "urn:evil", "aud": "other"})


def test_dev_issuer_tokens_for_another_audience_or_issuer_are_refused(tmp_path: Path) -> None:
    ours = DevIssuer(tmp_path / "a", "urn:dev", AUD)
    foreign_audience = DevIssuer(tmp_path / "a", "urn:dev", "another-connector")
    v = TokenVerifier([ours.trusted_issuer()], AUD)
    assert code_of(foreign_audience.issue("x", ["dpo"]), v) == "wrong_audience"
    # Another dev issuer (another key) calling itself by the same name: not our key.
    impostor = DevIssuer(tmp_path / "b", "urn:dev", AUD)
    assert code_of(impostor.issue("x", ["dpo"]), v) == "unknown_key"
    # Our dev issuer's key accepts EdDSA only.
    assert code_of(make_token("ES256", iss="urn:dev", kid=ours.key_id), v) == "unsupported_algorithm"


def test_dev_issuer_corrupt_key_is_not_overwritten(tmp_path: Path) -> None:
    (tmp_path / "dev").mkdir()
    key_file = tmp_path / "dev" / "ed25519.pem"
    key_file.write_text("not a key")
    with pytest.raises(KeyFileError, match="corrupt") as caught:
        DevIssuer.load_or_create(tmp_path / "dev", "urn:dev", AUD)
    assert str(key_file) in str(caught.value) and "development issuer" in str(caught.value)
    assert key_file.read_text() == "not a key"
    # A valid PEM of the wrong key type is refused the same way.
    rsa_pem = KEYS["RS256"][0].private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    key_file.write_bytes(rsa_pem)
    with pytest.raises(KeyFileError, match="Ed25519"):
        DevIssuer(tmp_path / "dev")
    assert key_file.read_bytes() == rsa_pem


def test_dev_issuer_started_by_several_workers_at_once_agrees_on_one_key(tmp_path: Path) -> None:
    key_dir = tmp_path / "dev"
    barrier = threading.Barrier(8)
    results: list[str | BaseException] = []

    def start() -> None:
        barrier.wait()
        try:
            results.append(DevIssuer(key_dir).key_id)
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1 and isinstance(results[0], str), results
    assert results[0] == DevIssuer(key_dir).key_id


# --- remote JWKS over real HTTP -----------------------------------------------------------------


class JwksServer:
    """A real HTTP server on 127.0.0.1 publishing a JWKS and counting requests."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": [jwk_of("ES256", "kid-ES256")]}
        self.status = 200
        self.body: bytes | None = None  # raw body instead of the JWKS
        self.location: str | None = None
        self.requests = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                owner.requests += 1
                body = owner.body if owner.body is not None else json.dumps(owner.jwks).encode()
                self.send_response(owner.status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                if owner.location:
                    self.send_header("location", owner.location)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/jwks"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def jwks_server() -> Iterator[JwksServer]:
    server = JwksServer()
    yield server
    server.close()


def remote_verifier(source: RemoteJwks) -> TokenVerifier:
    return TokenVerifier([TrustedIssuer(ISS, source)], audience=AUD)


def test_remote_jwks_is_cached(jwks_server: JwksServer) -> None:
    v = remote_verifier(RemoteJwks(jwks_server.url))
    for _ in range(5):
        v.verify(make_token())
    assert jwks_server.requests == 1


def test_remote_jwks_cache_expires(jwks_server: JwksServer) -> None:
    v = remote_verifier(RemoteJwks(jwks_server.url, cache_seconds=1, min_refetch_seconds=0))
    v.verify(make_token())
    v.verify(make_token())
    assert jwks_server.requests == 1
    time.sleep(1.1)
    v.verify(make_token())
    assert jwks_server.requests == 2


def test_remote_jwks_refetches_once_on_rotation_and_rate_limits_unknown_kids(
    jwks_server: JwksServer, caplog: pytest.LogCaptureFixture
) -> None:
    source = RemoteJwks(jwks_server.url, min_refetch_seconds=0.5)
    v = remote_verifier(source)
    with caplog.at_level(logging.DEBUG):
        v.verify(make_token())
        time.sleep(0.6)
        jwks_server.jwks = {"keys": [jwk_of("RS256", "kid-RS256")]}  # the issuer rotates: new key in, old out
        assert v.verify(make_token("RS256")).subject == "u1"
        assert jwks_server.requests == 2
        assert code_of(make_token(), v) == "unknown_key"  # the retired key no longer verifies
        flood = [make_token(kid=f"random-{index}") for index in range(50)]
        for token in flood:
            assert code_of(token, v) == "unknown_key"
        assert jwks_server.requests == 2  # the last fetch was < 0.5 s ago: no request at all
        time.sleep(0.6)
        for token in flood:
            assert code_of(token, v) == "unknown_key"
        assert jwks_server.requests == 3  # one refetch for the whole flood
    assert all(token not in caplog.text for token in flood)


def test_remote_jwks_keeps_cached_keys_while_the_issuer_is_down(jwks_server: JwksServer) -> None:
    source = RemoteJwks(jwks_server.url, cache_seconds=1, min_refetch_seconds=0, max_stale_seconds=1.5)
    v = remote_verifier(source)
    v.verify(make_token())
    jwks_server.status, jwks_server.body = 503, b"maintenance"
    time.sleep(1.1)
    assert v.verify(make_token()).subject == "u1"  # stale but within max_stale_seconds
    assert jwks_server.requests == 2
    time.sleep(1.5)
    assert code_of(make_token(), v) == "jwks_unavailable"  # too stale to trust any longer
    jwks_server.status, jwks_server.body = 200, None
    assert v.verify(make_token()).subject == "u1"  # the issuer is back


@pytest.mark.parametrize(
    ("status", "body", "location"),
    [
        (500, b"oops", None),
        (200, b"<html>login</html>", None),
        (200, b'{"keys": "nope"}', None),
        (200, b"[]", None),
        (302, b"", "https://evil.example/jwks"),
        (200, b'{"keys": [], "pad": "' + b"x" * 2_000_000 + b'"}', None),
    ],
)
def test_remote_jwks_bad_answers_are_unavailable(
    jwks_server: JwksServer, status: int, body: bytes, location: str | None
) -> None:
    jwks_server.status, jwks_server.body, jwks_server.location = status, body, location
    v = remote_verifier(RemoteJwks(jwks_server.url))
    assert code_of(make_token(), v) == "jwks_unavailable"
    # Within min_refetch_seconds the failure is remembered instead of asking the issuer again.
    assert code_of(make_token(), v) == "jwks_unavailable"
    assert jwks_server.requests == 1


def test_unreachable_jwks_url() -> None:
    v = remote_verifier(RemoteJwks("http://127.0.0.1:1/jwks", timeout_s=1))
    with pytest.raises(AuthError) as caught:
        v.verify(make_token())
    assert caught.value.code == "jwks_unavailable"
    assert "127.0.0.1:1/jwks" in caught.value.detail and "ConnectError" in caught.value.detail


def test_remote_jwks_url_rules() -> None:
    with pytest.raises(ValueError, match="plain http"):
        RemoteJwks("http://idp.example.org/jwks")
    RemoteJwks("http://idp.internal/jwks", allow_insecure_http=True)
    RemoteJwks("https://idp.example.org/realms/x/protocol/openid-connect/certs")
    RemoteJwks("http://localhost:8080/jwks")
    with pytest.raises(ValueError, match="https"):
        RemoteJwks("ftp://idp.example.org/jwks")
    with pytest.raises(ValueError):
        RemoteJwks("https://idp.example.org/jwks", cache_seconds=0)


def test_remote_jwks_messages_hide_url_credentials() -> None:
    source = RemoteJwks("http://user:s3cret@127.0.0.1:1/jwks?token=abc", timeout_s=1)
    with pytest.raises(AuthError) as caught:
        remote_verifier(source).verify(make_token())
    assert "s3cret" not in caught.value.detail and "token=abc" not in caught.value.detail
