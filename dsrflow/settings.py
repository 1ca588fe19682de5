"""Settings: one `dsrflow.yaml` plus `DSRFLOW_*` environment variables (which win).

Secrets never live in the YAML. The token and encryption keys and the certificate signing
key come from the environment (`DSRFLOW_TOKEN_KEY`, `DSRFLOW_ENCRYPTION_KEY`,
`DSRFLOW_SIGNING_KEY`), from Prefect Secret blocks the YAML names (`token_key_block`, ...)
or from a key file the YAML points to. A ledger URL with a password comes from
`DSRFLOW_LEDGER_URL` or a Secret block (`ledger_url_block`); in the YAML it is refused.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from dsrflow.crypto import KeyMaterialError, Keyring, decode_key
from dsrflow.delivery import PackageSettings
from dsrflow.errors import ConfigError as ConfigError  # its old home: many import it here
from dsrflow.gates import DEFAULT_REPEAT_RULES, RepeatRule
from dsrflow.keyfile import SECRET_FIELDS, VerificationKey, read_key_file, retired_signing_keys
from dsrflow.keyfile import add_signing_key as add_signing_key  # re-exported, as above
from dsrflow.keyfile import write_key_file as write_key_file
from dsrflow.model import DEFAULT_PHONE_REGIONS, Regime, RequestType
from dsrflow.queue import QueueSettings
from dsrflow.secret_blocks import BlockName, SecretBlockError, read_secret_block
from dsrflow.signing import decode_public_key, decode_signing_key

CONFIG_ENV = "DSRFLOW_CONFIG"
# The settings a Prefect Secret block may hold, each as `<name>_block: <block name>`.
BLOCK_FIELDS = ("ledger_url", *SECRET_FIELDS)


def _public_key(text: str) -> str:
    decode_public_key(text, "public key")  # KeyMaterialError is a ValueError: pydantic's
    return text.strip()


PublicKeyText = Annotated[str, AfterValidator(_public_key)]


class TaskRunnerSettings(BaseModel):
    """`task_runner:` in dsrflow.yaml."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["threads", "dask"] = "threads"
    max_workers: int | None = Field(
        default=None, ge=1, description="threads: at most this many tasks at once (default: "
        "Prefect's PREFECT_TASK_RUNNER_THREAD_POOL_MAX_WORKERS, else unbounded)"
    )
    dask_address: str | None = Field(
        default=None, description="dask: a running scheduler (tcp://host:8786); unset: a "
        "LocalCluster is started for each run"
    )
    dask_workers: int = Field(default=2, ge=1, description="dask LocalCluster: worker processes")
    dask_threads_per_worker: int = Field(default=1, ge=1, description="dask LocalCluster")

    @model_validator(mode="after")
    def _address_needs_dask(self) -> TaskRunnerSettings:
        # A scheduler address under `kind: threads` would silently run everything in-process.
        if self.dask_address is not None and self.kind != "dask":
            raise ValueError("dask_address is set but kind is not 'dask'")
        return self


class BatchSettings(BaseModel):
    """`batches:` in dsrflow.yaml: how `dsrflow run` and `resume-requests` split a backlog
    into micro-batches, each its own flow run. A batch's memory and the time its first
    request waits for its last both grow with its size; a backlog of ten thousand runs
    as twenty batches instead of one run that holds everything until the end."""

    model_config = ConfigDict(extra="forbid")

    size: int = Field(default=500, ge=1, description="requests per flow run")
    concurrent: int = Field(
        default=2, ge=1,
        description="batches at once in one process (`dsrflow run`, `resume-requests` "
        "without a deployment); a deployment's runs are bounded by its concurrency_limit",
    )

    def split(self, request_ids: Sequence[str]) -> list[list[str]]:
        ids = list(dict.fromkeys(request_ids))
        return [ids[i:i + self.size] for i in range(0, len(ids), self.size)]


SystemLimit = Annotated[int, Field(ge=1, le=1000)]


class LimitSettings(BaseModel):
    """`limits:` in dsrflow.yaml: how many runs at once may work on a system, across every
    worker and `dsrflow serve` that share the Prefect server. Each limited system is a
    Prefect global concurrency limit `dsrflow-system-<name>` (created or updated from
    these settings when a run first needs it); a system task holds one slot of its system's
    limit while it erases, collects or verifies. Systems not named are not limited."""

    model_config = ConfigDict(extra="forbid")

    systems: dict[str, SystemLimit] = Field(
        default_factory=dict,
        description="system name (as in the data map) -> system tasks at once, across workers",
    )
    # Prefect's server accepts 60 s to a day. A worker that dies holding a slot stops
    # renewing it: the slot comes back when its lease runs out (renewed every 3/4 of it).
    lease_seconds: float = Field(
        default=300, ge=60, le=24 * 60 * 60,
        description="how long a dead run keeps a system's slot before Prefect takes it back",
    )


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DSRFLOW_", extra="forbid")

    # Values read from Prefect Secret blocks: private, so never in a dump, repr or schema.
    _from_blocks: dict[str, str] = PrivateAttr(default_factory=dict)

    base_dir: Path = Field(default_factory=Path.cwd, description="where relative paths start")
    ledger_url: str = "sqlite:///.dsrflow/ledger.db"
    datamap: Path = Path("datamap.yaml")
    exports_dir: Path = Path(".dsrflow/exports")
    certificates_dir: Path = Field(
        default=Path(".dsrflow/certificates"), description="signed erasure certificates"
    )
    state_dir: Path = Field(
        default=Path(".dsrflow/state"), description="connectors' checkpoints (log rewrites)"
    )
    prefect_home: Path = Field(
        default=Path(".dsrflow/prefect"),
        description="PREFECT_HOME for embedded runs (unless PREFECT_API_URL is set)",
    )
    ledger_url_block: BlockName | None = Field(
        default=None, description="or: the Prefect Secret block holding the ledger URL (one "
        "with a password belongs there or in DSRFLOW_LEDGER_URL, never in the YAML)",
    )
    key_file: Path | None = None
    token_key: SecretStr | None = None
    encryption_key: SecretStr | None = None
    signing_key: SecretStr | None = Field(
        default=None, description="Ed25519 private key for certificates (base64, 32 bytes)"
    )
    token_key_block: BlockName | None = Field(
        default=None, description="or: the Prefect Secret block holding token_key"
    )
    encryption_key_block: BlockName | None = Field(
        default=None, description="or: the Prefect Secret block holding encryption_key"
    )
    signing_key_block: BlockName | None = Field(
        default=None, description="or: the Prefect Secret block holding signing_key"
    )
    retired_signing_keys: list[PublicKeyText] = Field(
        default=[], description="public keys (base64) of signing keys no longer in use, "
        "whose certificates still verify (a key file keeps its own list: `dsrflow keys "
        "rotate-signing`); public, so they may be in the YAML",
    )
    queue: QueueSettings | None = Field(
        default=None, description="the ticket queue (SQS or compatible) that intake reads"
    )
    packages: PackageSettings = Field(
        default_factory=PackageSettings,
        description="where access packages are stored and how their links and keys go out",
    )
    callback_base_url: str | None = Field(
        default=None,
        description="public URL of `dsrflow serve`, where OpenDSR partners send callbacks",
    )
    phone_regions: dict[Regime, str] = Field(
        default_factory=lambda: dict(DEFAULT_PHONE_REGIONS),
        description="per regime, the country whose national phone format a ticket without "
        "`country` is read in (ISO 3166 alpha-2); a regime without one takes only +…",
    )
    at_risk_days: int = Field(default=3, ge=0)
    guardian_age: int = Field(
        default=14, ge=1, le=21,
        description="a subject younger than this (by the data map's birth_date_column) is "
        "processed only with a verified guardian (privacy policy 7.x: under 14)",
    )
    repeats: dict[RequestType, RepeatRule] = Field(
        default_factory=lambda: dict(DEFAULT_REPEAT_RULES),
        description="per request type, what a repeat within its window gets (privacy policy "
        "6.6.2): allow, flag or refuse; types not named here are allowed. The defaults "
        "stand for every type this does not name",
    )
    calendar_overrides: Path | None = None
    batches: BatchSettings = Field(default_factory=BatchSettings)
    limits: LimitSettings = Field(
        default_factory=LimitSettings,
        description="per system, how many runs at once may work on it (across workers)",
    )
    task_retries: int = Field(default=3, ge=0)
    task_runner: TaskRunnerSettings = Field(
        default_factory=TaskRunnerSettings,
        description="where process-requests runs its system tasks: threads or Dask",
    )
    task_retry_delays: list[float] = Field(default_factory=lambda: [2.0, 10.0, 30.0])
    partner_check_failures: int = Field(
        default=5, ge=1,
        description="status checks in a row a partner may leave unanswered (down, timing "
        "out) before its request is blocked for a person to look at",
    )
    # At most 20: an HTTP client keeps 20 connections alive (httpx's default); past that,
    # each request would open a connection of its own.
    partner_concurrency: int = Field(
        default=8, ge=1, le=20,
        description="requests a batch hands to one partner at once (concurrent POSTs, each "
        "recorded as its answer arrives); a partner's `max_concurrency` in the data map "
        "overrides it; 1 sends them one after another",
    )
    lease_minutes: float = Field(
        default=10, gt=0, le=24 * 60,
        description="how long a run's hold on its requests lasts without renewal (renewed "
        "every third of it while the run works): how soon a crashed run's requests resume",
    )

    @model_validator(mode="before")
    @classmethod
    def _renamed(cls, data: Any) -> Any:
        if isinstance(data, dict) and "phone_region" in data:
            raise ValueError(
                "phone_region was replaced by phone_regions, one country per regime "
                "(e.g. phone_regions: {pipl: CN, ccpa: US})"
            )
        return data

    @model_validator(mode="after")
    def _one_source_per_secret(self) -> Settings:
        # Two sources for one key would leave which one wins to precedence rules nobody
        # remembers; a wrong key cannot decrypt the ledger.
        for name in BLOCK_FIELDS:
            if getattr(self, f"{name}_block") is not None and name in self.model_fields_set:
                raise ValueError(f"{name}_block: give at most one of {name} (DSRFLOW_"
                                 f"{name.upper()}) and {name}_block")
        return self

    @field_validator("repeats")
    @classmethod
    def _repeat_defaults(
        cls, value: dict[RequestType, RepeatRule]
    ) -> dict[RequestType, RepeatRule]:
        # Naming one type keeps the defaults of the others.
        return {**DEFAULT_REPEAT_RULES, **value}

    @field_validator("phone_regions")
    @classmethod
    def _regions(cls, value: dict[Regime, str]) -> dict[Regime, str]:
        import phonenumbers

        for regime, region in value.items():
            if region.upper() not in phonenumbers.SUPPORTED_REGIONS:
                raise ValueError(f"{regime.value}: unknown country {region!r}")
        return {regime: region.upper() for regime, region in value.items()}

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return env_settings, init_settings

    def path(self, value: Path) -> Path:
        return value if value.is_absolute() else self.base_dir / value

    @property
    def datamap_path(self) -> Path:
        return self.path(self.datamap)

    @property
    def exports_path(self) -> Path:
        return self.path(self.exports_dir)

    @property
    def certificates_path(self) -> Path:
        return self.path(self.certificates_dir)

    @property
    def state_path(self) -> Path:
        return self.path(self.state_dir)

    @property
    def resolved_ledger_url(self) -> str:
        """SQLite paths in the YAML are relative to the config file, not the shell."""
        text = self._secret("ledger_url") if self.ledger_url_block else self.ledger_url
        try:
            url = make_url(text)
        except ArgumentError:
            # SQLAlchemy's message quotes the URL, password and all: not repeated.
            source = "ledger_url_block" if self.ledger_url_block else "ledger_url"
            raise ConfigError(f"{source}: not a database URL") from None
        database = url.database
        if url.get_backend_name() != "sqlite" or not database or database == ":memory:":
            return text
        if Path(database).is_absolute():
            return text
        resolved = url.set(database=str(self.path(Path(database))))
        return resolved.render_as_string(hide_password=False)

    def _secret(self, name: str) -> str:
        """The value of `<name>_block`, read from Prefect once per settings object (a
        worker reads its blocks at its first run; restart it after changing one)."""
        if name not in self._from_blocks:
            block = getattr(self, f"{name}_block")
            try:
                self._from_blocks[name] = read_secret_block(block, f"{name}_block")
            except SecretBlockError as exc:
                raise ConfigError(str(exc)) from None
        return self._from_blocks[name]

    def _given(self, name: str) -> str | None:
        """A secret from the environment or its block, if either gives it."""
        if getattr(self, f"{name}_block") is not None:
            return self._secret(name)
        value: SecretStr | None = getattr(self, name)
        return value.get_secret_value() if value is not None else None

    def keyring(self) -> Keyring:
        token = self._given("token_key")
        enc = self._given("encryption_key")
        if (token is None or enc is None) and self.key_file is not None:
            stored = read_key_file(self.path(self.key_file))
            token = token or stored.get("token_key")
            enc = enc or stored.get("encryption_key")
        if token is None or enc is None:
            raise ConfigError(
                "no keys: set DSRFLOW_TOKEN_KEY and DSRFLOW_ENCRYPTION_KEY, token_key_block "
                "and encryption_key_block, or key_file in dsrflow.yaml (create one with "
                "`dsrflow keys new FILE`)"
            )
        try:
            return Keyring(
                token_key=decode_key(token, "token_key"),
                encryption_key=decode_key(enc, "encryption_key"),
            )
        except KeyMaterialError as exc:
            raise ConfigError(str(exc)) from exc

    def signing_key_pair(self) -> Ed25519PrivateKey:
        """The key that signs erasure certificates (its public half verifies them)."""
        text = self._given("signing_key")
        if text is None and self.key_file is not None:
            text = read_key_file(self.path(self.key_file)).get("signing_key")
        if text is None:
            raise ConfigError(
                "no signing key: set DSRFLOW_SIGNING_KEY or signing_key_block, or key_file "
                "in dsrflow.yaml; "
                "`dsrflow keys new FILE` writes one; for an existing key file run "
                "`dsrflow keys add-signing FILE`"
            )
        try:
            return decode_signing_key(text, "signing_key")
        except KeyMaterialError as exc:
            raise ConfigError(str(exc)) from exc

    def verification_keys(self) -> list[VerificationKey]:
        """The keys certificates are checked against: the current signing key's public
        half, then the retired ones (the YAML's `retired_signing_keys`, the key file's)."""
        keys = [VerificationKey(self.signing_key_pair().public_key(), None)]
        if self.key_file is not None:  # first: its entries know when they were retired
            keys += retired_signing_keys(self.path(self.key_file))
        keys += [VerificationKey(decode_public_key(text), "")
                 for text in self.retired_signing_keys]
        unique: dict[str, VerificationKey] = {}
        for key in keys:
            unique.setdefault(key.key_id, key)  # the current key wins over a stale entry
        return list(unique.values())


def load_settings(config: Path | str | None = None) -> Settings:
    """Settings from `config`, else `$DSRFLOW_CONFIG`, else `./dsrflow.yaml` if present,
    else defaults and the environment."""
    chosen = config or os.environ.get(CONFIG_ENV)
    path = Path(chosen) if chosen else Path("dsrflow.yaml")
    data: dict[str, Any] = {}
    if path.exists():
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping at the top level")
        leaked = [k for k in SECRET_FIELDS if k in loaded]
        if leaked:
            raise ConfigError(
                f"{path}: {', '.join(leaked)} must not be in the YAML; use the environment, "
                "a Prefect Secret block (<name>_block) or key_file"
            )
        _no_password(path, loaded.get("ledger_url"))
        data = loaded
        data.setdefault("base_dir", path.resolve().parent)
    elif chosen:
        raise ConfigError(f"{path}: config file not found")
    try:
        return Settings(**data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        prefix = f"{path}: {where}: " if where else f"{path}: "
        # pydantic's "Value error, " before the message of a validator adds nothing.
        raise ConfigError(f"{prefix}{first['msg'].removeprefix('Value error, ')}") from exc


def _no_password(path: Path, url: object) -> None:
    """A ledger URL in the YAML may name the host and user, never a password."""
    if not isinstance(url, str):
        return
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(f"{path}: ledger_url: not a database URL") from None
    secret_keys = [k for k in parsed.query if "password" in k.lower() or "secret" in k.lower()]
    if parsed.password or secret_keys:
        raise ConfigError(
            f"{path}: ledger_url: the URL holds a password; put the URL in "
            "DSRFLOW_LEDGER_URL or a Prefect Secret block (ledger_url_block)"
        )
