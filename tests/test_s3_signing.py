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
from test_store_contract import AWKWARD_KEYS

NOW = datetime.datetime(2026, 11, 22, 12, 0, 0)


@pytest.mark.parametrize("endpoint, region", [("http://127.0.0.1:9000", None), (None, "eu-west-3")])
async def test_a_read_url_is_the_one_botocore_presigns(monkeypatch, endpoint, region):
    monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: NOW)
    arguments = dict(endpoint_url=endpoint, region_name=region or "us-east-1", aws_access_key_id="AKIDEXAMPLE",
                     aws_secret_access_key="secret")
    client = botocore.session.get_session().create_client("s3", config=botocore.config.Config(
        signature_version="s3v4", s3={"addressing_style": "path" if endpoint else "auto"}), **arguments)
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
    async with trio_asyncio.open_loop():
        store = TrioStore(S3Store("my-bucket", S3Endpoint(None, None, "AKIDEXAMPLE", "secret")))
        await store.open()
        try:
            url = store.store.range_request("key.bin", 0, 10, '"etag"').url
        finally:
            await store.close()
    s3._session.cache_clear()
    assert f"%2F{region}%2Fs3%2Faws4_request" in url
