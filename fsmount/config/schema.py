"""What a config file becomes: the mount table, each volume and its source, the cache, staging, retries and
what `fsmount publish` writes to."""
import math
import re
from dataclasses import dataclass, field

from fsmount.config.clearml import Taken
from fsmount.credentials import AzureCredentials, GcsCredentials, S3Credentials
from fsmount.stores.retries import RetryPolicy


@dataclass(frozen=True)
class LinkMount:
    path: str
    read_only: bool


@dataclass(frozen=True, kw_only=True)
class ObjectSource:
    """What every object store volume has: a bucket (or container), a prefix in it, and how it is reached."""
    bucket: str
    prefix: str
    endpoint: str | None  # None: the cloud's own
    max_connections: int
    rename_limit: int  # objects a directory rename may copy; EXDEV above
    filter: re.Pattern | None = None  # only objects whose full key it matches (re.search) are shown
    metadata_ttl: float | None = None  # the cache's when None; math.inf: `never`, for data that does not change
    verify: bool | str = True  # TLS: verify, don't, with this CA bundle, or with the one at this URL (fetched at start)

    @property
    def single_object(self) -> bool:
        return False

    @property
    def immutable(self) -> bool:
        """Content addressed: what it lists and holds never changes, so nothing about it expires."""
        return False

    def effective_ttl(self, cache_ttl: float) -> float:
        """How long its listings and attributes are trusted, given the cache's `metadata_ttl`."""
        if self.immutable:
            return math.inf
        return cache_ttl if self.metadata_ttl is None else self.metadata_ttl


@dataclass(frozen=True, kw_only=True)
class S3Source(ObjectSource):
    credentials: S3Credentials
    extra_args: dict[str, str] = field(default_factory=dict)  # for every upload: ServerSideEncryption, StorageClass, ...
    request_payer: str | None = None  # "requester": every request pays for itself (requester-pays buckets)
    version_id: str | None = None  # the source is one object, read at this version
    checksum_sha256: bytes | None = None  # the source is one object, which must have this digest

    @property
    def single_object(self) -> bool:
        return self.version_id is not None or self.checksum_sha256 is not None


@dataclass(frozen=True, kw_only=True)
class AzureSource(ObjectSource):
    account: str
    credentials: AzureCredentials  # no key and no SAS: an Azure AD identity, else a public container


@dataclass(frozen=True, kw_only=True)
class GcsSource(ObjectSource):
    credentials: GcsCredentials


@dataclass(frozen=True, kw_only=True)
class UrlSource(ObjectSource):
    files: dict[str, str]  # file name -> URL


@dataclass(frozen=True, kw_only=True)
class IpfsSource(ObjectSource):
    """The bucket is the root CID."""
    path: str  # below the root, the volume's top: a directory, or a file that is then the volume's one entry
    api: str | None  # a node's RPC API, as an http(s) URL
    gateway: str | None  # a trustless gateway, when there is no API

    @property
    def immutable(self) -> bool:
        return True


@dataclass(frozen=True)
class VolumeConfig:
    path: tuple[str, ...]
    source: str
    read_only: bool
    host_path: str | None = None  # file:// volumes
    objects: ObjectSource | None = None  # object store volumes
    chosen: str | None = None  # what a path substitution chose, and why

    @property
    def name(self) -> str:
        return "/".join(self.path)


@dataclass(frozen=True)
class CacheConfig:
    dir: str
    max_size: int
    block_size: int
    read_ahead: int
    metadata_ttl: float


@dataclass(frozen=True)
class StagingConfig:
    dir: str
    max_size: int
    multipart_threshold: int
    part_size: int | None  # None: each store's own (Store.part_size)
    parallel_parts: int
    write_back: float  # seconds a closed file stays staged before its upload; 0: uploaded at close


@dataclass(frozen=True)
class Config:
    file: str
    mountpoint: str | None
    allow_other: bool
    uid: int
    gid: int
    attr_timeout: float
    log_file: str | None
    log_level: str
    link_mounts: tuple[LinkMount, ...]
    cache: CacheConfig
    staging: StagingConfig
    retries: RetryPolicy
    volumes: tuple[VolumeConfig, ...]
    ca_bundles: dict[str, str] = field(default_factory=dict)  # CA bundle URL a volume's `verify` names -> its key
    clearml_file: str | None = None
    clearml: tuple[Taken, ...] = ()  # what the ClearML file gave
    metrics_listen: tuple[str, int] | None = None  # where /metrics and /healthz are served; None: not at all


@dataclass(frozen=True)
class PublishTarget:
    """What `fsmount publish --to URL` writes to: an object store, as a volume of that source would reach it."""
    source: ObjectSource
    key: str
    staging: StagingConfig  # where the parts of the tarball wait for their upload
    retries: RetryPolicy

