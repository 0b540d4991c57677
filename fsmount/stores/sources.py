"""The store client a volume's source names: S3, Azure Blob, GCS, IPFS or web URLs, with the credentials chosen for it.

Each client's module is imported when a volume needs it: the Azure and Google SDKs together add
~22 MiB to the daemon's RSS, which a tree without such volumes should not pay.
"""
import os

from fsmount.config import AzureSource, GcsSource, IpfsSource, ObjectSource, S3Source, UrlSource
from fsmount.stores.base import Store


def store_for(source: ObjectSource, cache_dir: str) -> Store:
    """CACHE_DIR: the block cache's, beside which a store may keep files of its own."""
    if isinstance(source, S3Source):
        from fsmount.stores.s3 import S3Store
        credentials = source.credentials
        chain = credentials.use_credentials_chain
        return S3Store(source.bucket, endpoint=source.endpoint, region=credentials.region,
                       key=None if chain else credentials.key, secret=None if chain else credentials.secret,
                       verify=credentials.verify, max_connections=source.max_connections, extra_args=source.extra_args)
    if isinstance(source, AzureSource):
        from fsmount.stores.azure import AzureStore
        return AzureStore(source.account, source.bucket, source.credentials, endpoint=source.endpoint,
                          max_connections=source.max_connections)
    if isinstance(source, GcsSource):
        from fsmount.stores.gcs import GcsStore
        return GcsStore(source.bucket, source.credentials, endpoint=source.endpoint,
                        max_connections=source.max_connections)
    if isinstance(source, UrlSource):
        from fsmount.stores.urls import UrlStore
        return UrlStore(source.files, os.path.join(cache_dir, "spool"), verify=source.verify,
                        max_connections=source.max_connections)
    if isinstance(source, IpfsSource):
        from fsmount.stores.ipfs import IpfsStore
        return IpfsStore(source.bucket, source.path, os.path.join(cache_dir, "ipfs"), api=source.api,
                         gateway=source.gateway, max_connections=source.max_connections)
    raise TypeError(f"no store for {type(source).__name__}")
