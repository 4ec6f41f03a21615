"""Every setting of the connector, with its embedded default.

Values come, highest priority first, from keyword arguments, `CONNECTOR_*` environment variables
and a TOML file (`connector --config FILE` or `CONNECTOR_CONFIG`). Unknown keys and bad values stop
start-up with a message naming the key. This module must never print a secret: use `masked()`.
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)
from sqlalchemy.engine import make_url

from catalog.publish import RemoteCatalog

ENV_PREFIX = "CONNECTOR_"
CONFIG_ENV = "CONNECTOR_CONFIG"


def default_data_dir() -> Path:
    """The per-user data directory (XDG), so that a bare `connector serve` works anywhere."""
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "imaging-connector"


class SettingsError(Exception):
    """The configuration is unusable; the message names the offending key."""


class IssuerSettings(BaseModel):
    """An identity provider whose bearer tokens the connector accepts (the hospital's OIDC, an HDAB)."""

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(min_length=1, description="The exact `iss` claim of its tokens.")
    jwks_url: str | None = Field(
        default=None, description="Where its JWKS is published (https in production)."
    )
    jwks_file: Path | None = Field(default=None, description="A JWKS file, for offline or pinned keys.")
    allow_insecure_http: bool = Field(
        default=False, description="Accept a plain-http jwks_url (an internal IdP on a trusted network)."
    )
    roles_claim: str = Field(
        default="roles", description="Dotted path to the roles claim, e.g. realm_access.roles."
    )
    algorithms: list[Literal["RS256", "ES256", "EdDSA"]] = Field(default=["RS256", "ES256", "EdDSA"])

    @field_validator("jwks_file")
    @classmethod
    def _jwks_file_exists(cls, value: Path | None) -> Path | None:
        if value is not None and not value.is_file():
            raise ValueError(f"JWKS file {value} does not exist")
        return value

    @model_validator(mode="after")
    def _one_key_source(self) -> IssuerSettings:
        if (self.jwks_url is None) == (self.jwks_file is None):
            raise ValueError(f"issuer {self.issuer!r} needs exactly one of jwks_url or jwks_file")
        return self


class CatalogTargetSettings(BaseModel):
    """A remote catalog that `connector publish DATASET --to NAME` pushes dataset records to."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-z0-9][a-z0-9-]{0,39}$", description="What `--to` calls it.")
    url: str = Field(pattern=r"^https?://", description="Base URL of the remote catalog's API.")
    kind: Literal["healthdata-eu", "eucaim"] = Field(
        description="healthdata-eu: a HealthData@EU-style national node; eucaim: a EUCAIM-style catalog."
    )
    media_type: Literal["text/turtle", "application/ld+json"] = "text/turtle"
    token: SecretStr | None = Field(default=None, description="Bearer token the remote expects.")
    username: str | None = Field(default=None, description="HTTP basic user (with password).")
    password: SecretStr | None = None
    timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    retries: int = Field(default=3, ge=1, le=10, description="Attempts per push (network errors, 429, 5xx).")

    backoff_seconds: float = Field(default=0.5, ge=0, le=60, description="First wait between attempts.")

    @model_validator(mode="after")
    def _usable(self) -> CatalogTargetSettings:
        # The publisher's own checks (https for credentials, no credentials in the URL...) run at
        # start-up, so a bad target stops the connector here rather than at the first push.
        self.remote()
        return self

    def remote(self) -> RemoteCatalog:
        return RemoteCatalog(
            name=self.name,
            url=self.url,
            kind=self.kind,
            media_type=self.media_type,
            token=self.token.get_secret_value() if self.token else "",
            username=self.username or "",
            password=self.password.get_secret_value() if self.password else "",
            timeout_seconds=self.timeout_seconds,
            retries=self.retries,
            backoff_seconds=self.backoff_seconds,
        )


class Settings(BaseSettings):
    """The effective configuration. Paths left unset derive from `data_dir`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", env_nested_delimiter="__")

    data_dir: Path = Field(
        default_factory=default_data_dir, description="Holds the database, objects and keys."
    )
    database_url: SecretStr | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file in data_dir. postgresql+psycopg://..."
    )
    objects_dir: Path | None = Field(default=None, description="Object folder; default: data_dir/objects.")
    auto_migrate: bool = Field(default=True, description="Apply database migrations at start-up.")

    host: str = Field(default="127.0.0.1", description="Address `connector serve` binds to.")
    port: int = Field(default=8600, ge=1, le=65535)
    api_max_body_bytes: int = Field(
        default=1_048_576, ge=1024, description="Largest JSON body the API accepts."
    )
    api_max_json_depth: int = Field(
        default=64, ge=4, le=512, description="Deepest nesting of arrays and objects a JSON body may have."
    )
    public_url: str = Field(
        default="http://127.0.0.1:8600", description="How peers and researchers reach us."
    )

    connector_id: str = Field(default="urn:connector:example-hospital", min_length=1)
    organisation: str = Field(default="Example University Hospital", min_length=1)
    country: str = Field(
        default="BE", pattern=r"^[A-Z]{2}$", description="ISO 3166-1 alpha-2 of the hospital."
    )

    audience: str = Field(default="imaging-connector", min_length=1, description="Required `aud` of tokens.")
    trusted_issuers: list[IssuerSettings] = Field(default_factory=list)
    dev_issuer_enabled: bool = Field(
        default=True,
        description="Development mode: trust tokens and data permits of the embedded development issuers.",
    )
    dev_issuer_id: str = Field(default="urn:connector:dev-issuer", min_length=1)
    token_leeway_seconds: int = Field(default=60, ge=0, le=300, description="Clock skew allowed (bounded).")
    token_max_lifetime_seconds: int = Field(default=86400, ge=60, le=7 * 86400)

    object_store: Literal["local", "s3"] = Field(default="local", description="Where encrypted objects live.")
    s3_endpoint: str | None = Field(default=None, description="host:port of MinIO or any S3 (no scheme).")
    s3_access_key: str | None = None
    s3_secret_key: SecretStr | None = None
    s3_bucket: str = Field(default="imaging-connector", min_length=3, max_length=63)
    s3_secure: bool = Field(default=True, description="HTTPS to the S3 endpoint.")
    s3_region: str | None = None
    master_key: SecretStr | None = Field(
        default=None, description="Base64 or hex 256-bit key sealing the key store (CONNECTOR_MASTER_KEY)."
    )
    master_key_file: Path | None = Field(
        default=None, description="0600 file holding the master key; default: data_dir/keys/master.key."
    )

    audit_checkpoint_every: int = Field(default=100, ge=1, le=100_000)
    audit_checkpoint_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="A record this long after the last signed checkpoint signs one; `serve` also signs a "
        "moved head this often.",
    )
    audit_heads_file: Path | None = Field(
        default=None,
        description="Append-only copy of every signed checkpoint outside the database; default: "
        "data_dir/audit/heads.jsonl.",
    )
    audit_witness_url: str | None = Field(
        default=None,
        pattern=r"^https?://\S+$",
        description="Optional remote witness: each signed checkpoint is POSTed here as JSON, never blocking.",
    )

    policy_backend: Literal["embedded", "opa-server"] = Field(
        default="embedded", description="Where Rego runs: in-process OPA, or an OPA server (sidecar)."
    )
    opa_url: str | None = Field(default=None, description="The OPA server, e.g. http://127.0.0.1:8181.")
    opa_token: SecretStr | None = Field(default=None, description="Bearer token for the OPA server.")
    opa_timeout_seconds: float = Field(default=2.0, gt=0, le=60)
    policies_dir: Path | None = Field(
        default=None, description="Policy bundle activated on first start; default: the shipped policies/."
    )
    deid_recipes_dir: Path | None = Field(
        default=None,
        description="Folder of the de-identification recipes (basic_profile.deid, safe_attributes.deid, "
        "options/*.deid) that `deid` and `ingest` compile; default: the shipped deid_recipes/.",
    )
    policy_refresh_seconds: float = Field(
        default=2.0,
        ge=0,
        le=300,
        description="How often a process re-reads the active policy version and revoked permits.",
    )
    policy_min_coverage: float = Field(
        default=0.8,
        ge=0,
        le=1,
        description="Share of Rego policy lines a bundle's own tests must cover before it may be activated.",
    )
    policy_eval_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        le=600,
        description="Deadline for evaluating a draft bundle (policy check, test, diff, activation checks).",
    )
    hdab_issuers: list[IssuerSettings] = Field(
        default_factory=list, description="Health Data Access Bodies whose signed data permits are trusted."
    )

    catalog_targets: list[CatalogTargetSettings] = Field(
        default_factory=list, description="Remote catalogs (national node, EUCAIM) records are pushed to."
    )
    catalog_page_size: int = Field(default=50, ge=1, le=500, description="Datasets per /catalog page.")

    compute_device: Literal["auto", "cpu", "cuda"] = Field(
        default="auto", description="Where job models run: CUDA when present (auto), or forced."
    )
    embedded_worker: bool = Field(
        default=True, description="`connector serve` also runs a job worker (else run `connector worker`)."
    )
    worker_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    executor: Literal["local", "ray"] = Field(
        default="local", description="Where workers run claimed jobs: here, or on a Ray cluster."
    )
    ray_address: str | None = Field(
        default=None, description='The Ray cluster ("ray://head:10001", "auto"); unset: a local Ray.'
    )
    ray_gpus_per_job: float = Field(default=0.0, ge=0, le=16, description="GPUs a job asks Ray for.")
    job_memory_bytes: int = Field(
        default=6 << 30, ge=256 << 20, description="Address space of a job's model process (CPU)."
    )
    job_seconds: float = Field(default=3600.0, gt=0, le=7 * 86400, description="Wall time of one job.")
    job_package_max_bytes: int = Field(
        default=256 << 20, ge=1 << 20, le=4 << 30, description="Largest model package accepted."
    )
    sandbox_bwrap: str = Field(
        default="bwrap",
        min_length=1,
        description="The bubblewrap executable confining a job's model process (a name on PATH or a path).",
    )
    sandbox_accept_weaker_isolation: list[
        Literal["user", "mount", "pid", "ipc", "uts", "network", "no_new_privs", "seccomp", "rlimits"]
    ] = Field(
        default_factory=list,
        description=(
            "Layers of the model process's isolation the DPO accepts missing on this machine (bubblewrap's "
            "user, mount, pid, ipc, uts namespaces; network; no_new_privs; the seccomp filter; rlimits). "
            "Empty (the default): a job whose model cannot get every layer fails with isolation_unavailable."
        ),
    )

    trust_list_file: Path | None = Field(
        default=None,
        description="The data space's trust list (JSON): peer connectors' identifiers, keys, countries.",
    )
    dsp_process_timeout_seconds: float = Field(
        default=300.0,
        gt=0,
        le=7 * 86400,
        description="A DSP negotiation or transfer idle this long terminates.",
    )
    dsp_access_token_seconds: int = Field(
        default=3600,
        ge=60,
        le=7 * 86400,
        description="Lifetime of the job token a ComputeToData transfer hands out.",
    )
    dsp_request_timeout_seconds: float = Field(
        default=10.0, gt=0, le=300, description="How long we wait for a peer connector to answer."
    )

    default_patient_id_issuer: str = Field(
        default="",
        max_length=64,
        description="IssuerOfPatientID assumed for a consent or opt-out row that names a patient_id "
        "without an issuer (the hospital's own ids): patients are keyed as `issuer|patient_id`, so it must "
        "equal the issuer the PACS writes. \"\" means \"no issuer\" (files without IssuerOfPatientID).",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["auto", "json", "console"] = Field(
        default="auto",
        description="auto: readable lines when stderr is a terminal, one JSON object a line otherwise "
        "(a service under systemd or in a container); json or console to choose.",
    )

    @field_validator(
        "data_dir", "objects_dir", "policies_dir", "deid_recipes_dir", "trust_list_file", "audit_heads_file"
    )
    @classmethod
    def _absolute(cls, value: Path | None) -> Path | None:
        return value.expanduser().absolute() if value is not None else None

    @field_validator("database_url")
    @classmethod
    def _parseable_url(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            try:
                make_url(value.get_secret_value())
            except Exception as exc:  # sqlalchemy raises ArgumentError; the text may hold the password
                raise ValueError("not a valid SQLAlchemy database URL") from exc
        return value

    # Derived values: one place decides where things live.
    @property
    def effective_database_url(self) -> str:
        if self.database_url is not None:
            return self.database_url.get_secret_value()
        return f"sqlite:///{self.data_dir / 'connector.db'}"

    @property
    def effective_objects_dir(self) -> Path:
        return self.objects_dir or self.data_dir / "objects"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def effective_master_key_file(self) -> Path:
        return self.master_key_file or self.keys_dir / "master.key"

    @model_validator(mode="after")
    def _unique_catalog_targets(self) -> Settings:
        names = [target.name for target in self.catalog_targets]
        if len(names) != len(set(names)):
            raise ValueError("catalog_targets: each target needs its own name")
        return self

    @model_validator(mode="after")
    def _opa_url_given(self) -> Settings:
        if self.policy_backend == "opa-server" and not self.opa_url:
            raise ValueError("policy_backend = 'opa-server' needs opa_url")
        return self

    @model_validator(mode="after")
    def _s3_complete(self) -> Settings:
        if self.object_store == "s3" and not (self.s3_endpoint and self.s3_access_key and self.s3_secret_key):
            raise ValueError("object_store = 's3' needs s3_endpoint, s3_access_key and s3_secret_key")
        return self

    def masked(self) -> dict[str, Any]:
        """The effective settings as plain data, with every secret masked (for `config show`)."""
        data = self.model_dump(mode="json")
        data["database_url"] = make_url(self.effective_database_url).render_as_string(hide_password=True)
        data["objects_dir"] = str(self.effective_objects_dir)
        return data


def _unknown_environment_keys() -> list[str]:
    known = {ENV_PREFIX + name.upper() for name in Settings.model_fields} | {CONFIG_ENV}
    return sorted(
        key
        for key in os.environ
        if key.startswith(ENV_PREFIX) and key not in known and key.split("__")[0] not in known
    )


def _describe(error: ValidationError) -> str:
    lines = []
    for item in error.errors():
        key = ".".join(str(part) for part in item["loc"]) or "(settings)"
        if item["type"] == "extra_forbidden":
            lines.append(f"unknown setting '{key}'")
        else:
            # Never echo the input: it may be a password or a key.
            lines.append(f"setting '{key}': {item['msg']}")
    return "; ".join(lines)


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Settings from overrides, environment and the TOML file; SettingsError names the bad key."""
    if config_file is None and os.environ.get(CONFIG_ENV):
        config_file = Path(os.environ[CONFIG_ENV])
    unknown = _unknown_environment_keys()
    if unknown:
        raise SettingsError("unknown setting in environment: " + ", ".join(unknown))
    if config_file is not None:
        if not config_file.is_file():
            raise SettingsError(f"config file {config_file} does not exist")
        try:
            with config_file.open("rb") as handle:
                tomllib.load(handle)
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"config file {config_file} is not valid TOML: {exc}") from None

    class _FileSettings(Settings):
        @classmethod
        def settings_customise_sources(
            cls,
            settings_cls: type[BaseSettings],
            init_settings: PydanticBaseSettingsSource,
            env_settings: PydanticBaseSettingsSource,
            dotenv_settings: PydanticBaseSettingsSource,
            file_secret_settings: PydanticBaseSettingsSource,
        ) -> tuple[PydanticBaseSettingsSource, ...]:
            sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
            if config_file is not None:
                sources.append(TomlConfigSettingsSource(settings_cls, toml_file=config_file))
            return tuple(sources)

    try:
        loaded = _FileSettings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_describe(exc)) from None
    return Settings.model_construct(**{name: getattr(loaded, name) for name in Settings.model_fields})
