"""A ClearML configuration file (clearml.conf), as it is: its storage credentials, S3 bounds, path substitutions and
cache directory, each remembering where in the file it was written, for `fsmount check`.

Only the sections fsmount takes are read (`sdk.aws`, `sdk.azure.storage`, `sdk.google.storage`, `sdk.storage`); the rest
of the file is ClearML's own. ClearML writes "" for what it leaves unset, so an empty value counts as none.
"""
import dataclasses
import os
import urllib.parse
from dataclasses import dataclass

from pyhocon import ConfigTree

from fsmount.credentials import S3Credentials
from fsmount.config.hocon import AZURE_CREDENTIAL_KEYS, GCS_CREDENTIAL_KEYS, S3_CREDENTIAL_KEYS, Reader, parse_file, positive

_S3 = ("sdk", "aws", "s3")
_BOTO3 = ("sdk", "aws", "boto3")
_AZURE = ("sdk", "azure", "storage")
_GCS = ("sdk", "google", "storage")
_STORAGE = ("sdk", "storage")


@dataclass(frozen=True)
class Taken:
    """One setting read from a ClearML file: what it is, its secrets masked, and where it is written."""
    what: str
    where: str  # "FILE:LINE KEY"
    setting: str | None = None  # the fsmount key it is the default of, which wins when the config has it


@dataclass(frozen=True)
class PathSubstitution:
    registered_prefix: str
    local_prefix: str  # a file:// URL or an absolute path
    where: str  # the file, line and key of the rule

    def local_path(self, source: str) -> str | None:
        """Where SOURCE lies under the local prefix, if it starts with the registered prefix (whole names only)."""
        registered = self.registered_prefix.rstrip("/")
        if source.rstrip("/") != registered and not source.startswith(registered + "/"):
            return None
        local = urllib.parse.urlsplit(self.local_prefix)
        root = urllib.parse.unquote(local.path) if local.scheme == "file" else self.local_prefix
        return os.path.normpath(root.rstrip("/") + urllib.parse.unquote(source.rstrip("/")[len(registered):]))


@dataclass(frozen=True)
class ClearmlSettings:
    file: str
    credentials: dict[str, list]  # as fsmount's `credentials`: s3, azure and gcs entries
    max_connections: int | None  # sdk.aws.boto3.pool_connections: each S3 volume's pool
    parallel_parts: int | None  # sdk.aws.boto3.max_multipart_concurrency: parts of one upload at once
    cache_dir: str | None
    path_substitution: tuple[PathSubstitution, ...]
    taken: tuple[Taken, ...]


def read_clearml(file: str) -> ClearmlSettings:
    """The settings of the ClearML file FILE (an absolute path); ConfigError naming its file, line and key."""
    tree, text = parse_file(file)
    return _ClearmlReader(file, text).settings(tree)


def path_substitutions(reader: Reader, tree: ConfigTree, keys: tuple[str, ...]) -> tuple[PathSubstitution, ...]:
    """The list of `{ registered_prefix, local_prefix }` at KEYS (its last key in TREE), in order: the first that
    fits a source applies, as in ClearML."""
    def read(entry: ConfigTree, where) -> PathSubstitution:
        prefixes = [reader.value(entry, where + (key,), str, None) for key in ("registered_prefix", "local_prefix")]
        if None in prefixes:
            raise reader.error(where, "expected both registered_prefix and local_prefix")
        local = urllib.parse.urlsplit(prefixes[1])
        if not (local.scheme == "file" and local.path.startswith("/") or prefixes[1].startswith("/")):
            raise reader.error(where + ("local_prefix",), f"expected file:///absolute/path, got {prefixes[1]!r}")
        return PathSubstitution(*prefixes, where=reader.where(where))

    return tuple(reader.entries(tree, keys, {"registered_prefix", "local_prefix"},
                                '{ registered_prefix: "s3://bucket/data", local_prefix: "file:///mnt/data" }', read))


class _ClearmlReader(Reader):
    def value(self, tree: ConfigTree, keys: tuple[str, ...], convert, default):
        return default if tree.get(keys[-1], None) == "" else super().value(tree, keys, convert, default)

    def settings(self, tree: ConfigTree) -> ClearmlSettings:
        self.taken: list[Taken] = []
        s3, boto3 = self.subtree(tree, _S3), self.subtree(tree, _BOTO3)
        s3_default = self.s3_entry(s3, _S3)
        s3_entries = [self.inherit(entry, s3_default) for entry in self.entries(
            s3, _S3 + ("credentials",), S3_CREDENTIAL_KEYS, '{ bucket: ..., key: ..., secret: ... }', self.s3_entry)]
        for index, entry in enumerate(s3_entries):
            self.took(_s3_summary(entry), _S3 + ("credentials", f"[{index}]"))
        self.took(f"s3 default: {_s3_summary(s3_default)}", _S3)
        azure = self.entries(self.subtree(tree, _AZURE), _AZURE + ("containers",), AZURE_CREDENTIAL_KEYS,
                             "{ account_name: ..., account_key: ... }", self.azure_entry)
        for index, entry in enumerate(azure):
            self.took(f"azure account {entry.account_name}" + (f", container {entry.container}" if entry.container else "")
                      + (", key ***" if entry.account_key else ""), _AZURE + ("containers", f"[{index}]"))
        gcs_section = self.subtree(tree, _GCS)
        gcs = self.entries(gcs_section, _GCS + ("credentials",), GCS_CREDENTIAL_KEYS,
                           "{ bucket: ..., credentials_json: ... }", self.gcs_entry)
        for index, entry in enumerate(gcs):
            self.took(f"gcs bucket {entry.bucket}" + (f"/{entry.subdir}" if entry.subdir else "")
                      + (", credentials_json ***" if entry.info else ""), _GCS + ("credentials", f"[{index}]"))
        gcs_default = self.gcs_entry(gcs_section, _GCS)
        if gcs_default.project or gcs_default.info:
            gcs.append(dataclasses.replace(gcs_default, bucket=None, subdir=None))
            self.took(f"gcs default: project {gcs_default.project}" + (", credentials_json ***" if gcs_default.info else ""),
                      _GCS)
        storage = self.subtree(tree, _STORAGE)
        cache_dir = self.value(self.subtree(storage, ("cache",)), _STORAGE + ("cache", "default_base_dir"), str, None)
        substitutions = path_substitutions(self, storage, _STORAGE + ("path_substitution",))
        for rule in substitutions:
            self.taken.append(Taken(f"path_substitution {rule.registered_prefix} -> {rule.local_prefix}", rule.where))
        bounds = [self.value(boto3, _BOTO3 + (key,), positive, None) for key in ("pool_connections",
                                                                                 "max_multipart_concurrency")]
        for value, setting, key in ((cache_dir, "cache.dir", _STORAGE + ("cache", "default_base_dir")),
                                    (bounds[0], "volumes.NAME.max_connections", _BOTO3 + ("pool_connections",)),
                                    (bounds[1], "staging.parallel_parts", _BOTO3 + ("max_multipart_concurrency",))):
            if value is not None:
                self.took(f"{setting}: {value}", key, setting)
        return ClearmlSettings(file=self.file, credentials={"s3": s3_entries + [s3_default], "azure": azure, "gcs": gcs},
                               max_connections=bounds[0], parallel_parts=bounds[1],
                               cache_dir=cache_dir and os.path.expanduser(cache_dir),
                               path_substitution=substitutions, taken=tuple(self.taken))

    def subtree(self, tree: ConfigTree, keys: tuple[str, ...]) -> ConfigTree:
        """The object at KEYS below TREE, or an empty one."""
        for depth, key in enumerate(keys):
            tree = tree.get(key, None)
            if tree is None:
                return ConfigTree()
            if not isinstance(tree, ConfigTree):
                raise self.error(keys[:depth + 1], f"expected an object {{ ... }}, got {tree!r}")
        return tree

    @staticmethod
    def inherit(entry: S3Credentials, default: S3Credentials) -> S3Credentials:
        """As ClearML does, a bucket's entry takes what it leaves unset from the default in `sdk.aws.s3`."""
        keyless = entry.key is None and not entry.use_credentials_chain
        return dataclasses.replace(entry, key=entry.key if not keyless else default.key,
                                   secret=entry.secret if not keyless else default.secret,
                                   region=entry.region or default.region,
                                   extra_args=default.extra_args | entry.extra_args)

    def took(self, what: str, keys: tuple[str, ...], setting: str | None = None):
        self.taken.append(Taken(what, self.where(keys), setting))


def _s3_summary(entry: S3Credentials) -> str:
    place = " on ".join(filter(None, (entry.bucket and f"bucket {entry.bucket}", entry.host and f"host {entry.host}")))
    access = "credentials chain" if entry.use_credentials_chain or entry.key is None else f"key {_masked(entry.key)}"
    options = [f"region {entry.region}"] * bool(entry.region) + ["multipart false"] * (not entry.multipart) + \
        ["secure false"] * (not entry.secure) + [f"verify {entry.verify}"] * (entry.verify is not True) + \
        [f"extra_args {', '.join(sorted(entry.extra_args))}"] * bool(entry.extra_args)
    return ", ".join(filter(None, [place, access, *options]))


def _masked(key: str) -> str:
    """An access key's first four characters, as the AWS console shows it; a secret is never shown."""
    return f"{key[:4]}***"

