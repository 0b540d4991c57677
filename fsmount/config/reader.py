"""The configuration file: HOCON read by pyhocon, every key checked, turned into the mount table (each store
volume's own keys are read by `SourceReader`, in sources.py)."""
import fnmatch
import os
import urllib.parse
from dataclasses import replace

from pyhocon import ConfigFactory, ConfigTree

from fsmount.config.clearml import ClearmlSettings, PathSubstitution, path_substitutions, read_clearml
from fsmount.config.hocon import (AZURE_CREDENTIAL_KEYS, GCS_CREDENTIAL_KEYS, S3_CREDENTIAL_KEYS, ConfigError, boolean,
                                  id_number, parse_file, positive, unquote)
from fsmount.config.schema import CacheConfig, Config, LinkMount, PublishTarget, StagingConfig, VolumeConfig
from fsmount.config.sources import VOLUME_KEYS, VOLUME_KEYS_OF, SourceReader
from fsmount.stores.base import redact_url
from fsmount.stores.parts import PART_GRAIN, SMALLEST_PART
from fsmount.stores.retries import RetryPolicy
from fsmount.stores.tls import is_url
from fsmount.units import parse_duration, parse_listen, parse_size, parse_ttl

LINK_MOUNTS_ENV = "FSMOUNT_LINK_MOUNTS"
DEFAULT_BLOCK_SIZE = 8 * 2**20  # of the block cache
DEFAULT_PARALLEL_PARTS = 4  # of an upload in parts, sent at once
DEFAULT_WRITE_BACK = 2.0  # seconds: rsync, tar and git rename or remove what they closed within milliseconds

_TOP_KEYS = {"mountpoint", "allow_other", "uid", "gid", "attr_timeout", "log", "link_mounts", "cache", "staging",
             "retries", "credentials", "volumes", "clearml", "path_substitution", "metrics"}
_LOG_KEYS = {"file", "level"}
_CACHE_KEYS = {"dir", "max_size", "block_size", "read_ahead", "metadata_ttl"}
_STAGING_KEYS = {"dir", "max_size", "multipart_threshold", "part_size", "parallel_parts", "write_back"}
_RETRIES_KEYS = {"attempts", "max_time"}
_METRICS_KEYS = {"listen"}
_CREDENTIAL_KINDS = {"s3", "azure", "gcs"}
_LOG_LEVELS = ("debug", "info", "warning", "error")


def load_config(file: str) -> Config:
    """Reads and checks FILE; raises ConfigError on the first problem, so nothing is half mounted."""
    file = os.path.abspath(file)
    tree, text = parse_file(file)
    return _Reader(file, text).config(tree)


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


class _Reader(SourceReader):
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
        if part_size is not None and (part_size < SMALLEST_PART or part_size % PART_GRAIN):
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
        self.only(spec, keys, VOLUME_KEYS_OF.get(url.scheme, VOLUME_KEYS))
        if source is None:
            raise self.error(keys, "missing key 'source', such as source: \"file:///srv/data\"")
        mode = self.value(spec, keys + ("mode",), str, "ro")
        if mode not in ("ro", "rw"):
            raise self.error(keys + ("mode",), f"expected ro or rw, got {mode!r}")
        if url.scheme in VOLUME_KEYS_OF:
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
