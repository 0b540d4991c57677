"""The configuration file: HOCON read by pyhocon, every key checked, turned into the mount table."""
import base64
import binascii
import dataclasses
import json
import math
import os
import re
import urllib.parse
from dataclasses import dataclass, field

import pyparsing
from pyhocon import ConfigFactory, ConfigTree
from pyhocon.exceptions import ConfigException

from fsmount.credentials import (AzureCredentials, GcsCredentials, S3Credentials, azure_environment_credentials,
                                 choose_azure_credentials, choose_gcs_credentials, choose_s3_credentials,
                                 parse_connection_string)
from fsmount.stores.base import redact_url
from fsmount.stores.retries import RetryPolicy
from fsmount.stores.tls import is_url
from fsmount.units import parse_duration, parse_size, parse_ttl

LINK_MOUNTS_ENV = "FSMOUNT_LINK_MOUNTS"
IPFS_API_ENV = "FSMOUNT_IPFS_API"
DEFAULT_BLOCK_SIZE = 8 * 2**20  # of the block cache
DEFAULT_PARALLEL_PARTS = 4  # of an upload in parts, sent at once
DEFAULT_WRITE_BACK = 2.0  # seconds: rsync, tar and git rename or remove what they closed within milliseconds


class ConfigError(Exception):
    """A bad config: names the file, the line where it is known, the key, and what was expected."""

    def __init__(self, file: str, key: str | None, message: str, line: int | None = None):
        super().__init__(message)
        self.file, self.key, self.message, self.line = file, key, message, line

    def __str__(self):
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


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


_TOP_KEYS = {"mountpoint", "allow_other", "uid", "gid", "attr_timeout", "log", "link_mounts", "cache", "staging",
             "retries", "credentials", "volumes"}
_LOG_KEYS = {"file", "level"}
_CACHE_KEYS = {"dir", "max_size", "block_size", "read_ahead", "metadata_ttl"}
_STAGING_KEYS = {"dir", "max_size", "multipart_threshold", "part_size", "parallel_parts", "write_back"}
_RETRIES_KEYS = {"attempts", "max_time"}
_SMALLEST_PART = 5 * 2**20  # S3's least part size but for the last
_PART_GRAIN = 256 * 2**10  # GCS's resumable uploads take parts in multiples of it
_VOLUME_KEYS = {"source", "mode", "path"}
_OBJECT_VOLUME_KEYS = _VOLUME_KEYS | {"endpoint", "max_connections", "rename_limit", "filter", "metadata_ttl"}
_VOLUME_KEYS_OF = {"s3": _OBJECT_VOLUME_KEYS | {"extra_args", "request_payer", "version_id", "checksum_sha256"},
                   "azure": _OBJECT_VOLUME_KEYS | {"verify"}, "gs": _OBJECT_VOLUME_KEYS | {"verify"},
                   "ipfs": _VOLUME_KEYS | {"api", "gateway", "max_connections", "verify"}}
_URL_VOLUME_KEYS = _VOLUME_KEYS | {"name", "max_connections", "verify"}
_CREDENTIAL_KINDS = {"s3", "azure", "gcs"}
_S3_CREDENTIAL_KEYS = {"bucket", "host", "key", "secret", "region", "secure", "verify", "use_credentials_chain"}
_AZURE_CREDENTIAL_KEYS = {"account_name", "account_key", "sas_token", "connection_string", "container_name"}
_GCS_CREDENTIAL_KEYS = {"bucket", "subdir", "project", "credentials_json"}
_GCS_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
_LOG_LEVELS = ("debug", "info", "warning", "error")


def load_config(file: str) -> Config:
    """Reads and checks FILE; raises ConfigError on the first problem, so nothing is half mounted."""
    file = os.path.abspath(file)
    try:
        with open(file, encoding="utf-8") as stream:
            text = stream.read()
    except OSError as error:
        raise ConfigError(file, None, f"cannot read the config: {error.strerror}") from None
    try:
        tree = ConfigFactory.parse_string(text, basedir=os.path.dirname(file))
    except pyparsing.ParseBaseException as error:
        raise ConfigError(file, None, f"not valid HOCON: {error.msg}", error.lineno) from None
    except ConfigException as error:
        line = re.search(r"\(line: ?(\d+)", str(error))
        raise ConfigError(file, None, str(error), line and int(line.group(1))) from None
    return _Reader(file, text).config(tree)


class _Reader:
    """Typed access to the parsed tree; every error it raises carries the key's dotted path."""

    def __init__(self, file: str, text: str):
        self.file, self.text = file, text
        self.ca_bundles: dict[str, str] = {}  # each CA bundle URL a `verify` names -> the first key naming it

    def error(self, keys: tuple[str, ...], message: str) -> ConfigError:
        return ConfigError(self.file, ".".join(keys), message, _line_of(self.text, keys))

    def config(self, tree: ConfigTree) -> Config:
        self.only(tree, (), _TOP_KEYS)
        log = self.section(tree, ("log",), _LOG_KEYS)
        level = self.value(log, ("log", "level"), str, "info").lower()
        if level not in _LOG_LEVELS:
            raise self.error(("log", "level"), f"expected one of {', '.join(_LOG_LEVELS)}, got {level!r}")
        log_file = self.value(log, ("log", "file"), str, None)
        mountpoint = self.value(tree, ("mountpoint",), str, None)
        link_mounts = self.link_mounts(tree)
        cache = self.cache(tree)
        config = Config(
            file=self.file,
            mountpoint=mountpoint and os.path.expanduser(mountpoint),
            allow_other=self.value(tree, ("allow_other",), _boolean, False),
            uid=self.value(tree, ("uid",), _id_number, os.geteuid()),
            gid=self.value(tree, ("gid",), _id_number, os.getegid()),
            attr_timeout=self.value(tree, ("attr_timeout",), parse_duration, 1.0),
            log_file=log_file and os.path.expanduser(log_file),
            log_level=level,
            link_mounts=link_mounts,
            cache=cache,
            staging=self.staging(tree, cache),
            retries=self.retries(tree),
            volumes=self.volumes(tree, link_mounts, self.credentials(tree)),
        )
        used = {volume.objects.verify for volume in config.volumes if volume.objects is not None}
        return dataclasses.replace(config, ca_bundles={url: key for url, key in self.ca_bundles.items() if url in used})

    def only(self, tree: ConfigTree, keys: tuple[str, ...], allowed: set[str]):
        for key in tree:
            if _unquote(key) not in allowed:
                hint = " (a name with '.' must be quoted)" if keys[:1] == ("volumes",) else ""
                raise self.error(keys + (_unquote(key),), f"unknown key; expected one of {', '.join(sorted(allowed))}{hint}")

    def section(self, tree: ConfigTree, keys: tuple[str, ...], allowed: set[str]) -> ConfigTree:
        section = tree.get(keys[-1], None)
        if section is None:
            return ConfigTree()
        if not isinstance(section, ConfigTree):
            raise self.error(keys, f"expected an object {{ ... }}, got {section!r}")
        self.only(section, keys, allowed)
        return section

    def value(self, tree: ConfigTree, keys: tuple[str, ...], convert, default):
        raw = tree.get(keys[-1], None)
        return default if raw is None else self.converted(raw, keys, convert)

    def converted(self, raw, keys: tuple[str, ...], convert):
        try:
            return convert(raw)
        except (ValueError, TypeError) as error:
            raise self.error(keys, str(error)) from None

    def cache(self, tree: ConfigTree) -> CacheConfig:
        section = self.section(tree, ("cache",), _CACHE_KEYS)

        def size(key, default):
            return self.value(section, ("cache", key), parse_size, default)

        cache_dir = self.value(section, ("cache", "dir"), str, "~/.cache/fsmount")
        return CacheConfig(
            dir=os.path.expanduser(cache_dir),
            max_size=size("max_size", 10 * 2**30),
            block_size=size("block_size", DEFAULT_BLOCK_SIZE),
            read_ahead=size("read_ahead", 64 * 2**20),
            metadata_ttl=self.value(section, ("cache", "metadata_ttl"), parse_ttl, 60.0),
        )

    def staging(self, tree: ConfigTree, cache: CacheConfig) -> StagingConfig:
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
            parallel_parts=self.value(section, ("staging", "parallel_parts"), _positive, DEFAULT_PARALLEL_PARTS),
            write_back=self.value(section, ("staging", "write_back"), parse_duration, DEFAULT_WRITE_BACK),
        )

    def retries(self, tree: ConfigTree) -> RetryPolicy:
        section = self.section(tree, ("retries",), _RETRIES_KEYS)
        return RetryPolicy(attempts=self.value(section, ("retries", "attempts"), _positive, RetryPolicy.attempts),
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
        return {"s3": self.entries(section, "s3", _S3_CREDENTIAL_KEYS, "{ bucket: data, key: ..., secret: ... }",
                                   self.s3_entry),
                "azure": self.entries(section, "azure", _AZURE_CREDENTIAL_KEYS,
                                      "{ account_name: ..., account_key: ... }", self.azure_entry),
                "gcs": self.entries(section, "gcs", _GCS_CREDENTIAL_KEYS, "{ bucket: ..., credentials_json: ... }",
                                    self.gcs_entry)}

    def entries(self, section: ConfigTree, kind: str, allowed: set[str], example: str, read) -> list:
        """The list `credentials.KIND`, each entry checked and READ(entry, keys)."""
        entries = section.get(kind, [])
        if not isinstance(entries, list):
            raise self.error(("credentials", kind), f"expected a list of {example}, got {entries!r}")
        read_entries = []
        for index, entry in enumerate(entries):
            keys = ("credentials", kind, f"[{index}]")
            if not isinstance(entry, ConfigTree):
                raise self.error(keys, f"expected an object such as {example}")
            self.only(entry, keys, allowed)
            read_entries.append(read(entry, keys))
        return read_entries

    def s3_entry(self, entry: ConfigTree, keys) -> S3Credentials:
        return S3Credentials(
            bucket=self.value(entry, keys + ("bucket",), str, None),
            host=self.value(entry, keys + ("host",), str, None),
            key=self.value(entry, keys + ("key",), str, None),
            secret=self.value(entry, keys + ("secret",), str, None),
            region=self.value(entry, keys + ("region",), str, None),
            secure=self.value(entry, keys + ("secure",), _boolean, True),
            verify=self.verify(entry, keys),
            use_credentials_chain=self.value(entry, keys + ("use_credentials_chain",), _boolean, False),
        )

    def verify(self, tree: ConfigTree, keys) -> bool | str:
        """The `verify` key below KEYS; a CA bundle URL is noted, to be fetched when a daemon starts."""
        verify = self.value(tree, keys + ("verify",), _verify, True)
        if is_url(verify):
            self.ca_bundles.setdefault(verify, ".".join(keys + ("verify",)))
        return verify

    def azure_entry(self, entry: ConfigTree, keys) -> AzureCredentials:
        def text(key):
            return self.value(entry, keys + (key,), str, None)

        container = text("container_name")
        if text("connection_string") is not None:
            parsed = self.value(entry, keys + ("connection_string",), parse_connection_string, None)
            return dataclasses.replace(parsed, container=container)
        if text("account_key") is not None and text("account_name") is None:
            raise self.error(keys, "an account_key needs its account_name (or give a connection_string)")
        return AzureCredentials(account_name=text("account_name"), container=container,
                                account_key=text("account_key"), sas_token=text("sas_token"))

    def gcs_entry(self, entry: ConfigTree, keys) -> GcsCredentials:
        return GcsCredentials(
            bucket=self.value(entry, keys + ("bucket",), str, None),
            subdir=self.value(entry, keys + ("subdir",), str, None),
            project=self.value(entry, keys + ("project",), str, None),
            info=self.value(entry, keys + ("credentials_json",), _json_key, None),
        )

    def volumes(self, tree: ConfigTree, link_mounts: tuple[LinkMount, ...], credentials) -> tuple[VolumeConfig, ...]:
        section = tree.get("volumes", None)
        if not isinstance(section, ConfigTree) or not section:
            raise self.error(("volumes",), "expected an object with at least one volume, such as volumes { data { source: \"file:///srv/data\" } }")
        volumes: dict[tuple[str, ...], VolumeConfig] = {}
        for key in section:
            name = _unquote(key)
            keys = ("volumes", name)
            spec = section[key]
            if not isinstance(spec, ConfigTree):
                raise self.error(keys, f"expected an object {{ source: ..., mode: ro|rw }}, got {spec!r}")
            path = self.value(spec, keys + ("path",), _volume_path, _volume_path_or_none(name))
            if path is None:
                raise self.error(keys, "not a valid volume path: use names separated by '/', without '.', '..' or empty parts")
            volume = self.volume(spec, keys, path, link_mounts, credentials)
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
        if not os.path.isdir(host_path):
            raise self.error(keys + ("source",), f"{host_path} is not an existing directory")
        link = _enclosing_link_mount(host_path, link_mounts)
        if link is None:
            allowed = ", ".join(m.path for m in link_mounts) or f"none; set link_mounts or ${LINK_MOUNTS_ENV}"
            raise self.error(keys + ("source",), f"{host_path} lies outside every link mount (allowed: {allowed})")
        if link.read_only and mode == "rw":
            raise self.error(keys + ("mode",), f"rw, but link mount {link.path} is read-only (:ro)")
        return VolumeConfig(path=path, source=source, read_only=mode == "ro", host_path=host_path)

    def object_options(self, spec: ConfigTree, keys) -> dict:
        """The keys every object store volume has."""
        return dict(max_connections=self.value(spec, keys + ("max_connections",), _positive, 32),
                    rename_limit=self.value(spec, keys + ("rename_limit",), _positive, 1000),
                    filter=self.value(spec, keys + ("filter",), _regex, None),
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
            **self.object_options(spec, keys),
            extra_args=self.value(spec, keys + ("extra_args",), _string_map, {}),
            request_payer=self.value(spec, keys + ("request_payer",), _request_payer, None),
            version_id=self.value(spec, keys + ("version_id",), str, None),
            checksum_sha256=self.value(spec, keys + ("checksum_sha256",), _sha256, None))
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
        endpoint = self.value(spec, keys + ("endpoint",), _http_url, None)
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
        endpoint = self.value(spec, keys + ("endpoint",), _http_url, None)
        if endpoint is None and os.environ.get(_GCS_EMULATOR_ENV):
            emulator = os.environ[_GCS_EMULATOR_ENV]
            endpoint = emulator if "://" in emulator else f"http://{emulator}"
        chosen = choose_gcs_credentials(credentials["gcs"], bucket, prefix)
        if chosen.use_default_chain and endpoint is not None:
            chosen = GcsCredentials(bucket=bucket)
        return GcsSource(bucket=bucket, prefix=prefix, endpoint=endpoint, credentials=chosen,
                         verify=self.verify(spec, keys), **self.object_options(spec, keys))

    def ipfs_source(self, spec: ConfigTree, keys, url: urllib.parse.SplitResult, credentials) -> IpfsSource:
        """`ipfs://CID[/path]` (CIDv0 or v1), from a node's RPC API (`api`: a multiaddr or URL, else
        $FSMOUNT_IPFS_API) or a trustless gateway (`gateway`)."""
        root = self.converted(url.netloc, keys + ("source",), _cid)
        api = self.value(spec, keys + ("api",), _ipfs_api_url, None)
        gateway = self.value(spec, keys + ("gateway",), _http_url, None)
        if api is not None and gateway is not None:
            raise self.error(keys + ("gateway",), "an IPFS volume reads from its api or its gateway: give one")
        if api is None and gateway is None:
            if not os.environ.get(IPFS_API_ENV):
                raise self.error(keys, f"names no IPFS node: add api: \"/ip4/127.0.0.1/tcp/5001\" or gateway: "
                                       f"\"http://127.0.0.1:8080\", or set ${IPFS_API_ENV}")
            try:
                api = _ipfs_api_url(os.environ[IPFS_API_ENV])
            except ValueError as error:
                raise ConfigError(self.file, f"${IPFS_API_ENV}", str(error)) from None
        return IpfsSource(bucket=root, prefix="", path=urllib.parse.unquote(url.path).strip("/"), api=api,
                          gateway=gateway, endpoint=None, rename_limit=1, verify=self.verify(spec, keys),
                          max_connections=self.value(spec, keys + ("max_connections",), _positive, 8))

    def url_volume(self, spec: ConfigTree, keys, path, entries: list, listed: bool) -> VolumeConfig:
        """Web files, read-only: `source` is one URL (whose file `name` may rename) or a list of URLs or of
        `{ url, name }`. A file is named after its URL's last segment unless named."""
        self.only(spec, keys, _URL_VOLUME_KEYS)
        if self.value(spec, keys + ("mode",), str, "ro") != "ro":
            raise self.error(keys + ("mode",), "URL volumes are read-only: expected ro")
        renamed = self.value(spec, keys + ("name",), _file_name, None)
        if renamed is not None and len(entries) != 1:
            raise self.error(keys + ("name",), "names the file of a volume of one URL; in a list, write { url: ..., name: ... }")
        files = {}
        for index, entry in enumerate(entries):
            where = keys + ("source",) + ((f"[{index}]",) if listed else ())
            if isinstance(entry, ConfigTree):
                self.only(entry, where, {"url", "name"})
                url = self.value(entry, where + ("url",), _web_url, None)
                if url is None:
                    raise self.error(where, "missing key 'url'")
                name = self.value(entry, where + ("name",), _file_name, None)
            else:
                url, name = self.converted(entry, where, _web_url), renamed
            name = name or self.converted(url, where, _name_in_url)
            if name in files:
                raise self.error(where, f"a second file named {name!r}; name one with {{ url: ..., name: ... }}")
            files[name] = url
        source = UrlSource(bucket="", prefix="", endpoint=None, rename_limit=1, files=files,
                           max_connections=self.value(spec, keys + ("max_connections",), _positive, 8),
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
    """`/u/nlp/data`, `/u/nlp/data:ro` or `/u/nlp/data:rw`."""
    path, _, mode = entry.rpartition(":") if entry.endswith((":ro", ":rw")) else (entry, "", "rw")
    if not path.startswith("/"):
        raise ValueError(f"expected an absolute path, optionally ending in :ro or :rw, got {entry!r}")
    return LinkMount(os.path.realpath(path), mode == "ro")


def _enclosing_link_mount(path: str, link_mounts) -> LinkMount | None:
    inside = [m for m in link_mounts if os.path.commonpath([m.path, path]) == m.path]
    return max(inside, key=lambda m: len(m.path), default=None)


def _http_url(value) -> str:
    text = str(value).rstrip("/")
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"expected an http(s)://host[:port][/path] URL, got {value!r}")
    return text


def _cid(value) -> str:
    from multiformats import CID  # ~0.1 s to import: only for a tree with IPFS volumes
    try:
        return str(CID.decode(str(value)))
    except Exception:  # multiformats raises a different error for each way a CID can be wrong
        raise ValueError(f"expected ipfs://CID[/path] with a CIDv0 (Qm...) or CIDv1 (bafy...), got {value!r}") from None


def _ipfs_api_url(value) -> str:
    """A node's RPC API given as a URL or as a multiaddr (Kubo's and Bacalhau's `/ip4/127.0.0.1/tcp/5001`,
    `/dns4/host/tcp/443/https`), as a URL."""
    address = str(value)
    if "://" in address:
        return _http_url(address)
    parts = address.strip("/").split("/")
    if len(parts) not in (4, 5) or parts[0] not in ("ip4", "ip6", "dns", "dns4", "dns6") or parts[2] != "tcp" \
            or not parts[3].isdigit() or parts[4:] not in ([], ["http"], ["https"]):
        raise ValueError(f"expected a multiaddr such as /ip4/127.0.0.1/tcp/5001, or an http(s) URL, got {address!r}")
    host = f"[{parts[1]}]" if parts[0] == "ip6" else parts[1]
    return f"{parts[4] if parts[4:] else 'http'}://{host}:{parts[3]}"


def _web_url(value) -> str:
    parsed = urllib.parse.urlsplit(str(value))
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"expected an http(s)://host/path URL, got {redact_url(str(value))!r}")
    return str(value)


def _file_name(value) -> str:
    name = str(value)
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"expected a file name (no '/', not '.' or '..'), got {name!r}")
    return name


def _name_in_url(url: str) -> str:
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rpartition("/")[2])
    if not name:
        raise ValueError(f"{redact_url(url)!r} names no file; write {{ url: ..., name: ... }}")
    return _file_name(name)


def _json_key(value) -> dict:
    """A JSON key: the path of its file, else the JSON text itself. Errors never echo it: it is a secret."""
    text = str(value)
    path = os.path.expanduser(text.strip())
    if len(text) < 4096 and os.path.isfile(path):
        try:
            with open(path, encoding="utf-8") as stream:
                text = stream.read()
        except OSError as error:
            raise ValueError(f"cannot read {path}: {error.strerror}") from None
    try:
        info = json.loads(text)
    except ValueError:
        raise ValueError("expected the path of a JSON key file, or the JSON text itself; "
                         "it is neither an existing file nor valid JSON") from None
    if not isinstance(info, dict) or "type" not in info:
        raise ValueError("expected a Google JSON key, with a \"type\" such as service_account")
    return info


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


def _positive(value) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"expected a whole number above 0, got {value!r}")


def _string_map(value) -> dict[str, str]:
    if not isinstance(value, ConfigTree) or any(isinstance(v, (ConfigTree, list)) for v in value.values()):
        raise ValueError(f"expected an object of names and values, such as {{ ServerSideEncryption: AES256 }}, got {value!r}")
    return {_unquote(name): str(v) for name, v in value.items()}


def _request_payer(value) -> str:
    """S3's one payer a request can name: requester (the bucket's owner pays when a request names none)."""
    if str(value) != "requester":
        raise ValueError(f"expected requester, got {value!r}")
    return "requester"


def _regex(value) -> re.Pattern:
    try:
        return re.compile(str(value))
    except re.error as error:
        raise ValueError(f"not a valid regular expression ({error}): {value!r}") from None


def _sha256(value) -> bytes:
    """A SHA-256 digest written in hex (64 digits) or, as S3 reports it, in base64."""
    text = str(value).strip()
    try:
        digest = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        digest = b""
    if len(digest) != 32:
        raise ValueError(f"expected a SHA-256 digest in hex (64 digits) or base64, got {value!r}")
    return digest


def _verify(value) -> bool | str:
    """TLS verification: true, false, the path of a CA bundle, or the http(s) URL of one (ClearML's)."""
    if isinstance(value, str) and value.strip().lower() not in ("true", "yes", "on", "false", "no", "off"):
        if is_url(value):
            return _web_url(value)
        if "://" in value:
            raise ValueError(f"expected true, false, the path of a CA bundle or its http(s) URL, got {redact_url(value)!r}")
        return os.path.expanduser(value)
    return _boolean(value)


def _boolean(value) -> bool:
    """HOCON's conversion: env substitutions arrive as strings such as "true", "yes" or "off"."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in ("true", "yes", "on", "false", "no", "off"):
        return word in ("true", "yes", "on")
    raise ValueError(f"expected true or false, got {value!r}")


def _id_number(value) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"expected a numeric id (0 or more), got {value!r}")


def _unquote(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] == '"' else key


def _line_of(text: str, keys: tuple[str, ...]) -> int | None:
    """Where the key path is written in the main file, found by a scan (pyhocon keeps no positions)."""
    position, found = 0, None
    for key in (key for key in keys if not key.startswith("[")):  # a list's entries have no name to find
        pattern = r'(?:^|[\s{,.])"?(' + re.escape(key) + r')"?\s*[.:={]'
        found = re.compile(pattern, re.MULTILINE).search(text, position)
        if found is None:
            return None
        position = found.end(1)
    return text.count("\n", 0, found.start(1)) + 1 if found else None
