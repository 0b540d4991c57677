"""The store client a volume's source names: S3, Azure Blob, GCS, IPFS or web URLs, with the credentials chosen for it.

Each client's module is imported when a volume needs it: the Azure and Google SDKs add to the
daemon's memory, which a tree without such volumes should not pay.
"""
import os
from typing import TYPE_CHECKING

from fsmount.config import AzureSource, GcsSource, IpfsSource, ObjectSource, S3Source, UrlSource
from fsmount.stores.base import Store
from fsmount.stores.retries import RetryPolicy

if TYPE_CHECKING:
    from fsmount.stores.s3 import S3Endpoint


class Stores:
    """Makes the stores of a tree's volumes. The S3 volumes of one server with one set of credentials share a client and
    a connection pool, as large as the largest `max_connections` among them."""

    def __init__(self, cache_dir: str, retries: RetryPolicy = RetryPolicy(), ca_bundles: dict[str, str] | None = None):
        """CACHE_DIR: the block cache's, beside which a store may keep files of its own. RETRIES: every store's.
        CA_BUNDLES: the file fetched for each CA bundle URL a `verify` names (fsmount.stores.tls)."""
        self._cache_dir = cache_dir
        self._retries = retries
        self.ca_bundles = ca_bundles or {}
        self._s3_endpoints: dict[tuple, "S3Endpoint"] = {}

    def store_for(self, source: ObjectSource, read_only: bool = True) -> Store:
        """READ_ONLY: the volume changes nothing, so what the store signs for it may only read and list."""
        verify = self.ca_bundles.get(source.verify, source.verify)
        if isinstance(source, S3Source):
            from fsmount.stores.s3 import S3Store
            return S3Store(source.bucket, self._s3_endpoint(source, verify), extra_args=source.extra_args,
                           request_payer=source.request_payer, multipart=source.credentials.multipart)
        if isinstance(source, AzureSource):
            from fsmount.stores.azure import AzureStore
            return AzureStore(source.account, source.bucket, source.credentials, endpoint=source.endpoint,
                              verify=verify, max_connections=source.max_connections, read_only=read_only,
                              retries=self._retries)
        if isinstance(source, GcsSource):
            from fsmount.stores.gcs import GcsStore
            return GcsStore(source.bucket, source.credentials, endpoint=source.endpoint, verify=verify,
                            max_connections=source.max_connections, retries=self._retries)
        if isinstance(source, UrlSource):
            from fsmount.stores.urls import UrlStore
            return UrlStore(source.files, os.path.join(self._cache_dir, "spool"), verify=verify,
                            max_connections=source.max_connections, retries=self._retries)
        if isinstance(source, IpfsSource):
            from fsmount.stores.ipfs import IpfsStore
            return IpfsStore(source.bucket, source.path, os.path.join(self._cache_dir, "ipfs"), api=source.api,
                             gateway=source.gateway, verify=verify, max_connections=source.max_connections,
                             retries=self._retries)
        raise TypeError(f"no store for {type(source).__name__}")

    def _s3_endpoint(self, source: S3Source, verify: bool | str) -> "S3Endpoint":
        from fsmount.stores.s3 import S3Endpoint
        credentials = source.credentials
        chain = credentials.use_credentials_chain
        key, secret = (None, None) if chain else (credentials.key, credentials.secret)
        reach = (source.endpoint, credentials.region, key, secret, verify)
        endpoint = self._s3_endpoints.get(reach)
        if endpoint is None:
            endpoint = self._s3_endpoints[reach] = S3Endpoint(*reach, max_connections=source.max_connections,
                                                                    retries=self._retries)
        endpoint.max_connections = max(endpoint.max_connections, source.max_connections)
        return endpoint
