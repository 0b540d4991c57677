"""A clearml.conf as it is: conf/clearml.conf read, the storage document's snippets mounted on moto, Azurite and
fake-gcs, `multipart: false`, and path substitution choosing the local copy or the store."""
import errno
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from buckets import AzureBucket, GcsBucket, S3Bucket
from conftest import FSMOUNT, write_config
from fsmount.config import ConfigError, load_config
from fsmount.stores.s3 import SINGLE_PUT_MOST, S3Endpoint, S3Store
from servers import AZURITE_ACCOUNT, AZURITE_KEY, azurite_endpoint
from test_gcs_auth import service_account_key

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def environment(tmp_path, monkeypatch):
    """What conf/clearml.conf takes from the environment, as ClearML's document writes it."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIAEXAMPLEDEFAULT")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "default-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    (tmp_path / "key.json").write_text(json.dumps(service_account_key("http://127.0.0.1:9/token")))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "key.json"))
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)


def check(config: Path) -> str:
    result = subprocess.run([FSMOUNT, "check", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.unit
def test_the_example_clearml_conf(tmp_path, environment):
    config = write_config(tmp_path, f"""
        clearml: "{ROOT}/conf/clearml.conf"
        volumes {{
            bucket {{ source: "s3://my-bucket-name/models" }}
            other {{ source: "s3://other-bucket/" }}
            minio {{ source: "s3://127.0.0.1:9000/data/", mode: rw }}
            azure {{ source: "azure://runs/" }}
            gcs {{ source: "gs://my-gcs-bucket/path/in/bucket/x" }}
        }}
    """)
    loaded = load_config(str(config))
    bucket, other, minio, azure, gcs = (volume.objects for volume in loaded.volumes)
    assert (bucket.credentials.key, bucket.credentials.region) == ("AKIAEXAMPLEBUCKET", "eu-west-1")  # region: the default's
    assert bucket.extra_args == {"ServerSideEncryption": "AES256"} and bucket.max_connections == 512
    assert (other.credentials.key, other.credentials.secret) == ("AKIAEXAMPLEDEFAULT", "default-secret")
    assert (minio.endpoint, minio.credentials.key, minio.credentials.multipart) == ("http://127.0.0.1:9000", "minio-key", False)
    assert (azure.account, azure.credentials.account_key) == (AZURITE_ACCOUNT, AZURITE_KEY)
    assert gcs.credentials.project == "clearml" and gcs.credentials.info["type"] == "service_account"
    assert loaded.cache.dir == os.path.expanduser("~/.clearml/cache") and loaded.staging.parallel_parts == 16
    shown = check(config)
    assert f"from {ROOT}/conf/clearml.conf:" in shown and "sdk.aws.s3.credentials.[1]" in shown
    assert "host 127.0.0.1:9000, key mini***, region eu-west-1, multipart false, secure false" in shown
    assert "served from the store: /mnt/shared/datasets" not in shown  # models/ is no registered prefix
    for secret in ("bucket-secret", "minio-secret", "default-secret", AZURITE_KEY, "PRIVATE KEY"):
        assert secret not in shown


@pytest.mark.unit
def test_fsmounts_own_keys_win(tmp_path, environment):
    config = write_config(tmp_path, f"""
        clearml: "{ROOT}/conf/clearml.conf"
        cache {{ dir: "{tmp_path}/cache" }}
        staging {{ parallel_parts: 2 }}
        credentials {{ s3: [ {{ bucket: my-bucket-name, key: AKIAFSMOUNT, secret: s }} ] }}
        volumes {{ bucket {{ source: "s3://my-bucket-name/models", max_connections: 8 }} }}
    """)
    loaded = load_config(str(config))
    source = loaded.volumes[0].objects
    assert (source.credentials.key, source.max_connections) == ("AKIAFSMOUNT", 8)
    assert (loaded.cache.dir, loaded.staging.parallel_parts) == (f"{tmp_path}/cache", 2)
    shown = check(config)
    assert "cache.dir: ~/.clearml/cache (fsmount's cache.dir wins)" in shown
    assert "staging.parallel_parts: 16 (fsmount's staging.parallel_parts wins)" in shown


@pytest.mark.unit
@pytest.mark.parametrize("text, message", [
    ('sdk.aws.s3.credentials: [ { bucket: b, token: x } ]', ":1: sdk.aws.s3.credentials.[0].token: unknown key"),
    ('sdk {\n aws.boto3 { pool_connections: 0 } }', ":2: sdk.aws.boto3.pool_connections: expected a whole number above 0"),
    ('sdk.storage.path_substitution: [ { registered_prefix: "s3://b/x" } ]',
     ":1: sdk.storage.path_substitution.[0]: expected both registered_prefix and local_prefix"),
    ('sdk.google.storage { credentials_json: "{not json" }', ":1: sdk.google.storage.credentials_json: expected the path"),
    ('sdk { aws { s3 = 5 } }', ":1: sdk.aws.s3: expected an object"),
])
def test_errors_name_the_clearml_file_line_and_key(tmp_path, text, message):
    write_config(tmp_path, text, "clearml.conf")
    config = write_config(tmp_path, 'clearml: clearml.conf\nvolumes { d { source: "s3://b/p" } }')
    with pytest.raises(ConfigError) as error:
        load_config(str(config))
    assert str(error.value).startswith(f"{tmp_path}/clearml.conf{message}")


@pytest.mark.mount
def test_the_documents_snippets_mount_s3_azure_and_gcs(workspace, moto, azurite, fake_gcs, mount, token_server):
    token_uri, grants = token_server
    s3 = S3Bucket(moto, {"data/a.txt": b"from moto\n"})
    azure = AzureBucket(azurite, {"data/a.txt": b"from azurite\n"})
    gcs = GcsBucket(fake_gcs, {"data/a.txt": b"from fake-gcs\n"})
    (workspace / "key.json").write_text(json.dumps(service_account_key(token_uri)))
    write_config(workspace, f"""
        sdk {{
            aws {{
                s3 {{
                    key: ""
                    secret: ""
                    region: ""
                    credentials: [
                        {{
                            host: "127.0.0.1:{moto.port}"
                            key: "test"
                            secret: "test"
                            multipart: false
                            secure: false
                            verify: true
                        }}
                    ]
                }}
                boto3 {{
                    pool_connections: 16
                    max_multipart_concurrency: 2
                }}
            }}
            azure.storage {{
                containers: [
                    {{
                        account_name: "{AZURITE_ACCOUNT}"
                        account_key: "{AZURITE_KEY}"
                    }}
                ]
            }}
            google.storage {{
                project: "clearml"
                credentials_json: "{workspace}/key.json"
            }}
            storage.cache.default_base_dir: "{workspace}/cache"
        }}
    """, "clearml.conf")
    config = write_config(workspace, f"""
        clearml: clearml.conf
        staging {{ write_back: 0, multipart_threshold: 5MiB }}
        volumes {{
            s3 {{ source: "s3://127.0.0.1:{moto.port}/{s3}/", mode: rw }}
            azure {{ source: "azure://{azure}/", endpoint: "{azurite_endpoint(azurite)}", mode: rw }}
            gcs {{ source: "gs://{gcs}/", endpoint: "{fake_gcs.url}", mode: rw }}
        }}
    """)
    mount(config, workspace / "mnt")
    root = workspace / "mnt"
    for name, bucket, server in (("s3", s3, "moto"), ("azure", azure, "azurite"), ("gcs", gcs, "fake-gcs")):
        assert (root / name / "data" / "a.txt").read_bytes() == f"from {server}\n".encode()
        (root / name / "data" / "b.txt").write_bytes(b"written through ClearML's settings\n")
        assert bucket.get("data/b.txt") == b"written through ClearML's settings\n"
    large = os.urandom(12 * 2**20)  # past the multipart threshold: multipart false sends it in one PUT
    (root / "s3" / "large.bin").write_bytes(large)
    assert s3.get("large.bin") == large
    assert moto.requests(f"/{s3}/large.bin?uploads") == 0 and moto.requests(f"PUT /{s3}/large.bin") == 1
    assert grants and (workspace / "cache").is_dir()


@pytest.mark.unit
def test_a_single_put_past_5_gib_is_efbig(tmp_path):
    sparse = tmp_path / "huge.bin"
    with open(sparse, "wb") as stream:
        stream.truncate(SINGLE_PUT_MOST + 1)
    store = S3Store("b", S3Endpoint("http://127.0.0.1:9", key="k", secret="s"), multipart=False)
    with pytest.raises(OSError) as error:
        store.upload_file("huge.bin", str(sparse))
    assert error.value.errno == errno.EFBIG and "past S3's limit of 5 GiB for one PUT" in error.value.strerror


@pytest.mark.mount
def test_path_substitution_picks_the_local_copy_and_falls_back_to_the_store(workspace, moto, mount):
    bucket = S3Bucket(moto, {"datasets/x/a.txt": b"from the store\n"})
    local = workspace / "links" / "nfs" / "datasets" / "x"
    local.mkdir(parents=True)
    (local / "a.txt").write_bytes(b"the local copy\n")
    write_config(workspace, f"""
        sdk.storage.path_substitution = [
            {{ registered_prefix = "s3://{bucket}/datasets", local_prefix = "file://{workspace}/links/nfs/datasets" }}
        ]
    """, "clearml.conf")
    config = write_config(workspace, f"""
        clearml: clearml.conf
        cache {{ dir: "{workspace}/cache" }}
        link_mounts: ["{workspace}/links:ro"]
        credentials {{ s3: [ {{ bucket: {bucket}, key: test, secret: test }} ] }}
        volumes {{ x {{ source: "s3://{bucket}/datasets/x", endpoint: "{moto.url}", mode: rw }} }}
    """)
    assert f"served from the local copy {local}, no cache (path_substitution {workspace}/clearml.conf:2" in check(config)
    assert load_config(str(config)).volumes[0].read_only  # capped by the link mount
    daemon = mount(config, workspace / "mnt")
    assert (workspace / "mnt" / "x" / "a.txt").read_bytes() == b"the local copy\n"
    daemon.stop()
    shutil.rmtree(local)
    assert f"served from the store: {local} is not an existing directory" in check(config)
    mount(config, workspace / "mnt")
    assert (workspace / "mnt" / "x" / "a.txt").read_bytes() == b"from the store\n"


@pytest.mark.unit
def test_fsmounts_own_path_substitution_comes_first(tmp_path):
    (tmp_path / "links" / "mine" / "x").mkdir(parents=True)
    config = write_config(tmp_path, f"""
        link_mounts: ["{tmp_path}/links"]
        path_substitution: [ {{ registered_prefix: "s3://b/data", local_prefix: "{tmp_path}/links/mine" }} ]
        volumes {{ x {{ source: "s3://b/data/x", mode: rw }}, y {{ source: "s3://b/other" }} }}
    """)
    x, y = load_config(str(config)).volumes
    assert (x.host_path, x.read_only, x.objects) == (f"{tmp_path}/links/mine/x", False, None)
    assert y.objects is not None and y.chosen is None
