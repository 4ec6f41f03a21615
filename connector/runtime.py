"""Builds the running connector's parts from the settings, once, for the API and the CLI alike.

Callers get parts by interface; only this module knows which implementation the settings chose.
It must never start serving anything: it only assembles and checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from connector.audit.heads import HeadsFile, Witness
from connector.audit.log import AuditLog
from connector.crypto.keystore import SealedFileKeyStore, decode_master_key, load_master_key
from connector.crypto.signing import ConnectorSigningKey
from connector.dataspace.trust import TrustList, TrustListFile
from connector.db.engine import DatabaseUnavailable, check_database, make_engine, session_factory
from connector.db.migrate import current_revision, head_revision, upgrade
from connector.identity.dev_issuer import DevIssuer
from connector.identity.jwks import RemoteJwks, StaticJwks, load_jwks_file
from connector.identity.verifier import TokenVerifier, TrustedIssuer
from connector.policy.bundle import default_policies_dir
from connector.policy.engine import EmbeddedOpaBackend, PolicyBackend
from connector.policy.permits import DevPermitIssuer, PermitVerifier
from connector.policy.service import ActivationGuard, PolicyService
from connector.settings import IssuerSettings, Settings
from connector.storage.objects import LocalObjectStore, ObjectStore


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    objects: ObjectStore
    signing_key: ConnectorSigningKey
    audit: AuditLog
    verifier: TokenVerifier
    dev_issuer: DevIssuer | None
    keys: SealedFileKeyStore  # opened at start: a wrong master key stops everything, clearly
    permit_issuer: DevPermitIssuer | None  # the development HDAB, in development mode only
    trust_file: TrustListFile  # the data space's participants (peer connectors), re-read on change
    _policy: PolicyService | None = field(default=None, repr=False)

    @property
    def trust(self) -> TrustList:
        return self.trust_file.current()

    @property
    def policy(self) -> PolicyService:
        # The engine loads on first use, so commands that decide nothing start fast.
        if self._policy is None:
            self._policy = policy_service(self)
        return self._policy

    def close(self) -> None:
        self.audit.close()  # gives a pending witness push a moment before the process goes
        self.engine.dispose()


def _jwks(item: IssuerSettings) -> RemoteJwks | StaticJwks:
    if item.jwks_url:
        return RemoteJwks(item.jwks_url, allow_insecure_http=item.allow_insecure_http)
    assert item.jwks_file is not None  # IssuerSettings holds exactly one of jwks_url and jwks_file
    return load_jwks_file(item.jwks_file)


def _issuers(items: list[IssuerSettings]) -> list[TrustedIssuer]:
    return [
        TrustedIssuer(
            issuer=item.issuer,
            jwks=_jwks(item),
            roles_claim=item.roles_claim,
            algorithms=tuple(item.algorithms),
        )
        for item in items
    ]


def trusted_issuers(
    settings: Settings, dev_issuer: DevIssuer | None, signing_key: ConnectorSigningKey | None = None
) -> list[TrustedIssuer]:
    issuers = _issuers(settings.trusted_issuers)
    if signing_key is not None:
        # The job tokens a ComputeToData transfer hands a peer are signed by this connector itself
        # and bound to the agreement (connector.dataspace.access_tokens).
        own = {**signing_key.public_jwk, "kid": signing_key.key_id, "alg": "EdDSA", "use": "sig"}
        issuers.append(
            TrustedIssuer(
                settings.connector_id,
                StaticJwks({"keys": [own]}, "this connector's key"),
                algorithms=("EdDSA",),
            )
        )
    if dev_issuer is not None:
        issuers.append(dev_issuer.trusted_issuer())
    return issuers


def open_database(settings: Settings) -> Engine:
    """Connect, and bring the schema to the current revision (or say how to)."""
    engine = make_engine(settings.effective_database_url)
    check_database(engine)
    if settings.auto_migrate:
        upgrade(engine)
    elif current_revision(engine) != head_revision():
        raise DatabaseUnavailable(
            f"the database schema is at revision {current_revision(engine)}, this connector needs "
            f"{head_revision()}: run `connector db upgrade`"
        )
    return engine


def build_runtime(settings: Settings) -> Runtime:
    """Assemble every part; raises DatabaseUnavailable or KeyFileError with a readable message."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    engine = open_database(settings)
    sessions = session_factory(engine)
    # Opening the key store at start makes a wrong master key fail here, clearly, before anything runs.
    keys = open_key_store(settings)
    signing_key = ConnectorSigningKey(Ed25519PrivateKey.from_private_bytes(keys.signing_seed()))
    dev_issuer = (
        DevIssuer.load_or_create(settings.keys_dir / "dev-issuer", settings.dev_issuer_id, settings.audience)
        if settings.dev_issuer_enabled
        else None
    )
    verifier = TokenVerifier(
        trusted_issuers(settings, dev_issuer, signing_key),
        audience=settings.audience,
        leeway_seconds=settings.token_leeway_seconds,
        max_lifetime_seconds=settings.token_max_lifetime_seconds,
    )
    audit = AuditLog(
        sessions,
        signing_key,
        settings.connector_id,
        settings.audit_checkpoint_every,
        checkpoint_seconds=settings.audit_checkpoint_seconds,
        # The signed heads also live outside the database, where a DBA cannot rewrite them unseen.
        heads_file=HeadsFile(
            settings.audit_heads_file or settings.data_dir / "audit" / "heads.jsonl", settings.connector_id
        ),
        witness=(
            Witness(settings.audit_witness_url, settings.connector_id) if settings.audit_witness_url else None
        ),
    )
    dev_hdab = settings.keys_dir / "dev-hdab"
    permit_issuer = DevPermitIssuer.load_or_create(dev_hdab) if settings.dev_issuer_enabled else None
    return Runtime(
        settings,
        engine,
        sessions,
        object_store(settings),
        signing_key,
        audit,
        verifier,
        dev_issuer,
        keys,
        permit_issuer,
        TrustListFile(settings.trust_list_file),
    )


def policy_backend(settings: Settings) -> PolicyBackend:
    """The embedded OPA engine, or the OPA server the settings name."""
    if settings.policy_backend == "opa-server":
        from connector.policy.opa_server import OpaServerBackend

        assert settings.opa_url  # checked by Settings
        token = settings.opa_token.get_secret_value() if settings.opa_token else None
        return OpaServerBackend(settings.opa_url, token=token, timeout=settings.opa_timeout_seconds)
    return EmbeddedOpaBackend()


def policy_service(runtime: Runtime) -> PolicyService:
    settings = runtime.settings
    hdabs = _issuers(settings.hdab_issuers)
    if runtime.permit_issuer is not None:
        hdabs.append(runtime.permit_issuer.trusted_issuer())
    return PolicyService(
        runtime.sessions,
        runtime.engine,
        runtime.audit,
        policy_backend(settings),
        PermitVerifier(hdabs, leeway_seconds=settings.token_leeway_seconds),
        settings.policies_dir or default_policies_dir(),
        settings.policy_refresh_seconds,
        guard=ActivationGuard(
            four_eyes=not settings.dev_issuer_enabled,
            min_coverage=settings.policy_min_coverage,
            eval_timeout=settings.policy_eval_timeout_seconds,
        ),
    )


def object_store(settings: Settings) -> ObjectStore:
    """The object store the settings choose: a local folder, or MinIO / any S3."""
    if settings.object_store == "s3":
        from connector.storage.s3 import S3ObjectStore

        assert (
            settings.s3_endpoint and settings.s3_access_key and settings.s3_secret_key
        )  # checked by Settings
        return S3ObjectStore(
            settings.s3_endpoint,
            settings.s3_access_key,
            settings.s3_secret_key.get_secret_value(),
            settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
    return LocalObjectStore(settings.effective_objects_dir)


def open_key_store(settings: Settings) -> SealedFileKeyStore:
    """The embedded key store, sealed by the master key (setting, environment or 0600 file)."""
    if settings.master_key is not None:
        master = decode_master_key(settings.master_key.get_secret_value())
    else:
        # The embedded default keeps the master key in a 0600 file; production passes
        # CONNECTOR_MASTER_KEY from a secret manager or points master_key_file at another volume.
        master = load_master_key(file=settings.effective_master_key_file, create_if_missing=True, environ={})
    return SealedFileKeyStore(settings.keys_dir / "keystore.sealed", master)
