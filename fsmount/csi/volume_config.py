"""A CSI volume as an fsmount config: a PersistentVolume's attributes and node-publish secret over the node config's
defaults, written as the config file of the one daemon that serves it; its errors in the volume's terms, secrets
masked."""
import contextlib
import copy
import hashlib
import hmac
import json
import os
import urllib.parse
from dataclasses import dataclass

from pyhocon import ConfigTree

from fsmount.config import load_config
from fsmount.config.hocon import ConfigError, parse_file, unquote
from fsmount.units import parse_size

VOLUME = "volume"  # the volume's name in its daemon's tree: targets are bind mounts of MOUNTPOINT/volume
CACHE_SIZE = "cache_size"  # the plugin's own attribute: the volume's share of the node's cache bound
KUBELET_PREFIX = "csi.storage.k8s.io/"  # attributes kubelet adds (pod info, tokens): not the volume's
_NUMBERS = {"max_connections", "rename_limit"}  # attributes that are whole numbers in a config
_OBJECTS = {"extra_args"}  # attributes (and secret keys) that are objects, written as JSON
_PLACED_BY_PLUGIN = {"path"}
_SECRET_KIND = {"s3": "s3", "azure": "azure", "gs": "gcs"}  # a source's scheme -> its credentials list
_NODE_ONLY = {"volumes", "mountpoint"}
_SHORTEST_MASKED = 4  # secret values shorter than this (true, no, 1) are left in messages: they give nothing away


class InvalidVolume(Exception):
    """A volume whose attributes, secret or mount flags fsmount cannot mount; the message holds no secret."""


@dataclass(frozen=True)
class NodeDefaults:
    """The node config: what every volume's config starts from, and the bounds the node's volumes share."""
    tree: dict
    cache_dir: str
    cache_bound: int
    staging_dir: str | None  # None: each volume's staging lies in its cache directory
    staging_bound: int


def read_node_config(file: str | None, state_dir: str) -> NodeDefaults:
    """The node config FILE (None: fsmount's defaults, the cache in STATE_DIR/cache), checked as fsmount checks a
    config, with one probe volume; raises ConfigError."""
    if file is None:
        tree, file_name = ConfigTree(), "(no --config)"
    else:
        file_name = os.path.abspath(file)
        tree, _ = parse_file(file_name)
    clash = sorted(_NODE_ONLY & {unquote(key) for key in tree})
    if clash:
        raise ConfigError(file_name, clash[0], "the node config holds defaults only: each volume comes from a "
                                               "PersistentVolume")
    plain = tree.as_plain_ordered_dict()
    if "clearml" in plain:
        plain["clearml"] = os.path.join(os.path.dirname(file_name), os.path.expanduser(str(plain["clearml"])))
    state_dir = os.path.abspath(state_dir)
    if isinstance(plain.get("cache", {}), dict):
        plain["cache"] = {"dir": os.path.join(state_dir, "cache"), **plain.get("cache", {})}
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    probe = os.path.join(state_dir, "node-config-check.conf")
    write_private(probe, {**copy.deepcopy(plain), "volumes": {"probe": {"source": "http://localhost/probe"}}})
    try:
        config = load_config(probe)
    except ConfigError as error:
        raise ConfigError(file_name, error.key, error.message) from None
    finally:
        os.unlink(probe)
    own_staging = isinstance(plain.get("staging"), dict) and "dir" in plain["staging"]
    return NodeDefaults(tree=plain, cache_dir=os.path.abspath(config.cache.dir), cache_bound=config.cache.max_size,
                        staging_dir=os.path.abspath(config.staging.dir) if own_staging else None,
                        staging_bound=config.staging.max_size)


def volume_attributes(context: dict[str, str]) -> dict[str, str]:
    """The volume's own attributes: the request's volume_context less what kubelet adds."""
    return {key: value for key, value in context.items() if not key.startswith(KUBELET_PREFIX)}


def cache_share(attributes: dict[str, str]) -> int | None:
    """The volume's `cache_size` attribute, if it gives one."""
    if CACHE_SIZE not in attributes:
        return None
    try:
        return parse_size(attributes[CACHE_SIZE])
    except ValueError as error:
        raise InvalidVolume(f"volume attribute {CACHE_SIZE}: {error}") from None


def daemon_key(salt: bytes, volume_id: str, attributes: dict, secrets: dict, options: str, read_only: bool) -> str:
    """Names the daemon that serves this volume so: the same volume, credentials, flags and mode share one. Keyed by
    the node's own SALT, so the name tells nothing of the secrets."""
    blob = json.dumps([volume_id, attributes, secrets, options, read_only], sort_keys=True)
    return hmac.new(salt, blob.encode(), hashlib.sha256).hexdigest()[:24]


def volume_config(node: NodeDefaults, attributes: dict[str, str], secrets: dict[str, str], read_only: bool,
                  cache_dir: str, cache_size: int, staging_size: int, log_file: str) -> dict:
    """The config of the daemon serving one volume, as plain data (JSON, which HOCON reads as it is)."""
    config = copy.deepcopy(node.tree)
    config["allow_other"] = True  # the pods' users are not the daemon's
    config["cache"] = {**config.get("cache", {}), "dir": cache_dir, "max_size": cache_size}
    config["staging"] = {**config.get("staging", {}), "dir": staging_dir(node, cache_dir), "max_size": staging_size}
    config["log"] = {**config.get("log", {}), "file": log_file}
    volume = {}
    for key, value in attributes.items():
        if key in _PLACED_BY_PLUGIN:
            raise InvalidVolume(f"volume attribute {key}: the plugin places the volume at the target path")
        if key != CACHE_SIZE:
            volume[key] = _typed(key, value, "volume attribute")
    if read_only:
        volume["mode"] = "ro"
    config["volumes"] = {VOLUME: volume}
    if secrets and "source" in attributes:  # without one, the config's check says what is missing
        scheme = urllib.parse.urlsplit(attributes["source"]).scheme
        if scheme not in _SECRET_KIND:
            raise InvalidVolume("a node-publish secret is for s3://, azure:// and gs:// volumes only")
        entry = {key: _typed(key, value, "secret") for key, value in secrets.items()}
        config["credentials"] = {**config.get("credentials", {}), _SECRET_KIND[scheme]: [entry]}
    return config


def staging_dir(node: NodeDefaults, cache_dir: str) -> str:
    """Where the volume caching in CACHE_DIR stages its files: a directory of its own, as its cache."""
    if node.staging_dir:
        return os.path.join(node.staging_dir, os.path.basename(cache_dir))
    return os.path.join(cache_dir, "staging")


def check(config_file: str, secrets: dict[str, str]):
    """Reads the daemon's config as the daemon will; InvalidVolume, in the volume's terms, when fsmount refuses it."""
    try:
        load_config(config_file)
    except ConfigError as error:
        raise InvalidVolume(mask(f"{_where(error.key)}: {error.message}", secrets)) from None


def _where(key: str | None) -> str:
    """A key of the daemon's config as the PersistentVolume names it."""
    if not key or key == f"volumes.{VOLUME}":
        return "volume attributes"
    if key.startswith(f"volumes.{VOLUME}."):
        return f"volume attribute {key.removeprefix(f'volumes.{VOLUME}.')}"
    if key.startswith("credentials."):
        name = key.rpartition("].")[2] if "]." in key else ""
        return f"secret {name}" if name else "secret"
    return f"node config {key}"


def _typed(key: str, value: str, what: str):
    """An attribute's string as the config's value: numbers as numbers, objects (JSON) as objects."""
    if key in _NUMBERS and value.strip().isdigit():
        return int(value)
    if key in _OBJECTS:
        try:
            parsed = json.loads(value)
        except ValueError:
            parsed = None
        if not isinstance(parsed, dict):
            raise InvalidVolume(f"{what} {key}: expected a JSON object, such as "
                                '{"ServerSideEncryption": "AES256"}')
        return parsed
    return value


def mask(text: str, secrets: dict[str, str]) -> str:
    """TEXT with every secret value in it replaced by ***."""
    for value in sorted(secrets.values(), key=len, reverse=True):
        if len(value) >= _SHORTEST_MASKED:
            text = text.replace(value, "***")
    return text


def write_private(path: str, config: dict):
    """Writes CONFIG to PATH for its owner alone (it may hold credentials), whole or not at all."""
    temporary = f"{path}.new"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temporary)
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "w") as stream:
        json.dump(config, stream, indent=2)
    os.replace(temporary, path)
