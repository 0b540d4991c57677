"""Reading a volume's source: the s3://, azure://, gs://, ipfs:// and http(s):// volumes, each with the keys its
store takes and the credentials chosen for it."""
import os
import re
import urllib.parse

from pyhocon import ConfigTree

from fsmount.config.hocon import (ConfigError, Reader, cid, file_name, http_url, ipfs_api_url, name_in_url, positive,
                                  regex, request_payer, sha256, string_map, web_url)
from fsmount.config.schema import AzureSource, GcsSource, IpfsSource, S3Source, UrlSource, VolumeConfig
from fsmount.credentials import (AzureCredentials, GcsCredentials, azure_environment_credentials, choose_azure_credentials,
                                 choose_gcs_credentials, choose_s3_credentials)
from fsmount.units import parse_ttl

IPFS_API_ENV = "FSMOUNT_IPFS_API"
VOLUME_KEYS = {"source", "mode", "path"}
_OBJECT_VOLUME_KEYS = VOLUME_KEYS | {"endpoint", "max_connections", "rename_limit", "filter", "metadata_ttl"}
VOLUME_KEYS_OF = {"s3": _OBJECT_VOLUME_KEYS | {"extra_args", "request_payer", "version_id", "checksum_sha256"},
                  "azure": _OBJECT_VOLUME_KEYS | {"verify"}, "gs": _OBJECT_VOLUME_KEYS | {"verify"},
                  "ipfs": VOLUME_KEYS | {"api", "gateway", "max_connections", "verify"}}
_URL_VOLUME_KEYS = VOLUME_KEYS | {"name", "max_connections", "verify"}
_GCS_EMULATOR_ENV = "STORAGE_EMULATOR_HOST"


class SourceReader(Reader):
    """The keys of each kind of store volume."""

    s3_connections: int  # the S3 volumes' default max_connections, set with the credentials

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
