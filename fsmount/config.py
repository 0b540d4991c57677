"""The configuration file: HOCON read by pyhocon, every key checked, turned into the mount table."""
import fnmatch
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field, replace

from pyhocon import ConfigFactory, ConfigTree

from fsmount.clearml import ClearmlSettings, PathSubstitution, Taken, path_substitutions, read_clearml
from fsmount.credentials import (AzureCredentials, GcsCredentials, S3Credentials, azure_environment_credentials,
                                 choose_azure_credentials, choose_gcs_credentials, choose_s3_credentials)
from fsmount.hocon import (AZURE_CREDENTIAL_KEYS, GCS_CREDENTIAL_KEYS, S3_CREDENTIAL_KEYS, ConfigError, Reader,
                           boolean, cid, file_name, http_url, id_number, ipfs_api_url, name_in_url, parse_file,
                           positive, regex, request_payer, sha256, string_map, unquote, web_url)
from fsmount.stores.base import redact_url
from fsmount.stores.retries import RetryPolicy
from fsmount.stores.tls import is_url
from fsmount.units import parse_duration, parse_listen, parse_size, parse_ttl

LINK_MOUNTS_ENV = "FSMOUNT_LINK_MOUNTS"
IPFS_API_ENV = "FSMOUNT_IPFS_API"
DEFAULT_BLOCK_SIZE = 8 * 2**20  # of the block cache
DEFAULT_PARALLEL_PARTS = 4  # of an upload in parts, sent at once
DEFAULT_WRITE_BACK = 2.0  # seconds: rsync, tar and git rename or remove what they closed within milliseconds


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


_TOP_KEYS = {"mountpoint", "allow_other", "uid", "gid", "attr_timeout", "log", "link_mounts", "cache", "staging",
             "retries", "credentials", "volumes", "clearml", "path_substitution", "metrics"}
_LOG_KEYS = {"file", "level"}
_CACHE_KEYS = {"dir", "max_size", "block_size", "read_ahead", "metadata_ttl"}
_STAGING_KEYS = {"dir", "max_size", "multipart_threshold", "part_size", "parallel_parts", "write_back"}
_RETRIES_KEYS = {"attempts", "max_time"}
_METRICS_KEYS = {"listen"}
_SMALLEST_PART = 5 * 2**20  # S3's least part size but for the last
_PART_GRAIN = 256 * 2**10  # GCS's resumable uploads take parts in multiples of it
_VOLUME_KEYS = {"source", "mode", "path"}
_OBJECT_VOLUME_KEYS = _VOLUME_KEYS | {"endpoint", "max_connections", "rename_limit", "filter", "metadata_ttl"}
_VOLUME_KEYS_OF = {"s3": _OBJECT_VOLUME_KEYS | {"extra_args", "request_payer", "version_id", "checksum_sha256"},
                   "azure": _OBJECT_VOLUME_KEYS | {"verify"}, "gs": _OBJECT_VOLUME_KEYS | {"verify"},
                   "ipfs": _VOLUME_KEYS | {"api", "gateway", "max_connections", "verify"}}
_URL_VOLUME_KEYS = _VOLUME_KEYS | {"name", "max_connections", "verify"}
_CREDENTIAL_KINDS = {"s3", "azure", "gcs"}
_GCS_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_LOG_LEVELS = ("debug", "info", "warning", "error")


def load_config(file: str) -> Config:
    """Reads and checks FILE; raises ConfigError on the first problem, so nothing is half mounted."""
    file = os.path.abspath(file)
    tree, text = parse_file(file)
    return _Reader(file, text).config(tree)


@dataclass(frozen=True)
class PublishTarget:
    """What `fsmount publish --to URL` writes to: an object store, as a volume of that source would reach it."""
    source: ObjectSource
    key: str
    staging: StagingConfig  # where the parts of the tarball wait for their upload
    retries: RetryPolicy


def load_publish_target(file: str | None, url: str, endpoint: str | None = None) -> PublishTarget:
    """The s3://, azure:// or gs:// URL of an object (the bucket and key), with the credentials, staging and
    retries of the config FILE (None: the defaults, credentials from the environment) and ENDPOINT if given."""
    if file is None:
        file, tree, text = "(no --config)", ConfigTree(), ""
    else:
        file = os.path.abspath(file)
        tree, text = parse_file(file)
    reader = _Reader(file, text)
    reader.only(tree, (), _TOP_KEYS)
    clearml = reader.clearml(tree)
    spec = ConfigFactory.from_dict({"source": url, **({"endpoint": endpoint} if endpoint else {})})
    scheme = urllib.parse.urlsplit(url).scheme
    if scheme not in ("s3", "azure", "gs"):
        raise ConfigError(file, "--to", f"expected s3://, azure://, gs://, file:// or ipfs, got {redact_url(url)!r}")
    volume = reader.volume(spec, ("--to",), ("publish",), (), reader.all_credentials(tree, clearml))
    if not volume.objects.prefix or volume.objects.prefix.endswith("/"):
        raise ConfigError(file, "--to", f"names no object: expected {scheme}://bucket/result.tar.gz")
    staging = reader.staging(tree, reader.cache(tree, clearml.cache_dir), clearml.parallel_parts)
    return PublishTarget(volume.objects, volume.objects.prefix, staging, reader.retries(tree))


class _Reader(Reader):
    """fsmount's own keys."""

    def config(self, tree: ConfigTree) -> Config:
        self.only(tree, (), _TOP_KEYS)
        log = self.section(tree, ("log",), _LOG_KEYS)
        level = self.value(log, ("log", "level"), str, "info").lower()
        if level not in _LOG_LEVELS:
            raise self.error(("log", "level"), f"expected one of {', '.join(_LOG_LEVELS)}, got {level!r}")
        log_file = self.value(log, ("log", "file"), str, None)
        mountpoint = self.value(tree, ("mountpoint",), str, None)
        link_mounts = self.link_mounts(tree)
        clearml = self.clearml(tree)
        cache = self.cache(tree, clearml.cache_dir)
        substitutions = path_substitutions(self, tree, ("path_substitution",)) + clearml.path_substitution
        credentials = self.all_credentials(tree, clearml)
        config = Config(
            file=self.file,
            mountpoint=mountpoint and os.path.expanduser(mountpoint),
            allow_other=self.value(tree, ("allow_other",), boolean, False),
            uid=self.value(tree, ("uid",), id_number, os.geteuid()),
            gid=self.value(tree, ("gid",), id_number, os.getegid()),
            attr_timeout=self.value(tree, ("attr_timeout",), parse_duration, 1.0),
            log_file=log_file and os.path.expanduser(log_file),
            log_level=level,
            link_mounts=link_mounts,
            cache=cache,
            staging=self.staging(tree, cache, clearml.parallel_parts),
            retries=self.retries(tree),
            metrics_listen=self.value(self.section(tree, ("metrics",), _METRICS_KEYS), ("metrics", "listen"),
                                      parse_listen, None),
            volumes=self.volumes(tree, link_mounts, credentials, substitutions),
            clearml_file=clearml.file,
            clearml=tuple(replace(taken, what=f"{taken.what} (fsmount's {taken.setting} wins)")
                          if taken.setting and tree.get(taken.setting, None) is not None else taken
                          for taken in clearml.taken),
        )
        return replace(config, ca_bundles={
            volume.objects.verify: self.ca_bundles.get(volume.objects.verify, f"volumes.{volume.name}.verify")
            for volume in config.volumes if volume.objects is not None and is_url(volume.objects.verify)})

    def all_credentials(self, tree: ConfigTree, clearml: ClearmlSettings) -> dict[str, list]:
        """The credentials entries of this file, then the ClearML file's; and the S3 connection bound it sets."""
        self.s3_connections = clearml.max_connections or 32
        return {kind: own + clearml.credentials.get(kind, []) for kind, own in self.credentials(tree).items()}

    def clearml(self, tree: ConfigTree) -> ClearmlSettings:
        """The ClearML file the `clearml` key names (relative to this file), read; its settings are defaults that
        fsmount's own keys override."""
        path = self.value(tree, ("clearml",), str, None)
        if path is None:
            return ClearmlSettings(None, {}, None, None, None, (), ())
        return read_clearml(os.path.join(os.path.dirname(self.file), os.path.expanduser(path)))

    def cache(self, tree: ConfigTree, default_dir: str | None) -> CacheConfig:
        section = self.section(tree, ("cache",), _CACHE_KEYS)

        def size(key, default):
            return self.value(section, ("cache", key), parse_size, default)

        cache_dir = self.value(section, ("cache", "dir"), str, default_dir or "~/.cache/fsmount")
        return CacheConfig(
            dir=os.path.expanduser(cache_dir),
            max_size=size("max_size", 10 * 2**30),
            block_size=size("block_size", DEFAULT_BLOCK_SIZE),
            read_ahead=size("read_ahead", 64 * 2**20),
            metadata_ttl=self.value(section, ("cache", "metadata_ttl"), parse_ttl, 60.0),
        )

    def staging(self, tree: ConfigTree, cache: CacheConfig, default_parallel: int | None) -> StagingConfig:
        section = self.section(tree, ("staging",), _STAGING_KEYS)

        def size(key, default):
            return self.value(section, ("staging", key), parse_size, default)

        part_size = size("part_size", None)
        if part_size is not None and (part_size < _SMALLEST_PART or part_size % _PART_GRAIN):
            raise self.error(("staging", "part_size"), "expected at least 5MiB (S3 refuses smaller parts) and a "
                                                       "multiple of 256KiB (GCS does), such as 8MiB")
        return StagingConfig(
            dir=os.path.expanduser(self.value(section, ("staging", "dir"), str, os.path.join(cache.dir, "staging"))),
            max_size=size("max_size", 10 * 2**30),
            multipart_threshold=size("multipart_threshold", 16 * 2**20),
            part_size=part_size,
            parallel_parts=self.value(section, ("staging", "parallel_parts"), positive,
                                      default_parallel or DEFAULT_PARALLEL_PARTS),
            write_back=self.value(section, ("staging", "write_back"), parse_duration, DEFAULT_WRITE_BACK),
        )

    def retries(self, tree: ConfigTree) -> RetryPolicy:
        section = self.section(tree, ("retries",), _RETRIES_KEYS)
        return RetryPolicy(attempts=self.value(section, ("retries", "attempts"), positive, RetryPolicy.attempts),
                           max_time=self.value(section, ("retries", "max_time"), parse_duration, RetryPolicy.max_time))

    def link_mounts(self, tree: ConfigTree) -> tuple[LinkMount, ...]:
        raw = tree.get("link_mounts", [])
        if not isinstance(raw, list):
            raise self.error(("link_mounts",), f"expected a list of paths, got {raw!r}")
        mounts = []
        for index, entry in enumerate(raw):
            try:
                mounts.append(parse_link_mount(str(entry)))
            except ValueError as error:
                raise self.error(("link_mounts",), f"entry {index + 1}: {error}") from None
        for entry in filter(None, os.environ.get(LINK_MOUNTS_ENV, "").split(",")):
            try:
                mounts.append(parse_link_mount(entry.strip()))
            except ValueError as error:
                raise ConfigError(self.file, f"${LINK_MOUNTS_ENV}", str(error)) from None
        return tuple(mounts)

    def credentials(self, tree: ConfigTree) -> dict[str, list]:
        section = self.section(tree, ("credentials",), _CREDENTIAL_KINDS)
        return {"s3": self.entries(section, ("credentials", "s3"), S3_CREDENTIAL_KEYS, "{ bucket: data, key: ..., secret: ... }",
                                   self.s3_entry),
                "azure": self.entries(section, ("credentials", "azure"), AZURE_CREDENTIAL_KEYS,
                                      "{ account_name: ..., account_key: ... }", self.azure_entry),
                "gcs": self.entries(section, ("credentials", "gcs"), GCS_CREDENTIAL_KEYS, "{ bucket: ..., credentials_json: ... }",
                                    self.gcs_entry)}

    def volumes(self, tree: ConfigTree, link_mounts: tuple[LinkMount, ...], credentials,
                substitutions: tuple[PathSubstitution, ...]) -> tuple[VolumeConfig, ...]:
        section = tree.get("volumes", None)
        if not isinstance(section, ConfigTree) or not section:
            raise self.error(("volumes",), "expected an object with at least one volume, such as volumes { data { source: \"file:///srv/data\" } }")
        volumes: dict[tuple[str, ...], VolumeConfig] = {}
        for key in section:
            name = unquote(key)
            keys = ("volumes", name)
            spec = section[key]
            if not isinstance(spec, ConfigTree):
                raise self.error(keys, f"expected an object {{ source: ..., mode: ro|rw }}, got {spec!r}")
            path = self.value(spec, keys + ("path",), _volume_path, _volume_path_or_none(name))
            if path is None:
                raise self.error(keys, "not a valid volume path: use names separated by '/', without '.', '..' or empty parts")
            volume = _substituted(self.volume(spec, keys, path, link_mounts, credentials), substitutions, link_mounts)
            self.check_place(keys, volume, volumes)
            volumes[path] = volume
        return tuple(volumes.values())

    def volume(self, spec: ConfigTree, keys, path, link_mounts, credentials) -> VolumeConfig:
        listed = spec.get("source", None)
        if isinstance(listed, list):
            return self.url_volume(spec, keys, path, listed, listed=True)
        source = self.value(spec, keys + ("source",), str, None)
        url = urllib.parse.urlsplit(source or "")
        if url.scheme in ("http", "https"):
            return self.url_volume(spec, keys, path, [source], listed=False)
        self.only(spec, keys, _VOLUME_KEYS_OF.get(url.scheme, _VOLUME_KEYS))
        if source is None:
            raise self.error(keys, "missing key 'source', such as source: \"file:///srv/data\"")
        mode = self.value(spec, keys + ("mode",), str, "ro")
        if mode not in ("ro", "rw"):
            raise self.error(keys + ("mode",), f"expected ro or rw, got {mode!r}")
        if url.scheme in _VOLUME_KEYS_OF:
            read = {"s3": self.s3_source, "azure": self.azure_source, "gs": self.gcs_source,
                    "ipfs": self.ipfs_source}[url.scheme]
            objects = read(spec, keys, url, credentials)
            if objects.single_object and mode == "rw":
                raise self.error(keys + ("mode",), "rw, but a volume of one pinned or checksummed object is read-only")
            if objects.immutable and mode == "rw":
                raise self.error(keys + ("mode",), "rw, but IPFS content never changes: expected ro")
            return VolumeConfig(path=path, source=source, read_only=mode == "ro", objects=objects)
        if url.scheme != "file":
            raise self.error(keys + ("source",), f"unsupported source {redact_url(source)!r}; expected file:///absolute/path, "
                                                 "s3://bucket/prefix, azure://container/prefix, gs://bucket/prefix, "
                                                 "ipfs://CID/path or http(s)://host/file")
        if url.netloc not in ("", "localhost") or not url.path.startswith("/"):
            raise self.error(keys + ("source",), f"expected file:///absolute/path, got {source!r}")
        host_path = os.path.realpath(urllib.parse.unquote(url.path))
        if not os.path.isdir(host_path) and not os.path.isfile(host_path):
            raise self.error(keys + ("source",), f"{host_path} is not an existing directory or file")
        link = _enclosing_link_mount(host_path, link_mounts)
        if link is None:
            allowed = ", ".join(m.path for m in link_mounts) or f"none; set link_mounts or ${LINK_MOUNTS_ENV}"
            raise self.error(keys + ("source",), f"{host_path} lies outside every link mount (allowed: {allowed})")
        if link.read_only and mode == "rw":
            raise self.error(keys + ("mode",), f"rw, but link mount {link.path} is read-only (:ro)")
        return VolumeConfig(path=path, source=source, read_only=mode == "ro", host_path=host_path)

    def object_options(self, spec: ConfigTree, keys, connections: int = 32) -> dict:
        """The keys every object store volume has."""
        return dict(max_connections=self.value(spec, keys + ("max_connections",), positive, connections),
                    rename_limit=self.value(spec, keys + ("rename_limit",), positive, 1000),
                    filter=self.value(spec, keys + ("filter",), regex, None),
                    metadata_ttl=self.value(spec, keys + ("metadata_ttl",), parse_ttl, None))

    def s3_source(self, spec: ConfigTree, keys, url: urllib.parse.SplitResult, credentials) -> S3Source:
        """`s3://bucket/prefix`, or ClearML's `s3://host:port/bucket/prefix` for a non-AWS endpoint."""
        host, parts = None, url.path.lstrip("/")
        if url.port is not None:
            host = url.netloc
            bucket, _, prefix = parts.partition("/")
        else:
            bucket, prefix = url.netloc, parts
        if not bucket:
            raise self.error(keys + ("source",), f"expected s3://bucket/prefix or s3://host:port/bucket/prefix, got {url.geturl()!r}")
        endpoint = self.value(spec, keys + ("endpoint",), str, None)
        if endpoint is not None:
            parsed = urllib.parse.urlsplit(endpoint if "://" in endpoint else f"//{endpoint}")
            if parsed.scheme not in ("", "http", "https") or not parsed.netloc:
                raise self.error(keys + ("endpoint",), f"expected http(s)://host:port or host:port, got {endpoint!r}")
            host = parsed.netloc
        chosen = choose_s3_credentials(credentials["s3"], bucket, host)
        if host is not None and (endpoint is None or "://" not in endpoint):
            endpoint = f"{'https' if chosen.secure else 'http'}://{host}"
        source = S3Source(
            bucket=bucket, prefix=prefix, endpoint=endpoint, credentials=chosen, verify=chosen.verify,
            **self.object_options(spec, keys, self.s3_connections),
            extra_args=chosen.extra_args | self.value(spec, keys + ("extra_args",), string_map, {}),
            request_payer=self.value(spec, keys + ("request_payer",), request_payer, None),
            version_id=self.value(spec, keys + ("version_id",), str, None),
            checksum_sha256=self.value(spec, keys + ("checksum_sha256",), sha256, None))
        if source.single_object and (not prefix or prefix.endswith("/")):
            key = "version_id" if source.version_id is not None else "checksum_sha256"
            raise self.error(keys + (key,), f"needs a source that names one object, such as s3://{bucket}/data.csv")
        return source

    def azure_source(self, spec: ConfigTree, keys, url: urllib.parse.SplitResult, credentials) -> AzureSource:
        """`azure://container/prefix` (the account is the credentials'), `azure://account/container/prefix`,
        or `azure://account.blob.core.windows.net/container/prefix`. The first name is an account when it
        is a host name or an account the credentials or AZURE_STORAGE_ACCOUNT name."""
        entries = credentials["azure"]
        try:
            environment = azure_environment_credentials(os.environ)
        except ValueError as error:
            raise ConfigError(self.file, "$AZURE_STORAGE_CONNECTION_STRING", str(error)) from None
        known = {entry.account_name for entry in entries} | ({environment.account_name} if environment else set())
        first, rest = url.netloc, url.path.lstrip("/")
        endpoint = self.value(spec, keys + ("endpoint",), http_url, None)
        if "." in first or first in known:
            account = first.split(".")[0]
            container, _, prefix = rest.partition("/")
            if "." in first and endpoint is None:
                endpoint = f"https://{first}"
        else:
            account, container, prefix = None, first, rest
        if not re.fullmatch(r"\$root|[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}", container):
            raise self.error(keys + ("source",), f"{container!r} is not a container name (3-63 of a-z, 0-9 and '-'); "
                                                 "expected azure://container/prefix or azure://account/container/prefix")
        chosen = choose_azure_credentials(entries, account, container)
        if chosen is None and environment is not None and account in (None, environment.account_name):
            chosen = environment
        chosen = chosen or AzureCredentials(account_name=account)
        account = account or chosen.account_name
        if account is None:
            raise self.error(keys + ("source",), "names no account, and no credentials give one: write "
                                                 "azure://account/container/prefix, or add a credentials.azure entry")
        return AzureSource(bucket=container, prefix=prefix, account=account, credentials=chosen,
                           endpoint=endpoint or chosen.endpoint,
                           verify=self.verify(spec, keys), **self.object_options(spec, keys))

    def gcs_source(self, spec: ConfigTree, keys, url: urllib.parse.SplitResult, credentials) -> GcsSource:
        """`gs://bucket/prefix`. With an emulator's endpoint (the key, or STORAGE_EMULATOR_HOST) and no
        entry for the bucket, access is anonymous."""
        bucket, prefix = url.netloc, url.path.lstrip("/")
        if not bucket:
            raise self.error(keys + ("source",), f"expected gs://bucket/prefix, got {url.geturl()!r}")
        endpoint = self.value(spec, keys + ("endpoint",), http_url, None)
        if endpoint is None and os.environ.get(_GCS_EMULATOR_ENV):
            emulator = os.environ[_GCS_EMULATOR_ENV]
            endpoint = emulator if "://" in emulator else f"http://{emulator}"
        chosen = choose_gcs_credentials(credentials["gcs"], bucket, prefix)
        if chosen.use_default_chain and endpoint is not None:
            chosen = GcsCredentials(bucket=bucket)
        return GcsSource(bucket=bucket, prefix=prefix, endpoint=endpoint, credentials=chosen, verify=self.verify(spec, keys),
                         **self.object_options(spec, keys))

    def ipfs_source(self, spec: ConfigTree, keys, url: urllib.parse.SplitResult, credentials) -> IpfsSource:
        """`ipfs://CID[/path]` (CIDv0 or v1), from a node's RPC API (`api`: a multiaddr or URL, else
        $FSMOUNT_IPFS_API) or a trustless gateway (`gateway`)."""
        root = self.converted(url.netloc, keys + ("source",), cid)
        api = self.value(spec, keys + ("api",), ipfs_api_url, None)
        gateway = self.value(spec, keys + ("gateway",), http_url, None)
        if api is not None and gateway is not None:
            raise self.error(keys + ("gateway",), "an IPFS volume reads from its api or its gateway: give one")
        if api is None and gateway is None:
            if not os.environ.get(IPFS_API_ENV):
                raise self.error(keys, f"names no IPFS node: add api: \"/ip4/127.0.0.1/tcp/5001\" or gateway: "
                                       f"\"http://127.0.0.1:8080\", or set ${IPFS_API_ENV}")
            try:
                api = ipfs_api_url(os.environ[IPFS_API_ENV])
            except ValueError as error:
                raise ConfigError(self.file, f"${IPFS_API_ENV}", str(error)) from None
        return IpfsSource(bucket=root, prefix="", path=urllib.parse.unquote(url.path).strip("/"), api=api,
                          gateway=gateway, endpoint=None, rename_limit=1, verify=self.verify(spec, keys),
                          max_connections=self.value(spec, keys + ("max_connections",), positive, 8))

    def url_volume(self, spec: ConfigTree, keys, path, entries: list, listed: bool) -> VolumeConfig:
        """Web files, read-only: `source` is one URL (whose file `name` may rename) or a list of URLs or of
        `{ url, name }`. A file is named after its URL's last segment unless named."""
        self.only(spec, keys, _URL_VOLUME_KEYS)
        if self.value(spec, keys + ("mode",), str, "ro") != "ro":
            raise self.error(keys + ("mode",), "URL volumes are read-only: expected ro")
        renamed = self.value(spec, keys + ("name",), file_name, None)
        if renamed is not None and len(entries) != 1:
            raise self.error(keys + ("name",), "names the file of a volume of one URL; in a list, write { url: ..., name: ... }")
        files = {}
        for index, entry in enumerate(entries):
            where = keys + ("source",) + ((f"[{index}]",) if listed else ())
            if isinstance(entry, ConfigTree):
                self.only(entry, where, {"url", "name"})
                url = self.value(entry, where + ("url",), web_url, None)
                if url is None:
                    raise self.error(where, "missing key 'url'")
                name = self.value(entry, where + ("name",), file_name, None)
            else:
                url, name = self.converted(entry, where, web_url), renamed
            name = name or self.converted(url, where, name_in_url)
            if name in files:
                raise self.error(where, f"a second file named {name!r}; name one with {{ url: ..., name: ... }}")
            files[name] = url
        source = UrlSource(bucket="", prefix="", endpoint=None, rename_limit=1, files=files,
                           max_connections=self.value(spec, keys + ("max_connections",), positive, 8),
                           verify=self.verify(spec, keys))
        shown = next(iter(files.values())) if len(files) == 1 else f"{len(files)} URLs"
        return VolumeConfig(path=path, source=shown, read_only=True, objects=source)

    def check_place(self, keys, volume: VolumeConfig, placed: dict[tuple[str, ...], VolumeConfig]):
        if volume.path in placed:
            raise self.error(keys, f"two volumes at the same path {volume.name!r}")
        for other in placed.values():
            shorter, longer = sorted((volume, other), key=lambda v: len(v.path))
            if longer.path[: len(shorter.path)] == shorter.path:
                raise self.error(keys, f"volume {longer.name!r} would lie inside volume {shorter.name!r}; volumes cannot nest")


def parse_link_mount(entry: str) -> LinkMount:
    """`/u/nlp/data`, `/u/nlp/data:ro` or `/u/nlp/data:rw`; the path may be a glob, as in Bacalhau's allow-list
    (`/etc/*.conf:ro`, `/data/*/public:ro`), whose `*`, `?` and `[...]` match within one name."""
    path, _, mode = entry.rpartition(":") if entry.endswith((":ro", ":rw")) else (entry, "", "rw")
    if not path.startswith("/"):
        raise ValueError(f"expected an absolute path, optionally ending in :ro or :rw, got {entry!r}")
    return LinkMount(os.path.realpath(path), mode == "ro")


def _enclosing_link_mount(path: str, link_mounts) -> LinkMount | None:
    """The link mount PATH lies in: of those whose path (or glob) matches PATH or a directory above it, the one
    matching most names; of those, the first listed."""
    names = path.strip("/").split("/")

    def matched(mount: LinkMount) -> int:
        pattern = mount.path.strip("/").split("/") if mount.path != "/" else []
        fits = len(pattern) <= len(names) and all(map(fnmatch.fnmatchcase, names, pattern))
        return len(pattern) if fits else -1

    best = max(link_mounts, key=matched, default=None)  # max keeps the first of equals
    return best if best is not None and matched(best) >= 0 else None


def _substituted(volume: VolumeConfig, substitutions: tuple[PathSubstitution, ...], link_mounts) -> VolumeConfig:
    """An object volume that the first path substitution fitting its source maps to a local directory inside a link
    mount is served from there, as ClearML's direct access: a host volume, no cache, its mode capped by the link mount."""
    if volume.objects is None or volume.objects.single_object:
        return volume
    for rule in substitutions:
        local = rule.local_path(volume.source)
        if local is None:
            continue
        host_path = os.path.realpath(local)
        link = _enclosing_link_mount(host_path, link_mounts)
        if not os.path.isdir(host_path):
            return replace(volume, chosen=f"the store: {local} is not an existing directory (path_substitution {rule.where})")
        if link is None:
            return replace(volume, chosen=f"the store: {local} lies outside every link mount (path_substitution {rule.where})")
        return VolumeConfig(path=volume.path, source=volume.source, read_only=volume.read_only or link.read_only,
                            host_path=host_path, chosen=f"the local copy {host_path}, no cache (path_substitution {rule.where})")
    return volume


def _volume_path_or_none(text: str) -> tuple[str, ...] | None:
    parts = tuple(text.strip("/").split("/"))
    if any(part in ("", ".", "..") or "\0" in part for part in parts):
        return None
    return parts


def _volume_path(text) -> tuple[str, ...]:
    path = _volume_path_or_none(str(text))
    if path is None:
        raise ValueError(f"expected names separated by '/', without '.', '..' or empty parts, got {text!r}")
    return path
