"""GcsStore: Google Cloud Storage buckets (and fake-gcs-server) through the JSON API, over aiohttp.

The JSON API directly rather than gcloud-aio-storage: fsmount needs six of its calls (object
metadata, list, delete, rewrite, and starting and finishing a resumable upload), while data goes
as for the other stores, as requests sent by the RangeFetcher from worker threads; the SDK's
uploads take the whole file in memory. Tokens come from google-auth (service account keys, user
logins, GOOGLE_APPLICATION_CREDENTIALS, the metadata server), refreshed in a worker thread.

Versions are generations. A read names the generation it fills (`generation=`), so its bytes
never change; once that generation is gone the server answers 404, which here means
PreconditionFailed. Large files go up as resumable uploads: their parts are sent in order, each
part but the last a multiple of 256 KiB, the last one saying the total.
"""
import asyncio
import contextlib
import datetime
import json
import logging
import threading
import urllib.parse

import aiohttp
import google.auth
import google.auth.exceptions
import google.auth.transport.urllib3
import urllib3

from fsmount.credentials import GcsCredentials
from fsmount.stores.base import (AccessDenied, CertificateRefused, ListPage, NotFound, ObjectInfo, RangeRequest, Reply, Request, Store,
                                 Unavailable, content_md5, fetch_credentials, metadata_of, read_part, status_error,
                                 unanswered)
from fsmount.stores.parts import GCS_PART_SIZE, PART_GRAIN
from fsmount.stores.ranges import RangeFetcher
from fsmount.stores.retries import RetryPolicy
from fsmount.stores.tls import aiohttp_tls, urllib3_tls

log = logging.getLogger(__name__)

GOOGLE_API = "https://storage.googleapis.com"
_SCOPES = ["https://www.googleapis.com/auth/devstorage.read_write"]
_BOUNDARY = "fsmount-object-boundary"


def _info(resource: dict) -> ObjectInfo:
    updated = datetime.datetime.fromisoformat(resource["updated"])
    return ObjectInfo(resource["name"], int(resource["size"]), str(resource["generation"]),
                      int(updated.timestamp() * 1e9), metadata_of(resource.get("metadata")),
                      content_type=resource.get("contentType"))


class GcsStore(Store):
    parts_in_order = True
    part_size = GCS_PART_SIZE

    def __init__(self, bucket: str, credentials: GcsCredentials, endpoint: str | None = None,
                 verify: bool | str = True, max_connections: int = 32, retries: RetryPolicy = RetryPolicy()):
        """ENDPOINT: an emulator's URL; None, Google's. Credentials with neither a key nor the default chain:
        anonymous (public buckets, emulators)."""
        self.bucket = bucket
        self.api = (endpoint or GOOGLE_API).rstrip("/")
        self._credentials = credentials
        self._verify = verify
        self.fetcher = RangeFetcher(max_connections, verify, retries)
        self._max_connections = max_connections
        self._token_pool = urllib3.PoolManager(**urllib3_tls(verify))  # google-auth's token requests
        self._token_lock = threading.Lock()
        self._google = None  # google-auth's credentials; None: anonymous
        self._session: aiohttp.ClientSession | None = None

    @property
    def identity(self) -> str:
        return f"gcs:{self.api}/{self.bucket}"

    def source_url(self, info: ObjectInfo) -> str:
        return f"gs://{self.bucket}/{info.key}"


    async def open(self):
        self._google = await fetch_credentials(self._load_credentials)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self._max_connections, ssl=aiohttp_tls(self._verify)),
            timeout=aiohttp.ClientTimeout(sock_connect=5, sock_read=60), raise_for_status=False)

    def _load_credentials(self):
        chosen = self._credentials
        try:
            if chosen.info is not None:
                return google.auth.load_credentials_from_dict(chosen.info, scopes=_SCOPES,
                                                              quota_project_id=chosen.project)[0]
            if chosen.use_default_chain:
                return google.auth.default(scopes=_SCOPES, quota_project_id=chosen.project)[0]
        except (google.auth.exceptions.DefaultCredentialsError, ValueError) as error:
            if chosen.info is not None:
                raise AccessDenied(f"bucket {self.bucket}: unusable credentials_json: {type(error).__name__}") from None
            log.info("no Google credentials found (%s); gs://%s is read anonymously", error, self.bucket)
        return None  # anonymous: nothing fits, or nothing is wanted

    async def close(self):
        self.fetcher.close()
        self._token_pool.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None

    def _authorization(self, fresh: bool = False) -> dict[str, str]:
        """The bearer header, its token refreshed when it is near expiry. Blocks while refreshing."""
        if self._google is None:
            return {}
        with self._token_lock:
            if fresh or not self._google.valid:
                try:
                    self._google.refresh(google.auth.transport.urllib3.Request(self._token_pool))
                except google.auth.exceptions.GoogleAuthError as error:
                    failure = unanswered(f"getting a token for {self.bucket}", error)
                    if isinstance(failure, CertificateRefused):
                        raise failure from None
                    raise AccessDenied(f"getting a token for {self.bucket}: {type(error).__name__}") from None
            return {"Authorization": f"Bearer {self._google.token}"}

    async def _headers(self) -> dict[str, str]:
        if self._google is None or self._google.valid:
            return self._authorization()
        return await fetch_credentials(self._authorization)

    def _object_url(self, key: str) -> str:
        return f"{self.api}/storage/v1/b/{self.bucket}/o/{urllib.parse.quote(key, safe='')}"

    async def _call(self, method: str, url: str, what: str, body: dict | None = None,
                    params: dict | None = None) -> tuple[dict, dict]:
        """(the JSON answer, the headers) of a JSON API call, retried as the fetcher's requests are."""
        async for attempt in self.fetcher.retries.attempts_of():
            with attempt:
                return await self._call_once(method, url, what, body, params)

    async def _call_once(self, method: str, url: str, what: str, body: dict | None,
                         params: dict | None) -> tuple[dict, dict]:
        try:
            async with self._session.request(method, url, params=params, headers=await self._headers(),
                                             json=body) as response:
                if response.status >= 300:
                    raise status_error(response.status, f"{what}: {response.status}", response.headers.get("Retry-After"))
                text = await response.text()
                return (json.loads(text) if text.strip() else {}), dict(response.headers)
        except aiohttp.ClientConnectorCertificateError as error:
            raise CertificateRefused(f"{what}: {error.certificate_error}") from None
        except (aiohttp.ClientError, asyncio.TimeoutError) as error:
            raise Unavailable(f"{what}: {type(error).__name__}") from None

    def signs_at_once(self) -> bool:
        return self._google is None or self._google.valid

    def range_request(self, key: str, start: int, length: int, version: str, fresh: bool = False) -> RangeRequest:
        return RangeRequest(key, start, length, f"{self._object_url(key)}?alt=media&generation={version}",
                            self._authorization(fresh), version_in_url=True)

    async def stat(self, key: str, pinned: str | None = None) -> ObjectInfo:
        resource, _ = await self._call("GET", self._object_url(key), f"HEAD {key}",
                                       params={"generation": pinned} if pinned else None)
        return _info(resource)

    async def list_page(self, prefix: str, delimiter: str = "/", token: str | None = None,
                        page_size: int | None = None) -> ListPage:
        params = {"prefix": prefix, "delimiter": delimiter, "pageToken": token, "maxResults": page_size}
        page, _ = await self._call("GET", f"{self.api}/storage/v1/b/{self.bucket}/o", f"LIST {prefix}",
                                   params={name: str(value) for name, value in params.items() if value})
        return ListPage([_info(resource) for resource in page.get("items", [])], page.get("prefixes", []),
                        page.get("nextPageToken"))

    def put_request(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> Request:
        """The object's JSON (with the MD5 the server checks) and its bytes, as multipart/related."""
        resource = json.dumps({"name": key, "metadata": metadata or {}, "md5Hash": content_md5(data)})
        body = b"".join(((f"--{_BOUNDARY}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{resource}\r\n"
                          f"--{_BOUNDARY}\r\nContent-Type: application/octet-stream\r\n\r\n").encode(), data,
                         f"\r\n--{_BOUNDARY}--\r\n".encode()))
        url = f"{self.api}/upload/storage/v1/b/{self.bucket}/o?uploadType=multipart"
        headers = {**self._authorization(), "Content-Type": f"multipart/related; boundary={_BOUNDARY}"}
        return Request("POST", url, body, headers, f"PUT {key}")

    def put_result(self, key: str, size: int, metadata: dict[str, str] | None, reply: Reply) -> ObjectInfo:
        return _info(json.loads(reply.body))

    async def start_upload(self, key: str, metadata: dict[str, str] | None = None) -> str:
        """The resumable upload's session URL."""
        _, headers = await self._call("POST", f"{self.api}/upload/storage/v1/b/{self.bucket}/o", f"START UPLOAD {key}",
                                      body={"metadata": metadata or {}},
                                      params={"uploadType": "resumable", "name": key})
        return headers["Location"]

    def upload_part(self, key: str, upload: str, number: int, path: str, offset: int, size: int) -> str:
        """A part whose size is no multiple of 256 KiB is the last: it names the total, and its tag is the
        object's JSON; the others' tags are empty."""
        last = size % PART_GRAIN != 0
        total = str(offset + size) if last else "*"
        headers = {**self._authorization(), "Content-Range": f"bytes {offset}-{offset + size - 1}/{total}"}
        reply = self.fetcher.send("PUT", upload, read_part(path, offset, size), headers, f"PUT PART {number} {key}")
        return reply.body.decode() if last else ""

    def complete_upload(self, key: str, upload: str, parts: list[tuple[int, str]], size: int,
                        metadata: dict[str, str] | None = None) -> ObjectInfo:
        """The last part's tag, else an empty PUT asking the session for the object, sent as the parts were."""
        if parts and parts[-1][1]:
            return _info(json.loads(parts[-1][1]))
        reply = self.fetcher.send("PUT", upload, b"", {**self._authorization(), "Content-Range": f"bytes */{size}"},
                                  f"COMPLETE UPLOAD {key}")
        if reply.status == 308:
            raise Unavailable(f"COMPLETE UPLOAD {key}: the server is missing some of its {size} bytes")
        return _info(json.loads(reply.body))

    async def abort_upload(self, key: str, upload: str):
        with contextlib.suppress(OSError):  # the server answers 499 when it has dropped the session
            await self._call("DELETE", upload, f"ABORT UPLOAD {key}")

    async def delete(self, key: str):
        with contextlib.suppress(NotFound):
            await self._call("DELETE", self._object_url(key), f"DELETE {key}")

    async def copy(self, source_key: str, key: str, metadata: dict[str, str] | None = None) -> ObjectInfo:
        """A rewrite, which takes several calls for a large object: each goes on from the token of the last."""
        url = f"{self._object_url(source_key)}/rewriteTo/b/{self.bucket}/o/{urllib.parse.quote(key, safe='')}"
        token = None
        while True:
            answer, _ = await self._call("POST", url, f"COPY {source_key} {key}",
                                         body=None if metadata is None else {"metadata": metadata},
                                         params={"rewriteToken": token} if token else None)
            if answer.get("done"):
                return _info(answer["resource"])
            token = answer["rewriteToken"]
