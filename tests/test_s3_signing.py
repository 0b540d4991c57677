"""S3Store signs its URLs itself, with botocore's signer: each must be the URL botocore's client presigns."""
import datetime

import botocore.auth
import botocore.config
import botocore.session
import pytest
import trio_asyncio

from fsmount.stores import s3
from fsmount.stores.aio import TrioStore
from fsmount.stores.s3 import S3Endpoint, S3Store
from fsmount.stores.s3_signing import addressing_style
from test_store_contract import AWKWARD_KEYS

pytestmark = pytest.mark.unit

NOW = datetime.datetime(2026, 11, 22, 12, 0, 0)


@pytest.fixture(autouse=True)
def buckets_in_the_endpoints_region(monkeypatch):
    """Presigning needs no network, but opening a store asks the server for its bucket's region; AWS is not asked
    here: each bucket is in the region the endpoint signs for, as a server that names none."""
    async def region(endpoint, bucket):
        return endpoint.region
    monkeypatch.setattr(S3Endpoint, "bucket_region", region)


async def read_url(endpoint: S3Endpoint, bucket: str = "my-bucket", key: str = "key.bin") -> str:
    async with trio_asyncio.open_loop():
        store = TrioStore(S3Store(bucket, endpoint))
        await store.open()
        try:
            return store.store.range_request(key, 0, 10, '"etag"').url
        finally:
            await store.close()


@pytest.mark.parametrize("url, style", [
    (None, "virtual"), ("https://s3.eu-west-3.amazonaws.com", "virtual"), ("https://s3.amazonaws.com", "virtual"),
    ("http://127.0.0.1:9000", "path"), ("https://minio.example.com", "path"), ("http://localhost:9000", "path"),
    ("https://amazonaws.com.example.org", "path"),
])
def test_aws_endpoints_name_the_bucket_in_the_host_and_others_in_the_path(url, style):
    assert addressing_style(url) == style


@pytest.mark.parametrize("endpoint, bucket, start", [
    (None, "my-bucket", "https://my-bucket.s3.eu-west-3.amazonaws.com/key.bin?"),
    ("https://s3.eu-west-3.amazonaws.com", "my-bucket", "https://my-bucket.s3.eu-west-3.amazonaws.com/key.bin?"),
    (None, "my.dotted.bucket", "https://s3.eu-west-3.amazonaws.com/my.dotted.bucket/key.bin?"),
    ("http://127.0.0.1:9000", "my-bucket", "http://127.0.0.1:9000/my-bucket/key.bin?"),
])
async def test_a_read_url_starts_at_the_buckets_regional_host_on_aws_and_at_the_path_elsewhere(endpoint, bucket, start):
    """On AWS a URL of the global endpoint (botocore's "auto" addressing presigns those) is redirected for a new bucket
    outside us-east-1; a name with dots cannot be a host under AWS's certificate."""
    url = await read_url(S3Endpoint(endpoint, "eu-west-3", "AKIDEXAMPLE", "secret"), bucket)
    assert url.startswith(start)


@pytest.mark.parametrize("endpoint, region", [("http://127.0.0.1:9000", None), (None, "eu-west-3")])
async def test_a_read_url_is_the_one_botocore_presigns(monkeypatch, endpoint, region):
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW)
    arguments = dict(endpoint_url=endpoint, region_name=region or "us-east-1", aws_access_key_id="AKIDEXAMPLE",
                     aws_secret_access_key="secret")
    client = botocore.session.get_session().create_client("s3", config=botocore.config.Config(
        signature_version="s3v4", s3={"addressing_style": addressing_style(endpoint)}), **arguments)
    async with trio_asyncio.open_loop():
        store = TrioStore(S3Store("my-bucket", S3Endpoint(endpoint, region, "AKIDEXAMPLE", "secret")))
        await store.open()
        try:
            for key in ["plain/key.bin", *AWKWARD_KEYS]:
                for pinned in (None, "3HL4kqtJlcpXroDTDmJ+rmSpXd3dIbrHY"):
                    version = f"versionId={pinned}" if pinned else '"etag"'
                    params = {"Bucket": "my-bucket", "Key": key} | ({"VersionId": pinned} if pinned else {})
                    assert store.store.range_request(key, 0, 10, version).url == client.generate_presigned_url(
                        "get_object", Params=params, ExpiresIn=3600)
        finally:
            await store.close()


@pytest.mark.parametrize("environment, region", [
    ({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "ap-south-1"}, "eu-west-1"),
    ({"AWS_DEFAULT_REGION": "ap-south-1"}, "ap-south-1"),
    ({"AWS_PROFILE": "lab"}, "sa-east-1"),
    ({}, "us-east-1"),
])
async def test_a_volume_naming_no_region_signs_for_the_one_the_aws_cli_would_use(monkeypatch, tmp_path, environment,
                                                                                  region):
    """AWS refuses a request signed for another region than the bucket's: with none configured, the region comes
    from the environment or the profile, as the AWS CLI's does."""
    (tmp_path / "config").write_text("[default]\n[profile lab]\nregion = sa-east-1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    for name in ("AWS_REGION", "AWS_DEFAULT_REGION", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    s3._session.cache_clear()  # the daemon's one session reads the environment once; each case here is a daemon
    url = await read_url(S3Endpoint(None, None, "AKIDEXAMPLE", "secret"))
    s3._session.cache_clear()
    assert f"%2F{region}%2Fs3%2Faws4_request" in url
