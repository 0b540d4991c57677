"""S3Store: S3 and S3-compatible servers (MinIO, SeaweedFS, Ceph) through aiobotocore, for listings and other
requests, and through URLs it presigns (s3_signing.py) for data."""
import asyncio
import contextlib
import datetime
import functools
import logging
import os
import typing

import botocore.credentials
import botocore.exceptions
import botocore.session
import botocore.utils
from aiobotocore.config import AioConfig
from aiobotocore.session import get_session

from fsmount.stores.base import (AccessDenied, CertificateRefused, ListPage, NoSuchContainer, NotFound, ObjectInfo,
                                 PreconditionFailed, RangeRequest, Reply, Request, Store, Throttled, TooLarge, Unavailable,
                                 content_md5, fetch_credentials, metadata_of, read_part, status_error, unanswered,
                                 uploaded)
from fsmount.stores.ranges import RangeFetcher
from fsmount.stores.retries import RetryPolicy
from fsmount.stores.s3_signing import PROBE, LoopCredentials, Presigner, addressing_style, refresh_in_time

log = logging.getLogger(__name__)

_NOT_FOUND = {"NoSuchKey", "NotFound"}
_PRECONDITION = {"PreconditionFailed"}
_DENIED = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled"}
_THROTTLED = {"SlowDown", "Throttling", "ThrottlingException", "RequestLimitExceeded"}
_VERSION_ID = "versionId="  # starts the version of an object read at a pinned version id
SINGLE_PUT_MOST = 5 * 2**30  # S3's largest object one PUT makes


@contextlib.contextmanager
def _errors(what: str):
    """Turns whatever the SDK raises into the store's own errors, naming the request."""
    try:
        yield
    except botocore.exceptions.ClientError as error:
        code = error.response.get("Error", {}).get("Code", "")
        answer = error.response.get("ResponseMetadata", {})
        failure = status_error(answer.get("HTTPStatusCode", 0), f"{what}: {code or answer.get('HTTPStatusCode', 0)}",
                               answer.get("HTTPHeaders", {}).get("retry-after"))
        for codes, kind in ((_NOT_FOUND, NotFound), ({"NoSuchBucket"}, NoSuchContainer),
                            (_PRECONDITION, PreconditionFailed), (_DENIED, AccessDenied), (_THROTTLED, Throttled)):
            if code in codes:
                retry_after, failure = failure.retry_after, kind(f"{what}: {code}")
                failure.retry_after = retry_after
                break
        raise failure from None
    except botocore.exceptions.NoCredentialsError:
        raise AccessDenied(f"{what}: no credentials") from None
    except (botocore.exceptions.BotoCoreError, asyncio.TimeoutError, ConnectionError) as error:
        raise unanswered(what, error) from None


def _parse_timestamp(text: str) -> datetime.datetime:
    """S3's ISO 8601 times by the standard library: botocore's default, dateutil's general parser, took
    most of the CPU of a listing. Anything else (the RFC 822 dates of headers) goes to botocore's."""
    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        return botocore.utils.parse_timestamp(text)


@functools.cache
def _session():
    """The botocore session every S3 client is made in: each session parses S3's service model, a large part of
    the daemon's memory, which one session for each volume (and a second for presigning) multiplied."""
    session = get_session()
    session.get_component("response_parser_factory").set_parser_defaults(timestamp_parser=_parse_timestamp)
    return session


def default_region() -> str:
    """The region of a volume that names none, as the AWS CLI finds it: AWS_REGION, AWS_DEFAULT_REGION, the region
    of the profile (AWS_PROFILE, or default) in the config file, else us-east-1. A fresh session: the shared one
    would keep the config file of its first reading."""
    with contextlib.suppress(botocore.exceptions.ProfileNotFound):  # the client's own creation says so, at open
        return os.environ.get("AWS_REGION") or botocore.session.Session().get_config_variable("region") or "us-east-1"
    return "us-east-1"


def _info(key: str, size: int, etag: str, modified, metadata=None, content_type: str | None = None) -> ObjectInfo:
    return ObjectInfo(key, size, etag, int(modified.timestamp() * 1e9), metadata_of(metadata),
                      content_type=content_type)


class S3Endpoint:
    """An S3 server as one set of credentials reaches it: the clients (one a region its buckets are in) and the
    connection pool that the stores of its buckets share, opened with the first of them and closed with the last."""

    def __init__(self, url: str | None = None, region: str | None = None, key: str | None = None,
                 secret: str | None = None, verify: bool | str = True, max_connections: int = 32,
                 retries: RetryPolicy = RetryPolicy()):
        """URL None: AWS. KEY and SECRET None: botocore's default chain (env, profiles with SSO or a
        credential_process, web identity, the container's or the instance's metadata)."""
        self.url = url
        self.region = region or default_region()  # each bucket's own, the server says: bucket_region
        self.max_connections = max_connections  # may grow until the first store opens
        self.retries = retries
        self._key, self._secret = key, secret
        # Plain http has no certificate to check: loading the CA bundle for it delayed the first request.
        self._verify = False if url is not None and url.startswith("http://") else verify
        self._stores = 0
        self._opening = asyncio.Lock()
        self._making = asyncio.Lock()  # a client, which two stores' opening may want at once
        self._config = None
        self._clients: dict[str, tuple] = {}  # region -> (context, client)
        self._regions: dict[str, str] = {}  # bucket -> its region
        self.client = None  # the endpoint's region's
        self.fetcher: RangeFetcher | None = None
        self.credentials = None  # for presigning in worker threads: refreshed there, without the event loop
        self._operations: dict[str, tuple[str, dict]] = {}  # operation -> (method, {param: (location, name)})

    async def open(self):
        async with self._opening:  # a second store waits for the client the first is making
            if not self._stores:
                await self._connect()
            self._stores += 1

    async def _connect(self):
        self._config = AioConfig(signature_version="s3v4", max_pool_connections=self.max_connections, connect_timeout=5,
                                 read_timeout=60, retries={"total_max_attempts": 1},  # the RetryPolicy's
                                 s3={"addressing_style": addressing_style(self.url)})
        self.fetcher = RangeFetcher(self.max_connections, self._verify, self.retries)
        self.credentials = await fetch_credentials(self._fetch_credentials)
        self.client = await self.client_in(self.region)

    def _fetch_credentials(self):
        """The configured key, else the chain's credentials; None: the chain found none."""
        if self._key:
            return botocore.credentials.Credentials(self._key, self._secret)
        credentials = botocore.session.get_session().get_credentials()
        refresh_in_time(credentials)
        return credentials

    async def client_in(self, region: str):
        """The client that signs for REGION, made on the first call."""
        async with self._making:
            if region not in self._clients:
                frozen = self.credentials.get_frozen_credentials() if self.credentials is not None else None
                context = _session().create_client(
                    "s3", config=self._config, endpoint_url=self.url, region_name=region, verify=self._verify,
                    aws_access_key_id=frozen and frozen.access_key, aws_secret_access_key=frozen and frozen.secret_key,
                    aws_session_token=frozen and frozen.token)
                client = await context.__aenter__()
                if self.credentials is not None:  # the client's own copy of them would be refreshed apart
                    client._request_signer._credentials = LoopCredentials(self.credentials)
                self._clients[region] = (context, client)
            return self._clients[region][1]

    async def bucket_region(self, bucket: str) -> str:
        """The region BUCKET is in, as HeadBucket's `x-amz-bucket-region` says (AWS sends it with a redirect or a
        refusal too); the endpoint's when the server names none or cannot be reached."""
        if bucket not in self._regions:
            try:
                headers = await self._bucket_headers(bucket)
            except (Throttled, Unavailable, CertificateRefused) as error:
                log.warning("bucket %s: its region is unknown (%s): its requests are signed for %s",
                            bucket, error.strerror, self.region)
                return self.region
            region = headers.get("x-amz-bucket-region") or self.region
            if region != self.region:
                log.info("bucket %s is in %s: its requests are signed for %s, not %s", bucket, region, region, self.region)
            self._regions[bucket] = region
        return self._regions[bucket]

    async def _bucket_headers(self, bucket: str) -> dict[str, str]:
        """HeadBucket's headers, whether the server answered or refused; retried while it throttles or is out of reach."""
        async for attempt in self.retries.attempts_of():
            with attempt:
                try:
                    response = await self.client.head_bucket(Bucket=bucket)
                except botocore.exceptions.ClientError as error:
                    response = error.response
                    status = response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
                    if status == 429 or status >= 500:
                        raise status_error(status, f"HEAD BUCKET {bucket}: {status}") from None
                except (botocore.exceptions.BotoCoreError, asyncio.TimeoutError, ConnectionError) as error:
                    raise unanswered(f"HEAD BUCKET {bucket}", error) from None
        return response.get("ResponseMetadata", {}).get("HTTPHeaders", {})

    async def close(self):
        self._stores -= 1
        if self._stores == 0:
            self.fetcher.close()
            for context, _ in self._clients.values():
                await context.__aexit__(None, None, None)
            self._clients.clear()
            self.client = None

    def operation(self, operation: str) -> tuple[str, dict[str, tuple[str | None, str]]]:
        """OPERATION's HTTP method, and where each of its parameters goes in a request: (location, name)."""
        if operation not in self._operations:
            meta = self.client.meta
            model = meta.service_model.operation_model(meta.method_to_api_mapping[operation])
            self._operations[operation] = (model.http["method"], {
                name: (shape.serialization.get("location"), shape.serialization.get("name", name))
                for name, shape in model.input_shape.members.items()})
        return self._operations[operation]


class S3Store(Store):
    lists_metadata = False

    def __init__(self, bucket: str, endpoint: S3Endpoint, extra_args: dict | None = None,
                 request_payer: str | None = None, multipart: bool = True):
        """REQUEST_PAYER "requester": every request says that the requester pays for it (a requester-pays bucket).
        MULTIPART False: every upload is one PUT (ClearML's `multipart: false`, for servers without multipart uploads)."""
        self.bucket = bucket
        self.multipart = multipart
        self.endpoint = endpoint
        self._extra_args = dict(extra_args or {})
        self._payer = {"RequestPayer": request_payer} if request_payer else {}
        self._client = None
        self._presigner: Presigner | None = None
        self._said_missing = False  # that the bucket does not exist, in the log

    @property
    def identity(self) -> str:
        return f"s3:{self.endpoint.url or 'aws'}/{self.bucket}"

    def source_url(self, info: ObjectInfo) -> str:
        return f"s3://{self.bucket}/{info.key}"

    @property
    def fetcher(self) -> RangeFetcher:
        return self.endpoint.fetcher

    async def open(self):
        await self.endpoint.open()
        self._client = await self.endpoint.client_in(await self.endpoint.bucket_region(self.bucket))
        probe = None
        if self.endpoint.credentials is not None:  # else every request is refused, as signing it fails
            probe = await self._client.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": PROBE})
        self._presigner = Presigner(probe, self.endpoint.credentials, self.endpoint.operation)

    async def close(self):
        if self._client is not None:
            self._client = None
            await self.endpoint.close()

    def signs_at_once(self) -> bool:
        credentials = self.endpoint.credentials
        return not isinstance(credentials, botocore.credentials.RefreshableCredentials) or not credentials.refresh_needed()

    def range_request(self, key: str, start: int, length: int, version: str, fresh: bool = False) -> RangeRequest:
        params = {"Bucket": self.bucket, "Key": key, **self._payer}
        pinned = version.startswith(_VERSION_ID)  # a version id names bytes that never change
        if pinned:
            params["VersionId"] = version.removeprefix(_VERSION_ID)
        with _errors(f"SIGN {key}"):
            url, headers = self._presigner.get_url(params, fresh)
        if pinned:
            return RangeRequest(key, start, length, url, headers, version_in_url=True)
        return RangeRequest(key, start, length, url, {**headers, "If-Match": version})

    async def _call(self, what: str, operation: str, **params) -> dict:
        """The client's OPERATION with PARAMS, retried by the RetryPolicy (botocore's own retries are off)."""
        async for attempt in self.endpoint.retries.attempts_of():
            with attempt, _errors(what):
                return await getattr(self._client, operation)(**params)

    async def stat(self, key: str, pinned: str | None = None) -> ObjectInfo:
        head = await self._call(f"HEAD {key}", "head_object", Bucket=self.bucket, Key=key, **self._payer,
                                **({"VersionId": pinned} if pinned else {}))
        version = f"{_VERSION_ID}{pinned}" if pinned else head["ETag"]
        return _info(key, head["ContentLength"], version, head["LastModified"], head.get("Metadata"),
                     head.get("ContentType"))

    async def version_id(self, key: str) -> str | None:
        head = await self._call(f"HEAD {key}", "head_object", Bucket=self.bucket, Key=key, **self._payer)
        return None if head.get("VersionId") in (None, "null") else head["VersionId"]

    async def list_page(self, prefix: str, delimiter: str = "/", token: str | None = None,
                        page_size: int | None = None) -> ListPage:
        arguments = {"Bucket": self.bucket, "Prefix": prefix, **self._payer} | ({"Delimiter": delimiter} if delimiter else {})
        if token:
            arguments["ContinuationToken"] = token
        if page_size:
            arguments["MaxKeys"] = page_size
        try:
            page = await self._call(f"LIST {prefix}", "list_objects_v2", **arguments)
        except NoSuchContainer:
            if not self._said_missing:
                self._said_missing = True
                log.error("bucket %s does not exist at %s: listing and reading its volume fail with EIO",
                          self.bucket, self.endpoint.url or "AWS")
            raise
        objects = [_info(entry["Key"], entry["Size"], entry["ETag"], entry["LastModified"])
                   for entry in page.get("Contents", [])]
        return ListPage(objects, [entry["Prefix"] for entry in page.get("CommonPrefixes", [])],
                        page.get("NextContinuationToken") if page.get("IsTruncated") else None)

    def put_request(self, key: str, data: bytes, metadata: dict[str, str] | None = None) -> Request:
        return self._signed_put("put_object", self._put_params(key, metadata), data, f"PUT {key}")

    def _put_params(self, key: str, metadata: dict[str, str] | None) -> dict:
        return {"Bucket": self.bucket, "Key": key, "Metadata": metadata or {}, **self._extra_args}

    def upload_file(self, key: str, path: str, metadata: dict[str, str] | None = None) -> ObjectInfo:
        """A file larger than a part goes up only without multipart uploads: streamed from the file, not read
        into memory first."""
        size = os.path.getsize(path)
        if size > SINGLE_PUT_MOST:
            raise TooLarge(f"PUT {key}: {size} bytes, past S3's limit of 5 GiB for one PUT (multipart: false)")
        if size <= self.part_size:
            return super().upload_file(key, path, metadata)
        with open(path, "rb") as stream:
            request = self._signed_put("put_object", self._put_params(key, metadata), stream, f"PUT {key}")
            reply = self.fetcher.send(*request._replace(headers={**request.headers, "Content-Length": str(size)}))
        return self.put_result(key, size, metadata, reply)

    def put_result(self, key: str, size: int, metadata: dict[str, str] | None, reply: Reply) -> ObjectInfo:
        return uploaded(key, size, reply.headers["etag"], metadata)

    def _signed_put(self, operation: str, params: dict, body: bytes | typing.BinaryIO, what: str) -> Request:
        """OPERATION with PARAMS and the Content-MD5 of BODY, which the server checks, presigned."""
        with _errors(f"SIGN {what}"):
            url, headers, _ = self._presigner.sign(operation, {**params, **self._payer, "ContentMD5": content_md5(body)})
        return Request("PUT", url, body, headers, what)

    async def start_upload(self, key: str, metadata: dict[str, str] | None = None) -> str:
        upload = await self._call(f"CREATE MULTIPART {key}", "create_multipart_upload", Bucket=self.bucket, Key=key,
                                  Metadata=metadata or {}, **self._extra_args, **self._payer)
        return upload["UploadId"]

    def upload_part(self, key: str, upload: str, number: int, path: str, offset: int, size: int) -> str:
        params = {"Bucket": self.bucket, "Key": key, "UploadId": upload, "PartNumber": number}
        request = self._signed_put("upload_part", params, read_part(path, offset, size), f"PUT PART {number} {key}")
        return self.fetcher.send(*request).headers["etag"]

    async def complete_upload(self, key: str, upload: str, parts: list[tuple[int, str]], size: int,
                              metadata: dict[str, str] | None = None) -> ObjectInfo:
        response = await self._call(f"COMPLETE MULTIPART {key}", "complete_multipart_upload", Bucket=self.bucket, Key=key,
                                    UploadId=upload, **self._payer,
                                    MultipartUpload={"Parts": [{"PartNumber": number, "ETag": tag} for number, tag in parts]})
        return uploaded(key, size, response["ETag"], metadata)

    async def abort_upload(self, key: str, upload: str):
        await self._call(f"ABORT MULTIPART {key}", "abort_multipart_upload", Bucket=self.bucket, Key=key, UploadId=upload,
                         **self._payer)

    async def delete(self, key: str):
        await self._call(f"DELETE {key}", "delete_object", Bucket=self.bucket, Key=key, **self._payer)

    async def copy(self, source_key: str, key: str, metadata: dict[str, str] | None = None) -> ObjectInfo:
        replace = {} if metadata is None else {"Metadata": metadata, "MetadataDirective": "REPLACE"}
        await self._call(f"COPY {source_key} {key}", "copy_object", Bucket=self.bucket, Key=key, **replace,
                         **self._extra_args, **self._payer, CopySource={"Bucket": self.bucket, "Key": source_key})
        return await self.stat(key)

