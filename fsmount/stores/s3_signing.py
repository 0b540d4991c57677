"""How S3Store signs: the URLs of its reads and uploads, presigned for the bucket's region with credentials refreshed in time.

Data does not go through aiobotocore. Reads, the hot path, are GETs of URLs that botocore presigns
(cached per key), sent by the RangeFetcher from worker threads: botocore's own request building and
response parsing cost more CPU than the GET, and presigning through aiobotocore crossed the seam for
every key. Uploads (PUTs and the parts of multipart uploads) are presigned and sent the same way,
with a Content-MD5 the server checks: over http botocore hashes every payload (SHA-256, and CRC32),
which held the event loop through each part (a small PUT's too) and capped the upload rate below
that of presigned parts. The URLs are signed with SigV4 (botocore chose SigV2 for a custom endpoint,
which AWS refuses for buckets made since 2020) by botocore's own query signer, called directly: its
client's `generate_presigned_url` spent most of its CPU resolving the endpoint and running event
hooks, on every new key read and every upload. Where a bucket's URLs start, and the region and
service they are signed for, are learnt once from a URL the client presigned.
"""
import collections
import math
import threading
import time
import urllib.parse

import botocore.auth
import botocore.awsrequest
import botocore.credentials
import botocore.utils

from fsmount.memory import PRESIGNED_URLS_KEPT
from fsmount.stores.base import fetch_credentials

URL_LIFETIME = 3600  # seconds a presigned URL is valid, unless its credentials expire sooner; reused for half of that
PROBE = "fsmount-probe"  # the key of the URL botocore presigns to show where keys' URLs start


def addressing_style(url: str | None) -> str:
    """How requests to the endpoint at URL name the bucket: AWS's (no URL, or a host under amazonaws.com) in the host,
    at the region's endpoint (botocore keeps a name that cannot be a host, as one with dots, in the path); any other
    server's (MinIO, SeaweedFS, Ceph: an address or a single host name) in the path."""
    host = (urllib.parse.urlsplit(url).hostname or "") if url else "amazonaws.com"
    return "virtual" if host == "amazonaws.com" or host.endswith(".amazonaws.com") else "path"


def seconds_left(credentials) -> float:
    """How long CREDENTIALS stay valid: AWS refuses a URL signed with them once they expire, whatever its own expiry."""
    if isinstance(credentials, botocore.credentials.RefreshableCredentials) and credentials._expiry_time is not None:
        return credentials._seconds_remaining()
    return math.inf


def refresh_in_time(credentials):
    """botocore refreshes credentials once less than 15 minutes of their life is left, and waits for new ones below
    10: credentials that live less (STS's shortest sessions, a credential_process's) were fetched anew for every
    signature. Those are refreshed when half the life they came with is left instead, and waited for below a quarter.
    CREDENTIALS have just been made: those that are fetched at their first use (SSO, web identity) are fetched now."""
    if isinstance(credentials, botocore.credentials.DeferredRefreshableCredentials):
        credentials.get_frozen_credentials()
    life = seconds_left(credentials)
    if life < math.inf:
        credentials._advisory_refresh_timeout = min(credentials._advisory_refresh_timeout, life / 2)
        credentials._mandatory_refresh_timeout = min(credentials._mandatory_refresh_timeout, life / 4)


class LoopCredentials:
    """Credentials as aiobotocore's signer asks for them, so that the SDK's calls and the presigned URLs share one set
    and each refresh is one credential_process run or STS call; a refresh runs in a worker thread, not the event loop."""

    def __init__(self, credentials):
        self._credentials = credentials

    async def get_frozen_credentials(self):
        if isinstance(self._credentials, botocore.credentials.RefreshableCredentials) and self._credentials.refresh_needed():
            return await fetch_credentials(self._credentials.get_frozen_credentials)
        return self._credentials.get_frozen_credentials()


class Presigner:
    """The presigned URLs of one bucket's requests, and the GET URLs of its keys, cached."""

    def __init__(self, probe: str | None, credentials, operation):
        """PROBE: a URL the SDK's client presigned for the key PROBE, None without credentials (signing then fails);
        OPERATION: the endpoint's `operation`, which says where each parameter of a request goes."""
        self._base, self._host, self.region, self._service = "", "", "", ""
        if probe is not None:
            url, _, query = probe.partition("?")
            *_, self.region, self._service, _ = urllib.parse.parse_qs(query)["X-Amz-Credential"][0].split("/")
            self._base = url.removesuffix(PROBE)
            self._host = botocore.auth._host_from_url(self._base)
        self._credentials = credentials
        self._operation = operation
        self._urls_lock = threading.Lock()
        self._urls: collections.OrderedDict[tuple, tuple[float, str, dict]] = collections.OrderedDict()

    def get_url(self, params: dict, fresh: bool) -> tuple[str, dict[str, str]]:
        """The URL of a GetObject with PARAMS, and the headers it must carry: one signed within half its life, unless
        FRESH."""
        cache_key = tuple(params.values())
        with self._urls_lock:
            cached = self._urls.get(cache_key)
            if cached is not None and cached[0] > time.monotonic() and not fresh:
                self._urls.move_to_end(cache_key)
                return cached[1], cached[2]
        url, headers, lifetime = self.sign("get_object", params)
        with self._urls_lock:
            self._urls[cache_key] = (time.monotonic() + lifetime / 2, url, headers)
            if len(self._urls) > PRESIGNED_URLS_KEPT:
                self._urls.popitem(last=False)
        return url, headers

    def sign(self, operation: str, params: dict) -> tuple[str, dict[str, str], float]:
        """The URL of OPERATION with PARAMS, presigned as the client's `generate_presigned_url` would, the headers the
        request must carry, as the signature covers them, and the seconds it is valid."""
        method, members = self._operation(operation)
        headers, query = {}, {}
        for name, value in params.items():
            location, serialized = members[name]
            if location == "header":
                headers[serialized] = str(value)
            elif location == "headers":  # Metadata: x-amz-meta-NAME
                headers.update({serialized + key: text for key, text in value.items()})
            elif location == "querystring":
                query[serialized] = str(value)
        # The Host header the client will send, given: botocore would parse it out of the URL twice a signature.
        request = botocore.awsrequest.AWSRequest(method, self._base + botocore.utils.percent_encode(params["Key"], safe="/~"),
                                                 headers={**headers, "host": self._host}, params=query)
        credentials, frozen, left = self._credentials, None, math.inf
        if credentials is not None:
            # The lesser of their lives before and after: another thread may refresh them in between.
            left = seconds_left(credentials)
            frozen = credentials.get_frozen_credentials()
            left = min(left, seconds_left(credentials))
        lifetime = max(1, int(min(URL_LIFETIME, left)))
        botocore.auth.S3SigV4QueryAuth(frozen, self._service, self.region, expires=lifetime).add_auth(request)
        return request.prepare().url, headers, lifetime
