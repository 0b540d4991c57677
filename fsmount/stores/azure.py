"""AzureStore: Azure Blob Storage containers (and Azurite) through azure-storage-blob's aio client.

As for S3, data does not go through the SDK: reads, uploads and the blocks of large uploads are
requests to blob URLs carrying a SAS, sent by the RangeFetcher from worker threads. With an
account key the store makes a container SAS itself (renewed at half its life); with a SAS
token it uses that; with neither, it makes them with the user delegation key of an Azure AD
identity (stores/azure_ad.py), and when there is none (a public container) the URLs go bare.
Large files go up as staged blocks, sent in parallel and committed with a block list; blocks of
an upload that never completes are not deleted by hand: Azure drops uncommitted blocks after a week.
"""
import asyncio
import base64
import contextlib
import datetime
import email.utils
import threading
import time
import urllib.parse
import uuid
from xml.etree import ElementTree

import aiohttp
from azure.core.exceptions import (AzureError, ClientAuthenticationError, HttpResponseError, ResourceModifiedError,
                                   ResourceNotFoundError, ServiceRequestError, ServiceResponseError)
from azure.storage.blob import BlobBlock, ContainerSasPermissions, generate_container_sas
from azure.storage.blob.aio import BlobServiceClient

from fsmount.credentials import AzureCredentials
from fsmount.stores.base import (AccessDenied, ListPage, NotFound, ObjectInfo, PreconditionFailed, RangeRequest, Reply,
                                 Request, Store, Unavailable, content_md5, metadata_of, read_part, status_error, uploaded)
from fsmount.stores.ranges import RangeFetcher
from fsmount.stores.retries import RetryPolicy

_SAS_LIFETIME = datetime.timedelta(hours=2)
_SAS_PERMISSIONS = ContainerSasPermissions(read=True, add=True, create=True, write=True, delete=True, list=True)
_READ_ONLY_SAS_PERMISSIONS = ContainerSasPermissions(read=True, list=True)
_VERSION = {"x-ms-version": "2023-11-03"}  # of the REST API, for requests the SDK does not make
_COPY_POLL = 0.2  # seconds between looks at a copy the server finishes in the background


@contextlib.contextmanager
def _errors(what: str):
    """Turns whatever the SDK raises into the store's own errors, naming the request."""
    try:
        yield
    except ResourceNotFoundError:
        raise NotFound(what) from None
    except ResourceModifiedError:
        raise PreconditionFailed(what) from None
    except ClientAuthenticationError as error:
        raise AccessDenied(f"{what}: {error.error_code or error.status_code}") from None
    except (ServiceRequestError, ServiceResponseError, aiohttp.ClientError, asyncio.TimeoutError) as error:
        raise Unavailable(f"{what}: {type(error).__name__}") from None
    except HttpResponseError as error:
        raise status_error(error.status_code or 0, f"{what}: {error.error_code or error.status_code}",
                           error.response and error.response.headers.get("Retry-After")) from None
    except AzureError as error:
        raise Unavailable(f"{what}: {type(error).__name__}") from None


def _etag(text: str) -> str:
    """ETags quoted, as the server sends them in headers (its listings leave the quotes off)."""
    return text if text.startswith('"') else f'"{text}"'


def _name(entry: ElementTree.Element) -> str:
    """A listed name; one with characters XML cannot carry comes percent-encoded."""
    name = entry.find("Name")
    return urllib.parse.unquote(name.text) if name.get("Encoded") == "true" else name.text


def _info(key: str, size: int, etag: str, modified: datetime.datetime, metadata=None,
          content_type: str | None = None) -> ObjectInfo:
    return ObjectInfo(key, size, _etag(etag), int(modified.timestamp() * 1e9), metadata_of(metadata),
                      content_type=content_type)


class AzureStore(Store):
    def __init__(self, account: str, container: str, credentials: AzureCredentials, endpoint: str | None = None,
                 verify: bool | str = True, max_connections: int = 32, read_only: bool = False,
                 retries: RetryPolicy = RetryPolicy()):
        """ENDPOINT: the account's blob service URL (Azurite: http://127.0.0.1:10000/ACCOUNT). READ_ONLY: the SAS it
        signs grants reading and listing only, so a URL that leaks cannot change the container."""
        self.account = account
        self.container = container
        self.account_url = (endpoint or f"https://{account}.blob.core.windows.net").rstrip("/")
        self._credentials = credentials
        self.fetcher = RangeFetcher(max_connections, verify, retries)
        self._connection_verify = verify
        self._service: BlobServiceClient | None = None
        self._client = None
        self._identity = None  # DefaultAzureCredential (aio), when neither key nor SAS is given and it finds an identity
        self._delegation = None  # that identity's UserDelegation
        self._sas_lock = threading.Lock()
        self._sas: tuple[float, str] | None = None  # (renew after, query string)
        self._sas_permissions = _READ_ONLY_SAS_PERMISSIONS if read_only else _SAS_PERMISSIONS

    @property
    def identity(self) -> str:
        return f"azure:{self.account_url}/{self.container}"

    def source_url(self, info: ObjectInfo) -> str:
        return f"{self.account_url}/{self.container}/{urllib.parse.quote(info.key)}"


    async def open(self):
        key, sas = self._credentials.account_key, self._credentials.sas_token
        credential = {"account_name": self.account, "account_key": key} if key else sas
        if credential is None:
            from fsmount.stores import azure_ad
            self._identity = azure_ad.default_credential(self._connection_verify)
            credential = await azure_ad.first_identity(self._identity, self.container)
            if credential is None:
                await self._identity.close()
                self._identity = None
        # retry_total=0: the RetryPolicy retries the SDK's requests as it does the others
        self._service = BlobServiceClient(self.account_url, credential=credential, retry_total=0, connection_timeout=5,
                                          read_timeout=60, connection_verify=self._connection_verify)
        self._client = self._service.get_container_client(self.container)
        if self._identity is not None:
            self._delegation = azure_ad.UserDelegation(self._service, _SAS_LIFETIME * 2)
            async for attempt in self.fetcher.retries.attempts_of():
                with attempt, _errors(f"GET USER DELEGATION KEY {self.account_url}"):
                    await self._delegation.renew()

    async def close(self):
        self.fetcher.close()
        if self._service is not None:
            await self._service.close()
            self._service = self._client = None
        if self._identity is not None:
            await self._identity.close()
            self._identity = self._delegation = None

    def _url(self, key: str | None, query: str = "", fresh: bool = False) -> str:
        """The blob's URL (KEY None: the container's), with QUERY and the SAS that authorizes it."""
        path = f"{self.account_url}/{self.container}" + ("" if key is None else f"/{urllib.parse.quote(key)}")
        return f"{path}?{'&'.join(filter(None, (query, self._sas_query(fresh))))}"

    def _sas_query(self, fresh: bool) -> str:
        if self._delegation is not None:
            with _errors(f"GET USER DELEGATION KEY {self.account_url}"):
                self._delegation.ready(fresh)
        elif self._credentials.account_key is None:
            return (self._credentials.sas_token or "").lstrip("?")
        with self._sas_lock:
            if self._sas is None or self._sas[0] < time.monotonic() or fresh:
                expiry = datetime.datetime.now(datetime.timezone.utc) + _SAS_LIFETIME
                signing = ({"user_delegation_key": self._delegation.key} if self._delegation is not None
                           else {"account_key": self._credentials.account_key})
                token = generate_container_sas(self.account, self.container, permission=self._sas_permissions,
                                               expiry=expiry, **signing)
                self._sas = (time.monotonic() + _SAS_LIFETIME.total_seconds() / 2, token)
            return self._sas[1]

    def signs_at_once(self) -> bool:
        """The SAS configured, or one made with the account key or a user delegation key: at once, unless that key
        is due to be renewed (worker threads wait for that)."""
        return self._delegation is None or not self._delegation.due()

    def range_request(self, key: str, start: int, length: int, version: str, fresh: bool = False) -> RangeRequest:
        return RangeRequest(key, start, length, self._url(key, fresh=fresh), {"If-Match": version})

    async def stat(self, key: str, pinned: str | None = None) -> ObjectInfo:
        async for attempt in self.fetcher.retries.attempts_of():
            with attempt, _errors(f"HEAD {key}"):
                properties = await self._client.get_blob_client(key).get_blob_properties()
        return _info(key, properties.size, properties.etag, properties.last_modified, properties.metadata,
                     properties.content_settings.content_type)

    def list_page(self, prefix: str, delimiter: str = "/", token: str | None = None,
                  page_size: int | None = None) -> ListPage:
        """One List Blobs request, signed and sent from this (worker) thread and read with ElementTree: the SDK's
        deserializer, on the event loop, stalled the whole mount while it read each page."""
        query = {"restype": "container", "comp": "list", "prefix": prefix, "delimiter": delimiter, "marker": token,
                 "maxresults": page_size, "include": "metadata"}
        url = self._url(None, urllib.parse.urlencode({name: value for name, value in query.items() if value}))
        answer = ElementTree.fromstring(self.fetcher.send("GET", url, None, _VERSION, f"LIST {prefix}").body)
        objects = [_info(_name(blob), int(blob.findtext("Properties/Content-Length")), blob.findtext("Properties/Etag"),
                         email.utils.parsedate_to_datetime(blob.findtext("Properties/Last-Modified")),
                         {entry.tag: entry.text or "" for entry in blob.iterfind("Metadata/*")},
                         blob.findtext("Properties/Content-Type"))
                   for blob in answer.iterfind("Blobs/Blob")]
        prefixes = [_name(entry) for entry in answer.iterfind("Blobs/BlobPrefix")]
        return ListPage(objects, prefixes, answer.findtext("NextMarker") or None)

    def put_request(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> Request:
        headers = {"x-ms-blob-type": "BlockBlob", "Content-MD5": content_md5(data),
                   **{f"x-ms-meta-{name}": value for name, value in (metadata or {}).items()}}
        return Request("PUT", self._url(key), data, headers, f"PUT {key}")

    def put_result(self, key: str, size: int, metadata: dict[str, str] | None, reply: Reply) -> ObjectInfo:
        return uploaded(key, size, _etag(reply.headers["etag"]), metadata)

    async def start_upload(self, key: str, metadata: dict[str, str] | None = None) -> str:
        return uuid.uuid4().hex  # the blocks' ids begin with it; nothing is asked of the server until then

    def upload_part(self, key: str, upload: str, number: int, path: str, offset: int, size: int) -> str:
        block = f"{upload}-{number:06d}"  # a blob's block ids must all be of one length
        body = read_part(path, offset, size)
        query = f"comp=block&blockid={urllib.parse.quote(base64.b64encode(block.encode()).decode(), safe='')}"
        self.fetcher.send("PUT", self._url(key, query), body, {"Content-MD5": content_md5(body)},
                             f"PUT BLOCK {number} {key}")
        return block

    async def complete_upload(self, key: str, upload: str, parts: list[tuple[int, str]], size: int,
                              metadata: dict[str, str] | None = None) -> ObjectInfo:
        async for attempt in self.fetcher.retries.attempts_of():
            with attempt, _errors(f"COMMIT BLOCKS {key}"):
                response = await self._client.get_blob_client(key).commit_block_list(
                    [BlobBlock(block) for _, block in parts], metadata=metadata or {})
        return uploaded(key, size, _etag(response["etag"]), metadata)

    async def _copy(self, blob, source_key: str, key: str, metadata: dict[str, str] | None):
        if source_key == key and metadata is not None:
            await blob.set_blob_metadata(metadata)
            return
        if self._delegation is not None:
            await self._delegation.renew()
        copying = await blob.start_copy_from_url(self._url(source_key), metadata=metadata)
        while copying.get("copy_status") == "pending":  # a large copy between accounts' servers
            await asyncio.sleep(_COPY_POLL)
            copying = {"copy_status": (await blob.get_blob_properties()).copy.status}
        if copying.get("copy_status") not in ("success", None):
            raise Unavailable(f"COPY {source_key} {key}: {copying.get('copy_status')}")

    async def abort_upload(self, key: str, upload: str):
        pass  # uncommitted blocks are dropped by the server

    async def delete(self, key: str):
        with contextlib.suppress(NotFound):
            async for attempt in self.fetcher.retries.attempts_of():
                with attempt, _errors(f"DELETE {key}"):
                    await self._client.get_blob_client(key).delete_blob()

    async def copy(self, source_key: str, key: str, metadata: dict[str, str] | None = None) -> ObjectInfo:
        blob = self._client.get_blob_client(key)
        async for attempt in self.fetcher.retries.attempts_of():
            with attempt, _errors(f"COPY {source_key} {key}"):
                await self._copy(blob, source_key, key, metadata)
        return await self.stat(key)

