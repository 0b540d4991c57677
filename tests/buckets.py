"""Buckets of each kind of store on the local servers, filled and checked from outside fsmount with each cloud's own client."""
import contextlib
import functools
import itertools
import urllib.parse

import urllib3

from conftest import require_kind
from fsmount.credentials import AzureCredentials, GcsCredentials
from fsmount.stores.azure import AzureStore
from fsmount.stores.base import Store
from fsmount.stores.gcs import GcsStore
from fsmount.stores.s3 import S3Endpoint, S3Store
from servers import AZURITE_ACCOUNT, AZURITE_KEY, FaultRelay, Server, azure_admin, azurite_endpoint, gcs_create_bucket, s3_admin

KINDS = ["s3", "azure", "gcs"]  # and "seaweedfs": S3 again, from a server with directories of its own, where a key
# cannot be both a file and a prefix or hold an empty, "." or ".." segment
SERVER_OF = {"s3": "moto", "seaweedfs": "seaweedfs", "azure": "azurite", "gcs": "fake_gcs"}  # each kind's session fixture
SERVER_SCRIPT_NAME = {"s3": "moto", "seaweedfs": "seaweedfs", "azure": "azurite", "gcs": "fake-gcs"}  # scripts/serve's
_names = itertools.count()


class Bucket:
    """A fresh bucket (or container) named NAME on SERVER."""
    kind = ""

    def __init__(self, server: Server, objects: dict[str, bytes] | None = None, name: str | None = None):
        """NAME: a bucket that is there already."""
        self.server = server
        self.name = name or f"volume-{next(_names)}"
        if name is None:
            self.create()
        for key, data in (objects or {}).items():
            self.put(key, data)

    def __str__(self):
        return self.name

    def create(self): ...

    def put(self, key: str, data: bytes): ...

    def get(self, key: str) -> bytes: ...

    def metadata(self, key: str) -> dict[str, str]: ...

    def keys(self) -> list[str]: ...

    def store(self) -> Store:
        """fsmount's client of the bucket."""

    def config(self, extra: str = "", url: str | None = None, volume: str = "bucket") -> str:
        """The config's `credentials` and `volumes` for a VOLUME of the whole bucket, with EXTRA keys, reaching
        the server at URL (a Proxy's) or its own."""


class S3Bucket(Bucket):
    kind = "s3"

    @functools.cached_property
    def admin(self):
        return s3_admin(self.server)

    def create(self):
        self.admin.create_bucket(Bucket=self.name)

    def put(self, key, data):
        self.admin.put_object(Bucket=self.name, Key=key, Body=data)

    def get(self, key):
        return self.admin.get_object(Bucket=self.name, Key=key)["Body"].read()

    def metadata(self, key):
        return self.admin.head_object(Bucket=self.name, Key=key)["Metadata"]

    def keys(self):
        return [entry["Key"] for entry in self.admin.list_objects_v2(Bucket=self.name).get("Contents", [])]

    def store(self):
        return S3Store(self.name, S3Endpoint(self.server.url, key="test", secret="test"))

    def config(self, extra="", url=None, volume="bucket"):
        return f"""credentials {{ s3: [ {{ bucket: {self.name}, key: test, secret: test }} ] }}
            volumes {{ {volume} {{ source: "s3://{self.name}/", endpoint: "{url or self.server.url}", {extra} }} }}"""


class SeaweedFSBucket(S3Bucket):
    kind = "seaweedfs"


class AzureBucket(Bucket):
    kind = "azure"

    @functools.cached_property
    def admin(self):
        return azure_admin(self.server).get_container_client(self.name)

    def create(self):
        self.admin.create_container()

    def put(self, key, data):
        self.admin.upload_blob(key, data, overwrite=True)

    def get(self, key):
        return self.admin.download_blob(key).readall()

    def metadata(self, key):
        return dict(self.admin.get_blob_client(key).get_blob_properties().metadata)

    def keys(self):
        return sorted(blob.name for blob in self.admin.list_blobs())

    def store(self):
        return AzureStore(AZURITE_ACCOUNT, self.name, AzureCredentials(AZURITE_ACCOUNT, account_key=AZURITE_KEY),
                          endpoint=azurite_endpoint(self.server))

    def config(self, extra="", url=None, volume="bucket"):
        endpoint = f"{url}/{AZURITE_ACCOUNT}" if url else azurite_endpoint(self.server)
        return f"""credentials {{ azure: [ {{ account_name: {AZURITE_ACCOUNT}, account_key: "{AZURITE_KEY}" }} ] }}
            volumes {{ {volume} {{ source: "azure://{self.name}/", endpoint: "{endpoint}", {extra} }} }}"""


class GcsBucket(Bucket):
    kind = "gcs"

    def create(self):
        gcs_create_bucket(self.server, self.name)

    def _object(self, key: str) -> str:
        return f"{self.server.url}/storage/v1/b/{self.name}/o/{urllib.parse.quote(key, safe='')}"

    def put(self, key, data):
        url = f"{self.server.url}/upload/storage/v1/b/{self.name}/o?uploadType=media&name={urllib.parse.quote(key, safe='')}"
        assert urllib3.request("POST", url, body=data).status == 200

    def get(self, key):
        response = urllib3.request("GET", f"{self._object(key)}?alt=media")
        assert response.status == 200, f"{key}: {response.status}"
        return response.data

    def metadata(self, key):
        return urllib3.request("GET", self._object(key)).json().get("metadata", {})

    def keys(self):
        return sorted(item["name"] for item in
                      urllib3.request("GET", f"{self.server.url}/storage/v1/b/{self.name}/o").json().get("items", []))

    def store(self):
        return GcsStore(self.name, GcsCredentials(), endpoint=self.server.url)

    def config(self, extra="", url=None, volume="bucket"):
        return f"""volumes {{ {volume} {{ source: "gs://{self.name}/", endpoint: "{url or self.server.url}", {extra} }} }}"""


BUCKETS = {bucket.kind: bucket for bucket in (S3Bucket, SeaweedFSBucket, AzureBucket, GcsBucket)}


def new_bucket(request, kind: str, objects: dict[str, bytes] | None = None) -> Bucket:
    """A fresh bucket of KIND on the session's server of that kind (a fixture of REQUEST), holding OBJECTS."""
    # checked here rather than when the session fixture starts the server: pytest would keep that failure for every
    # later test of the session
    require_kind("server", "mount", doing=f"uses {SERVER_OF[kind]}")
    return BUCKETS[kind](request.getfixturevalue(SERVER_OF[kind]), objects)


@contextlib.contextmanager
def relayed_bucket(request, kind: str, objects: dict[str, bytes] | None = None):
    """(a fresh bucket of KIND holding OBJECTS, a FaultRelay in front of its server: it lets everything through, and
    counts, until faults are set)."""
    bucket = new_bucket(request, kind, objects)
    relay = FaultRelay(bucket.server.port, kind=kind)
    try:
        yield bucket, relay
    finally:
        relay.close()
