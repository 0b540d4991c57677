"""Reading HOCON files (fsmount's config, a ClearML configuration): typed values, credentials entries, and errors
that name the file, the line and the key."""
import base64
import binascii
import dataclasses
import json
import os
import re
import urllib.parse

import pyparsing
from pyhocon import ConfigFactory, ConfigTree
from pyhocon.exceptions import ConfigException

from fsmount.credentials import AzureCredentials, GcsCredentials, S3Credentials, parse_connection_string
from fsmount.multiaddr import api_url
from fsmount.stores.base import redact_url
from fsmount.stores.tls import is_url

S3_CREDENTIAL_KEYS = {"bucket", "host", "key", "secret", "region", "secure", "verify", "use_credentials_chain",
                      "multipart", "extra_args"}
AZURE_CREDENTIAL_KEYS = {"account_name", "account_key", "sas_token", "connection_string", "container_name"}
GCS_CREDENTIAL_KEYS = {"bucket", "subdir", "project", "credentials_json"}
_COMMENT_OR_STRING = re.compile(r'"(?:[^"\\\n]|\\.)*"|(#|//)[^\n]*')  # HOCON's comments; `//` in quotes is none


class ConfigError(Exception):
    """A bad config: names the file, the line where it is known, the key, and what was expected."""

    def __init__(self, file: str, key: str | None, message: str, line: int | None = None):
        super().__init__(message)
        self.file, self.key, self.message, self.line = file, key, message, line

    def __str__(self):
        where = self.file if self.line is None else f"{self.file}:{self.line}"
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


def parse_file(file: str) -> tuple[ConfigTree, str]:
    """The tree of the HOCON file FILE (an absolute path) and its text; ConfigError when it cannot be read or parsed."""
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
    return tree, text


class Reader:
    """Typed access to a parsed tree; every error it raises carries the key's dotted path."""

    def __init__(self, file: str, text: str):
        self.file, self.text = file, text
        self.ca_bundles: dict[str, str] = {}  # each CA bundle URL a `verify` names -> the first key naming it

    def error(self, keys: tuple[str, ...], message: str) -> ConfigError:
        return ConfigError(self.file, ".".join(keys), message, line_of(self.text, keys))

    def where(self, keys: tuple[str, ...]) -> str:
        """FILE:LINE KEY, as `fsmount check` names where a setting comes from."""
        line = line_of(self.text, keys)
        return f"{self.file}{'' if line is None else f':{line}'} {'.'.join(keys)}"

    def only(self, tree: ConfigTree, keys: tuple[str, ...], allowed: set[str]):
        for key in tree:
            if unquote(key) not in allowed:
                hint = " (a name with '.' must be quoted)" if keys[:1] == ("volumes",) else ""
                raise self.error(keys + (unquote(key),), f"unknown key; expected one of {', '.join(sorted(allowed))}{hint}")

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

    def entries(self, section: ConfigTree, keys: tuple[str, ...], allowed: set[str], example: str, read) -> list:
        """The list at KEYS (its last key in SECTION), each entry checked and READ(entry, keys)."""
        entries = section.get(keys[-1], [])
        if not isinstance(entries, list):
            raise self.error(keys, f"expected a list of {example}, got {entries!r}")
        read_entries = []
        for index, entry in enumerate(entries):
            where = keys + (f"[{index}]",)
            if not isinstance(entry, ConfigTree):
                raise self.error(where, f"expected an object such as {example}")
            self.only(entry, where, allowed)
            read_entries.append(read(entry, where))
        return read_entries

    def verify(self, tree: ConfigTree, keys) -> bool | str:
        """The `verify` key below KEYS; a CA bundle URL is noted, to be fetched when a daemon starts."""
        verify = self.value(tree, keys + ("verify",), tls_verify, True)
        if is_url(verify):
            self.ca_bundles.setdefault(verify, ".".join(keys + ("verify",)))
        return verify

    def s3_entry(self, entry: ConfigTree, keys) -> S3Credentials:
        return S3Credentials(
            bucket=self.value(entry, keys + ("bucket",), str, None),
            host=self.value(entry, keys + ("host",), str, None),
            key=self.value(entry, keys + ("key",), str, None),
            secret=self.value(entry, keys + ("secret",), str, None),
            region=self.value(entry, keys + ("region",), str, None),
            secure=self.value(entry, keys + ("secure",), boolean, True),
            verify=self.verify(entry, keys),
            use_credentials_chain=self.value(entry, keys + ("use_credentials_chain",), boolean, False),
            multipart=self.value(entry, keys + ("multipart",), boolean, True),
            extra_args=self.value(entry, keys + ("extra_args",), string_map, {}),
        )

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
            info=self.value(entry, keys + ("credentials_json",), json_key, None),
        )


def http_url(value) -> str:
    text = str(value).rstrip("/")
    parsed = urllib.parse.urlsplit(text)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"expected an http(s)://host[:port][/path] URL, got {value!r}")
    return text


def cid(value) -> str:
    from multiformats import CID  # slow to import: only for a tree with IPFS volumes
    try:
        return str(CID.decode(str(value)))
    except Exception:  # multiformats raises a different error for each way a CID can be wrong
        raise ValueError(f"expected ipfs://CID[/path] with a CIDv0 (Qm...) or CIDv1 (bafy...), got {value!r}") from None


def ipfs_api_url(value) -> str:
    """A node's RPC API given as a URL or as a multiaddr, as a URL."""
    address = str(value)
    return http_url(address) if "://" in address else api_url(address)


def web_url(value) -> str:
    parsed = urllib.parse.urlsplit(str(value))
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError(f"expected an http(s)://host/path URL, got {redact_url(str(value))!r}")
    return str(value)


def file_name(value) -> str:
    name = str(value)
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"expected a file name (no '/', not '.' or '..'), got {name!r}")
    return name


def name_in_url(url: str) -> str:
    name = urllib.parse.unquote(urllib.parse.urlsplit(url).path.rpartition("/")[2])
    if not name:
        raise ValueError(f"{redact_url(url)!r} names no file; write {{ url: ..., name: ... }}")
    return file_name(name)


def json_key(value) -> dict:
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


def positive(value) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    raise ValueError(f"expected a whole number above 0, got {value!r}")


def string_map(value) -> dict[str, str]:
    if not isinstance(value, ConfigTree) or any(isinstance(v, (ConfigTree, list)) for v in value.values()):
        raise ValueError(f"expected an object of names and values, such as {{ ServerSideEncryption: AES256 }}, got {value!r}")
    return {unquote(name): str(v) for name, v in value.items()}


def request_payer(value) -> str:
    """S3's one payer a request can name: requester (the bucket's owner pays when a request names none)."""
    if str(value) != "requester":
        raise ValueError(f"expected requester, got {value!r}")
    return "requester"


def regex(value) -> re.Pattern:
    try:
        return re.compile(str(value))
    except re.error as error:
        raise ValueError(f"not a valid regular expression ({error}): {value!r}") from None


def sha256(value) -> bytes:
    """A SHA-256 digest written in hex (64 digits) or, as S3 reports it, in base64."""
    text = str(value).strip()
    try:
        digest = bytes.fromhex(text) if len(text) == 64 else base64.b64decode(text, validate=True)
    except (ValueError, binascii.Error):
        digest = b""
    if len(digest) != 32:
        raise ValueError(f"expected a SHA-256 digest in hex (64 digits) or base64, got {value!r}")
    return digest


def tls_verify(value) -> bool | str:
    """TLS verification: true, false, the path of a CA bundle, or the http(s) URL of one (ClearML's)."""
    if isinstance(value, str) and value.strip().lower() not in ("true", "yes", "on", "false", "no", "off"):
        if is_url(value):
            return web_url(value)
        if "://" in value:
            raise ValueError(f"expected true, false, the path of a CA bundle or its http(s) URL, got {redact_url(value)!r}")
        return os.path.expanduser(value)
    return boolean(value)


def boolean(value) -> bool:
    """HOCON's conversion: env substitutions arrive as strings such as "true", "yes" or "off"."""
    if isinstance(value, bool):
        return value
    word = str(value).strip().lower()
    if word in ("true", "yes", "on", "false", "no", "off"):
        return word in ("true", "yes", "on")
    raise ValueError(f"expected true or false, got {value!r}")


def id_number(value) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    raise ValueError(f"expected a numeric id (0 or more), got {value!r}")


def unquote(key: str) -> str:
    return key[1:-1] if len(key) >= 2 and key[0] == key[-1] == '"' else key


def line_of(text: str, keys: tuple[str, ...]) -> int | None:
    """Where the key path is written in the main file, found by a scan (pyhocon keeps no positions) that skips
    comments."""
    text = _COMMENT_OR_STRING.sub(lambda match: " " * len(match[0]) if match[1] else match[0], text)
    position, found = 0, None
    for key in (key for key in keys if not key.startswith("[")):  # a list's entries have no name to find
        pattern = r'(?:^|[\s{,.])"?(' + re.escape(key) + r')"?\s*[.:={]'
        found = re.compile(pattern, re.MULTILINE).search(text, position)
        if found is None:
            return None
        position = found.end(1)
    return text.count("\n", 0, found.start(1)) + 1 if found else None
