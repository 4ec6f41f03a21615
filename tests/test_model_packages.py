"""Model packages: safe reading, team signatures against the registry, weights-only loading, dry runs,
and the demo model. Every refusal is checked for its own code or message, and the dangerous ones
(pickles that would run code, path traversal, zip bombs) for not having done anything."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import io
import json
import os
import pickle
import stat
import warnings
import zipfile
from pathlib import Path
from typing import Any

import jwt
import pytest
import safetensors.torch
import torch
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from torch import nn

from connector.compute import demo_model
from connector.compute.manifest import Manifest
from connector.compute.networks import (
    build_network,
    check_model,
    dry_run,
    inspect_torchscript,
    load_model,
    plan_network,
)
from connector.compute.package import (
    ModelPackage,
    PackageError,
    PackageLimits,
    build_package,
    package_digest,
    read_package,
)
from connector.compute.package_signing import (
    KeyRegistryError,
    SignatureError,
    TeamKeyRegistry,
    generate_team_key,
    jwk_thumbprint,
    key_id_of,
    open_signed_package,
    parse_public_key,
    public_jwk,
    sign_package,
    verify_package_signature,
)
from connector.db.base import Base
from connector.db.engine import make_engine, session_factory
from connector.db.migrate import upgrade
from connector.runtime import Runtime

TEAM = "lung-ai-lab"
# TorchScript is deprecated in favour of torch.export, but it is what teams ship today.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")


# --- helpers -------------------------------------------------------------------------------------


def manifest_dict(**changes: Any) -> dict[str, Any]:
    """A small valid "monai" manifest (a tiny 2D ResNet), with top-level `changes` applied."""
    document: dict[str, Any] = {
        "name": "tiny-classifier",
        "version": "1.0.0",
        "framework": "monai",
        "network": {
            "name": "ResNet",
            "parameters": {
                "block": "basic",
                "layers": [1, 1, 1, 1],
                "block_inplanes": [4, 8, 8, 8],
                "num_classes": 2,
                "conv1_t_size": 3,
            },
        },
        "weights": "model.safetensors",
        "input": {"modalities": ["CT"], "dimensions": 2, "spatial_size": [32, 32]},
        "output": {"kind": "classification", "labels": ["no-nodule", "nodule"]},
    }
    document.update(copy.deepcopy(changes))
    return document


def tiny_manifest(**changes: Any) -> Manifest:
    return Manifest.model_validate(manifest_dict(**changes))


def with_parameters(**parameters: Any) -> Manifest:
    document = manifest_dict()
    document["network"]["parameters"].update(parameters)
    return Manifest.model_validate(document)


def weights_for(manifest: Manifest) -> bytes:
    model = build_network(manifest)
    return safetensors.torch.save({key: value.contiguous() for key, value in model.state_dict().items()})


def raw_zip(members: list[tuple[str | zipfile.ZipInfo, bytes]], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    """A zip written member by member, exactly as given (duplicates and odd names included)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about duplicate names, which some tests want
        with zipfile.ZipFile(buffer, "w", compression=method) as archive:
            for name, content in members:
                archive.writestr(name, content)
    return buffer.getvalue()


def package_with(
    extra: list[tuple[str | zipfile.ZipInfo, bytes]], manifest: dict[str, Any] | None = None
) -> bytes:
    document = manifest or manifest_dict()
    return raw_zip([("manifest.json", json.dumps(document).encode()), *extra])


def refusal(data: bytes | Path, limits: PackageLimits | None = None) -> str:
    with pytest.raises(PackageError) as caught:
        read_package(data, limits or PackageLimits())
    return str(caught.value)


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def raw_jws(header: dict[str, Any], claims: dict[str, Any], signature: bytes = b"") -> str:
    return ".".join(
        (b64url(json.dumps(header).encode()), b64url(json.dumps(claims).encode()), b64url(signature))
    )


def scripted_archive(module: nn.Module) -> bytes:
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(module), buffer)
    return buffer.getvalue()


def replace_member(archive: bytes, suffix: str, content: bytes) -> bytes:
    """The same zip with the member ending in `suffix` replaced by `content`."""
    source = zipfile.ZipFile(io.BytesIO(archive))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as target:
        for info in source.infolist():
            target.writestr(info, content if info.filename.endswith(suffix) else source.read(info))
    return buffer.getvalue()


def torchscript_package(archive: bytes, labels: int = 2) -> ModelPackage:
    document = manifest_dict(framework="torchscript", weights="model.pt")
    del document["network"]
    document["output"]["labels"] = [f"class-{index}" for index in range(labels)]
    return read_package(build_package(Manifest.model_validate(document), archive))


class TinyClassifier(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.conv(x).mean(dim=(2, 3)))


@pytest.fixture
def registry(runtime: Runtime) -> TeamKeyRegistry:
    return TeamKeyRegistry(runtime.sessions)


@pytest.fixture
def team_key(registry: TeamKeyRegistry) -> tuple[bytes, str]:
    """A registered EdDSA key of TEAM: (private PEM, key id)."""
    private_pem, public_pem = generate_team_key("EdDSA")
    return private_pem, registry.register(TEAM, public_pem, "dpo-alice")


@pytest.fixture(scope="module")
def tiny_package() -> bytes:
    manifest = tiny_manifest()
    return build_package(manifest, weights_for(manifest), readme="# tiny\n")


def signature_code(package: bytes, token: str | None, registry: TeamKeyRegistry) -> str:
    with pytest.raises(SignatureError) as caught:
        verify_package_signature(package, token, registry)
    return caught.value.code


# --- a valid package -----------------------------------------------------------------------------


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_signed_package_verifies_loads_and_passes_the_dry_run(
    registry: TeamKeyRegistry, tiny_package: bytes, alg: str
) -> None:
    private_pem, public_pem = generate_team_key(alg)
    key_id = registry.register(TEAM, public_pem, "dpo-alice")
    token = sign_package(tiny_package, private_pem, TEAM, key_id, expires_in=3600)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == alg and header["kid"] == key_id

    signed = verify_package_signature(tiny_package, token, registry)
    assert (signed.team, signed.key_id, signed.algorithm) == (TEAM, key_id, alg)
    assert signed.expires_at == signed.issued_at + 3600

    package, opened_by = open_signed_package(tiny_package, token, registry)
    assert opened_by == signed
    assert package.digest == package_digest(tiny_package) == hashlib.sha256(tiny_package).hexdigest()
    assert package.size == len(tiny_package) and package.readme == "# tiny\n"
    model = check_model(package)
    assert not model.training
    assert all(parameter.device.type == "cpu" for parameter in model.parameters())
    assert dry_run(model, package.manifest) == [1, 2]
    # The loaded weights are the package's, not a fresh initialisation.
    stored = safetensors.torch.load(package.weights)
    assert all(torch.equal(stored[key], value) for key, value in model.state_dict().items())


def test_build_package_is_deterministic_and_reads_back(tmp_path: Path) -> None:
    manifest = tiny_manifest()
    weights = weights_for(manifest)
    first, second = build_package(manifest, weights), build_package(manifest, weights)
    assert first == second
    assert [info.date_time for info in zipfile.ZipFile(io.BytesIO(first)).infolist()] == [
        (1980, 1, 1, 0, 0, 0)
    ] * 2
    path = tmp_path / "package.zip"
    path.write_bytes(first)
    package = read_package(path)
    assert package.manifest == manifest and package.weights == weights
    assert "weights" not in repr(package) and len(repr(package)) < 200


# --- signatures ----------------------------------------------------------------------------------


def test_missing_and_malformed_signatures_are_refused(
    registry: TeamKeyRegistry, tiny_package: bytes, team_key: tuple[bytes, str]
) -> None:
    assert signature_code(tiny_package, None, registry) == "missing_signature"
    assert signature_code(tiny_package, "  ", registry) == "missing_signature"
    for token in ("not-a-jws", "a.b", "a.b.c", "x" * 20_000):
        assert signature_code(tiny_package, token, registry) == "malformed_signature"
    no_kid = raw_jws({"alg": "EdDSA"}, {"digest": package_digest(tiny_package), "team": TEAM, "iat": 1})
    assert signature_code(tiny_package, no_kid, registry) == "malformed_signature"


def test_unknown_key_is_refused(registry: TeamKeyRegistry, tiny_package: bytes) -> None:
    stranger, _ = generate_team_key("EdDSA")
    token = sign_package(tiny_package, stranger, TEAM)
    with pytest.raises(SignatureError) as caught:
        verify_package_signature(tiny_package, token, registry)
    assert caught.value.code == "unknown_key"
    assert "no team key" in caught.value.detail


def test_revoked_key_is_refused_and_stays_revoked(
    registry: TeamKeyRegistry, tiny_package: bytes, team_key: tuple[bytes, str]
) -> None:
    private_pem, key_id = team_key
    token = sign_package(tiny_package, private_pem, TEAM, key_id)
    assert verify_package_signature(tiny_package, token, registry).team == TEAM
    revoked = registry.revoke(key_id, "dpo-bob")
    assert revoked.revoked and revoked.revoked_by == "dpo-bob"
    assert registry.revoke(key_id, "someone-else").revoked_by == "dpo-bob"  # the first revocation stands
    assert signature_code(tiny_package, token, registry) == "revoked_key"
    public_pem = parse_public_key(
        serialization.load_pem_private_key(private_pem, None).public_key()  # type: ignore[arg-type]
    )
    with pytest.raises(KeyRegistryError) as caught:
        registry.register(TEAM, public_pem, "dpo-alice")
    assert caught.value.code == "key_revoked"


def test_none_hmac_and_mismatched_algorithms_are_refused(
    registry: TeamKeyRegistry, tiny_package: bytes, team_key: tuple[bytes, str]
) -> None:
    _, key_id = team_key
    claims = {"digest": package_digest(tiny_package), "team": TEAM, "iat": 1_700_000_000}
    unsigned = raw_jws({"alg": "none", "kid": key_id}, claims)
    assert signature_code(tiny_package, unsigned, registry) == "algorithm_not_allowed"
    # HS256 keyed with the team's public key, which anyone has: the classic key-confusion forgery.
    info = registry.get(key_id)
    assert info is not None
    secret = json.dumps(info.public_jwk).encode()
    signing_input = ".".join(raw_jws({"alg": "HS256", "kid": key_id}, claims).split(".")[:2])
    forged = signing_input + "." + b64url(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())
    assert signature_code(tiny_package, forged, registry) == "algorithm_not_allowed"
    # ES256 claimed for a key registered as EdDSA.
    other_alg = jwt.encode(claims, ec.generate_private_key(ec.SECP256R1()), "ES256", headers={"kid": key_id})
    with pytest.raises(SignatureError) as caught:
        verify_package_signature(tiny_package, other_alg, registry)
    assert caught.value.code == "algorithm_not_allowed"
    assert "registered for EdDSA" in caught.value.detail


def test_a_signature_by_another_key_under_a_registered_kid_is_invalid(
    registry: TeamKeyRegistry, tiny_package: bytes, team_key: tuple[bytes, str]
) -> None:
    _, key_id = team_key
    claims = {"digest": package_digest(tiny_package), "team": TEAM, "iat": 1_700_000_000}
    impostor = jwt.encode(claims, Ed25519PrivateKey.generate(), "EdDSA", headers={"kid": key_id})
    assert signature_code(tiny_package, impostor, registry) == "invalid_signature"


def test_tampered_package_is_a_digest_mismatch(
    registry: TeamKeyRegistry, tiny_package: bytes, team_key: tuple[bytes, str]
) -> None:
    private_pem, key_id = team_key
    token = sign_package(tiny_package, private_pem, TEAM, key_id)
    tampered = bytearray(tiny_package)
    tampered[len(tampered) // 2] ^= 0x01
    with pytest.raises(SignatureError) as caught:
        verify_package_signature(bytes(tampered), token, registry)
    assert caught.value.code == "digest_mismatch"
    assert package_digest(bytes(tampered)) in caught.value.detail


def test_team_in_the_token_must_be_the_keys_team(
    registry: TeamKeyRegistry, tiny_package: bytes, team_key: tuple[bytes, str]
) -> None:
    private_pem, key_id = team_key
    token = sign_package(tiny_package, private_pem, "other-team", key_id)
    with pytest.raises(SignatureError) as caught:
        verify_package_signature(tiny_package, token, registry)
    assert caught.value.code == "team_mismatch"
    assert TEAM in caught.value.detail


def test_expired_signature_is_refused(
    registry: TeamKeyRegistry, tiny_package: bytes, team_key: tuple[bytes, str]
) -> None:
    private_pem, key_id = team_key
    token = sign_package(tiny_package, private_pem, TEAM, key_id, issued_at=1_700_000_000, expires_in=60)
    assert signature_code(tiny_package, token, registry) == "signature_expired"


def test_sign_package_refuses_a_key_id_that_is_not_the_keys() -> None:
    private_pem, _ = generate_team_key("EdDSA")
    with pytest.raises(ValueError, match="not this key's id"):
        sign_package(b"zip", private_pem, TEAM, "made-up-kid")


# --- the key registry ----------------------------------------------------------------------------


def test_key_id_is_the_rfc7638_thumbprint() -> None:
    # RFC 8037 appendix A.3: the thumbprint of its example Ed25519 key.
    jwk = {"crv": "Ed25519", "kty": "OKP", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
    assert jwk_thumbprint(jwk) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"
    assert key_id_of(parse_public_key(jwk)) == "kPrK_qmxVWaYVA9wwBF6Iuo3vVzz7TxHCTwXBygrS4k"


def test_registry_registers_pem_and_jwk_alike_and_keeps_teams_apart(registry: TeamKeyRegistry) -> None:
    private_pem, public_pem = generate_team_key("ES256")
    key_id = registry.register(TEAM, public_pem, "dpo-alice")
    jwk = public_jwk(parse_public_key(public_pem))
    assert registry.register(TEAM, json.dumps(jwk), "dpo-alice") == key_id  # the same key: a no-op
    assert registry.register(TEAM, jwk, "dpo-alice") == key_id
    with pytest.raises(KeyRegistryError) as caught:
        registry.register("other-team", public_pem, "dpo-alice")
    assert caught.value.code == "key_of_other_team"
    info = registry.get(key_id)
    assert info is not None and info.algorithm == "ES256" and info.public_jwk == jwk and not info.revoked
    assert "d" not in info.public_jwk
    second = registry.register("other-team", generate_team_key("EdDSA")[1], "dpo-alice")
    assert [key.key_id for key in registry.list()] == [key_id, second]
    assert [key.key_id for key in registry.list(team="other-team")] == [second]
    registry.revoke(second, "dpo-bob")
    assert [key.key_id for key in registry.list(include_revoked=False)] == [key_id]
    assert registry.get("nope") is None

    with pytest.raises(KeyRegistryError) as caught:
        registry.register(TEAM, private_pem, "dpo-alice")
    assert caught.value.code == "private_key"
    with pytest.raises(KeyRegistryError) as caught:
        registry.register(TEAM, {**jwk, "d": "c2VjcmV0"}, "dpo-alice")
    assert caught.value.code == "private_key"
    rsa_pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    with pytest.raises(KeyRegistryError) as caught:
        registry.register(TEAM, rsa_pem, "dpo-alice")
    assert caught.value.code == "unsupported_key"
    with pytest.raises(KeyRegistryError) as caught:
        registry.register(TEAM, {**jwk, "y": jwk["x"][:-4] + "AAAA"}, "dpo-alice")  # not on the curve
    assert caught.value.code == "invalid_key"
    with pytest.raises(KeyRegistryError) as caught:
        registry.register("../etc", public_pem, "dpo-alice")
    assert caught.value.code == "invalid_team"
    with pytest.raises(KeyRegistryError) as caught:
        registry.revoke("nope", "dpo-bob")
    assert caught.value.code == "unknown_key"


def test_team_keys_migration_matches_the_model_and_the_registry_works(database_url: str) -> None:
    engine = make_engine(database_url)
    upgrade(engine)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
        assert [difference for difference in differences if "team_keys" in repr(difference)] == []
        registry = TeamKeyRegistry(session_factory(engine))
        key_id = registry.register(TEAM, generate_team_key("ES256")[1], "dpo-alice")
        assert registry.revoke(key_id, "dpo-bob").revoked
        assert [(key.team, key.key_id, key.revoked) for key in registry.list()] == [(TEAM, key_id, True)]
    finally:
        engine.dispose()


# --- the zip container ---------------------------------------------------------------------------


def test_path_traversal_absolute_and_duplicate_names_are_refused() -> None:
    weights = b"\x00" * 8
    message = refusal(package_with([("model.safetensors", weights), ("../evil", b"x")]))
    assert "'../evil'" in message and "path traversal" in message
    assert "absolute path" in refusal(package_with([("model.safetensors", weights), ("/etc/cron.d/x", b"x")]))
    assert "backslash" in refusal(package_with([("model.safetensors", weights), ("..\\evil", b"x")]))
    duplicated = package_with([("model.safetensors", weights), ("model.safetensors", b"other")])
    assert "more than once" in refusal(duplicated)


def test_symlinks_and_unexpected_members_are_refused() -> None:
    link = zipfile.ZipInfo("README.md")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    message = refusal(package_with([("model.safetensors", b"w"), (link, b"/etc/passwd")]))
    assert "symbolic link" in message
    message = refusal(package_with([("model.safetensors", b"w"), ("train.py", b"import os")]))
    assert "'train.py' is not allowed" in message
    assert "weights file 'model.safetensors' named by the manifest is missing" in refusal(package_with([]))
    assert "no manifest.json" in refusal(raw_zip([("model.safetensors", b"w")]))


def test_zip_bomb_and_size_limits_are_refused_before_decompression() -> None:
    bomb = package_with([("model.safetensors", bytes(16 << 20))])  # 16 MiB of zeros, a few KiB zipped
    assert len(bomb) < 100_000
    message = refusal(bomb)
    assert "zip bomb" in message and "would expand" in message
    small = PackageLimits(max_package_bytes=4096)
    manifest = tiny_manifest()
    real = build_package(manifest, weights_for(manifest))
    assert "at most 4096 are accepted" in refusal(real, small)
    assert "at most 1000 in all" in refusal(real, PackageLimits(max_total_bytes=1000))
    message = refusal(real, PackageLimits(max_weights_bytes=1000))
    assert "member 'model.safetensors' declares" in message and "at most 1000" in message


def test_too_many_members_are_refused_from_the_directory_record() -> None:
    crowded = raw_zip([(f"file-{index}.txt", b"x") for index in range(50)])
    assert "declares 50 members; at most 8" in refusal(crowded)


def test_not_a_zip_and_polyglots_are_refused() -> None:
    assert "not a zip archive" in refusal(b"#!/bin/sh\nrm -rf /\n")
    manifest = tiny_manifest()
    real = build_package(manifest, weights_for(manifest))
    assert "not a zip archive" in refusal(b"GIF89a" + real)
    assert "not a readable zip archive" in refusal(real[: len(real) // 2])


# --- the manifest --------------------------------------------------------------------------------


def test_manifest_problems_are_named_without_echoing_values() -> None:
    document = manifest_dict(bogus=1, name="A" * 20_000)
    document["network"]["parameters"]["act"] = {"nested": "dict"}
    document["input"]["spatial_size"] = [32, 32, 32]
    message = refusal(package_with([("model.safetensors", b"w")], document))
    assert "bogus: is not a known field" in message
    assert "name: String should match pattern" in message
    assert "network.parameters.'act': must be a number" in message
    assert "input: spatial_size needs 2 numbers for 2D input" in message
    assert "AAAAAAAAAA" not in message and len(message) < 2000
    huge = manifest_dict(description="x" * 100_000)
    assert "'manifest.json' declares 100" in refusal(package_with([("model.safetensors", b"w")], huge))


def test_manifest_with_duplicate_keys_or_bad_json_is_refused() -> None:
    duplicated = b'{"name": "a", "name": "b"}'
    assert "'name' appears more than once" in refusal(raw_zip([("manifest.json", duplicated)]))
    assert "not valid JSON" in refusal(raw_zip([("manifest.json", b"{nope")]))


def test_pickled_weights_are_refused() -> None:
    # Under "monai" a .pt file is refused by the manifest before anything is read...
    document = manifest_dict(weights="model.pt")
    message = refusal(package_with([("model.pt", pickle.dumps({"w": [1.0]}))], document))
    assert "takes its weights as .safetensors" in message
    # ...and a pickle renamed to .safetensors is refused by the safetensors parser, never unpickled.
    buffer = io.BytesIO()
    torch.save(build_network(tiny_manifest()).state_dict(), buffer)
    package = read_package(build_package(tiny_manifest(), buffer.getvalue()))
    with pytest.raises(PackageError, match="not a readable safetensors file"):
        load_model(package)


# --- networks ------------------------------------------------------------------------------------


def test_network_parameters_are_checked_against_the_class_and_the_input_spec() -> None:
    with pytest.raises(PackageError, match=r"spatial_dims=3 disagrees with the input spec \(2D\)"):
        plan_network(with_parameters(spatial_dims=3))
    with pytest.raises(PackageError, match=r"n_input_channels=3 disagrees with the input spec \(1 channel"):
        plan_network(with_parameters(n_input_channels=3))
    with pytest.raises(PackageError, match="'bogus_knob' is not a parameter of ResNet"):
        plan_network(with_parameters(bogus_knob=1))
    document = manifest_dict()
    document["network"] = {"name": "DenseNet121", "parameters": {"out_channels": 2, "pretrained": True}}
    with pytest.raises(PackageError, match="'pretrained' may not be set"):
        plan_network(Manifest.model_validate(document))
    # DenseNet121 forwards **kwargs to DenseNet: DenseNet's own parameters are accepted too.
    document["network"]["parameters"] = {
        "out_channels": 2,
        "bn_size": 2,
        "init_features": 4,
        "growth_rate": 4,
    }
    plan = plan_network(Manifest.model_validate(document))
    assert plan.arguments["spatial_dims"] == 2 and plan.arguments["in_channels"] == 1
    document["network"]["parameters"] = {"init_features": 4}
    with pytest.raises(PackageError, match="needs the network parameter"):
        plan_network(Manifest.model_validate(document))


def test_a_huge_network_is_refused_before_it_is_allocated() -> None:
    document = manifest_dict()
    document["network"] = {
        "name": "DenseNet121",
        "parameters": {
            "out_channels": 2,
            "init_features": 2048,
            "growth_rate": 2048,
            "block_config": [8, 8, 8, 8],
        },
    }
    with pytest.raises(PackageError, match=r"holds .* numbers; at most 150,000,000"):
        build_network(Manifest.model_validate(document))
    with pytest.raises(PackageError, match="is beyond"):
        build_network(with_parameters(num_classes=1_000_000))
    with pytest.raises(PackageError, match="more than 64 layers in one stage"):
        build_network(with_parameters(layers=[1000, 1, 1, 1]))


def test_state_dict_with_missing_unexpected_or_misshapen_tensors_is_refused() -> None:
    manifest = tiny_manifest()
    state = build_network(manifest).state_dict()
    missing = {key: value for key, value in state.items() if key != "fc.bias"}
    missing["not.a.layer"] = torch.zeros(1)
    package = read_package(build_package(manifest, safetensors.torch.save(missing)))
    with pytest.raises(PackageError) as caught:
        load_model(package)
    assert "lack 1 tensor(s) the network has: 'fc.bias'" in str(caught.value)
    assert "hold 1 tensor(s) the network lacks: 'not.a.layer'" in str(caught.value)
    wider = with_parameters(block_inplanes=[4, 8, 8, 16])
    package = read_package(build_package(manifest, weights_for(wider)))
    with pytest.raises(PackageError, match=r"wrong shape: 'layer4.0.conv1.weight' is \[16, 8, 3, 3\]"):
        load_model(package)


def test_dry_run_refuses_an_output_the_spec_does_not_describe() -> None:
    three_labels = tiny_manifest(output={"kind": "classification", "labels": ["a", "b", "c"]})
    package = read_package(build_package(three_labels, weights_for(tiny_manifest())))
    model = load_model(package)
    with pytest.raises(PackageError, match=r"returns shape \[1, 2\].*needs \[1, 3\]"):
        dry_run(model, three_labels)
    segmentation = tiny_manifest(output={"kind": "segmentation-statistics", "labels": ["a", "b"]})
    with pytest.raises(PackageError, match=r"needs \[1, 2, 32, 32\]"):
        dry_run(model, segmentation)


def test_a_segmentation_network_passes_its_dry_run() -> None:
    manifest = tiny_manifest(
        network={"name": "BasicUNet", "parameters": {"out_channels": 2, "features": [4, 4, 8, 8, 16, 4]}},
        output={"kind": "segmentation-statistics", "labels": ["background", "nodule"]},
    )
    model = check_model(read_package(build_package(manifest, weights_for(manifest))))
    assert dry_run(model, manifest) == [1, 2, 32, 32]


# --- TorchScript ---------------------------------------------------------------------------------


def test_a_plain_torchscript_package_loads_and_runs() -> None:
    package = torchscript_package(scripted_archive(TinyClassifier()))
    model = check_model(package)
    assert dry_run(model, package.manifest) == [1, 2]


def test_torchscript_with_a_pickle_that_imports_os_system_is_refused_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "pwned"
    payloads = {
        # GLOBAL 'os system', called with a shell command (protocol 0, written by hand).
        "GLOBAL": f"cos\nsystem\n(S'touch {marker}'\ntR.".encode(),
        # STACK_GLOBAL, as pickle writes it for protocol 4 (the module is then 'posix').
        "STACK_GLOBAL": pickle.dumps(_Payload(f"touch {marker}"), protocol=4),
        "builtins.eval": f"cbuiltins\neval\n(S'open({str(marker)!r}, \"w\")'\ntR.".encode(),
    }
    loads: list[object] = []

    def no_load(*args: object, **kwargs: object) -> None:
        loads.append(args)
        raise AssertionError("torch.jit.load must not be reached")

    monkeypatch.setattr(torch.jit, "load", no_load)
    real = scripted_archive(TinyClassifier())
    for kind, payload in payloads.items():
        package = torchscript_package(replace_member(real, "/data.pkl", payload))
        with pytest.raises(PackageError) as caught:
            load_model(package)
        message = str(caught.value)
        assert "not part of TorchScript's tensor format" in message, kind
        assert ("'os.system'" in message) or ("'posix.system'" in message) or ("'builtins.eval'" in message)
    assert loads == []
    assert not marker.exists()


class _Payload:
    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.command,))


def test_torchscript_code_that_reads_or_writes_files_is_refused(tmp_path: Path) -> None:
    class Leaky(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            secret = torch.from_file("/etc/hostname", False, 4, dtype=torch.uint8)
            return x + secret.float().sum()

    written = tmp_path / "dump.pt"

    class Dumper(nn.Module):
        def __init__(self, path: str) -> None:
            super().__init__()
            self.path = path

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            print(x)
            torch.save(x, self.path)
            return x

    with pytest.raises(PackageError, match=r"reads a file \(torch.from_file\)"):
        inspect_torchscript(scripted_archive(Leaky()))
    with pytest.raises(PackageError) as caught:
        load_model(torchscript_package(scripted_archive(Dumper(str(written)))))
    assert "writes a file" in str(caught.value) and "prints" in str(caught.value)
    assert not written.exists()


def test_weights_that_are_not_a_torchscript_archive_are_refused() -> None:
    with pytest.raises(PackageError, match="not a zip archive"):
        load_model(torchscript_package(pickle.dumps({"weights": [1.0]})))
    with pytest.raises(PackageError, match="not a TorchScript archive"):
        load_model(torchscript_package(raw_zip([("x/notes.txt", b"hi")])))


# --- the demo model ------------------------------------------------------------------------------


def test_demo_model_trains_deterministically_and_beats_chance(registry: TeamKeyRegistry) -> None:
    _, first = demo_model.train_demo_model(seed=7, steps=20)
    _, second = demo_model.train_demo_model(seed=7, steps=20)
    assert package_digest(first) == package_digest(second)
    _, other = demo_model.train_demo_model(seed=8, steps=20)
    assert package_digest(other) != package_digest(first)

    private_pem, public_pem = generate_team_key("EdDSA")
    key_id = registry.register("demo-team", public_pem, "dpo-alice")
    package_bytes, token = demo_model.demo_package(private_pem, "demo-team", key_id)
    assert verify_package_signature(package_bytes, token, registry).team == "demo-team"
    package = read_package(package_bytes)
    model = check_model(package)
    images, labels = demo_model.synthetic_examples(200, torch.Generator().manual_seed(12345))
    accuracy = demo_model.accuracy(model, images, labels)
    assert accuracy >= 0.85, accuracy  # chance is 0.5


def test_demo_script_writes_a_package_its_signature_and_the_key_pair(tmp_path: Path) -> None:
    out = tmp_path / "demo"
    assert demo_model.main([str(out)]) == 0
    names = sorted(path.name for path in out.iterdir())
    assert names == ["demo-model.jws", "demo-model.zip", "team-private.pem", "team-public.pem"]
    assert stat.S_IMODE((out / "team-private.pem").stat().st_mode) == 0o600
    public = parse_public_key((out / "team-public.pem").read_bytes())
    token = (out / "demo-model.jws").read_text().strip()
    assert jwt.get_unverified_header(token)["kid"] == key_id_of(public)
    package = (out / "demo-model.zip").read_bytes()
    assert jwt.decode(token, public, algorithms=["EdDSA"])["digest"] == package_digest(package)
    assert demo_model.main([str(out)]) == 1  # the private key file is never overwritten
