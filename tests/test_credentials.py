"""Which credentials a bucket or container gets, and how s3://, azure:// and gs:// sources and endpoints are read
(no server needed)."""
import json
import subprocess

import pytest

from conftest import FSMOUNT, write_config
from fsmount.config import ConfigError, load_config
from fsmount.credentials import (AzureCredentials, GcsCredentials, S3Credentials, choose_azure_credentials,
                                 choose_gcs_credentials, choose_s3_credentials, parse_connection_string)
from fsmount.volume_stores import Stores

pytestmark = pytest.mark.unit

ENTRIES = [
    S3Credentials(host="127.0.0.1:9000", key="minio-key", secure=False),
    S3Credentials(bucket="research", key="research-key", region="us-west-2"),
    S3Credentials(bucket="research", host="127.0.0.1:9000", key="local-research-key"),
    S3Credentials(key="default-key"),
]


@pytest.mark.parametrize("bucket, host, key", [
    ("research", None, "research-key"),
    ("research", "127.0.0.1:9000", "research-key"),  # the first entry for the bucket that fits the host
    ("other", "127.0.0.1:9000", "minio-key"),
    ("other", None, "default-key"),
    ("other", "10.0.0.1:80", "default-key"),
])
def test_the_most_specific_entry_wins(bucket, host, key):
    assert choose_s3_credentials(ENTRIES, bucket, host).key == key


def test_no_entry_means_the_default_chain():
    chosen = choose_s3_credentials([S3Credentials(bucket="elsewhere", key="k")], "mine", None)
    assert chosen.use_credentials_chain and chosen.key is None


def test_secrets_never_show_in_a_repr():
    assert "s3cr3t" not in repr(S3Credentials(key="AKIA", secret="s3cr3t"))


def s3_volume(tmp_path, text):
    return load_config(str(write_config(tmp_path, text))).volumes[0].objects


def test_clearml_style_host_port_source(tmp_path, monkeypatch):
    monkeypatch.setenv("MINIO_SECRET", "s3cr3t")
    source = s3_volume(tmp_path, """
        credentials { s3: [ { host: "127.0.0.1:9000", key: minio, secret: ${MINIO_SECRET}, secure: false } ] }
        volumes { data { source: "s3://127.0.0.1:9000/bucket/some/prefix" } }
    """)
    assert (source.bucket, source.prefix, source.endpoint) == ("bucket", "some/prefix", "http://127.0.0.1:9000")
    assert (source.credentials.key, source.credentials.secret) == ("minio", "s3cr3t")


def test_endpoint_key_and_aws_default(tmp_path):
    source = s3_volume(tmp_path, 'volumes { d { source: "s3://b/p/", endpoint: "https://s3.example.org:8443" } }')
    assert (source.bucket, source.prefix, source.endpoint) == ("b", "p/", "https://s3.example.org:8443")
    aws = s3_volume(tmp_path, 'volumes { d { source: "s3://b" } }')
    assert aws.endpoint is None and aws.credentials.use_credentials_chain


def test_s3_volumes_of_one_server_and_one_key_share_an_endpoint_sized_for_the_largest(tmp_path):
    config = load_config(str(write_config(tmp_path, """
        credentials { s3: [ { bucket: other-key, key: k2, secret: s }, { key: k1, secret: s } ] }
        volumes {
            a { source: "s3://one/", endpoint: "http://127.0.0.1:9000" }
            b { source: "s3://two/p/", endpoint: "http://127.0.0.1:9000", max_connections: 64 }
            c { source: "s3://other-key/", endpoint: "http://127.0.0.1:9000" }
            d { source: "s3://one/", endpoint: "http://127.0.0.1:9001" }
        }
    """)))
    stores = Stores(str(tmp_path / "cache"))
    a, b, c, d = (stores.store_for(volume.objects) for volume in config.volumes)
    assert a.endpoint is b.endpoint and a.endpoint.max_connections == 64
    assert c.endpoint is not a.endpoint and d.endpoint is not a.endpoint
    assert (c.endpoint.max_connections, d.endpoint.max_connections) == (32, 32)


def test_check_never_prints_a_secret(tmp_path):
    config = write_config(tmp_path, """
        credentials { s3: [ { bucket: b, key: AKIAEXAMPLE, secret: wJalrXUtnFEMI } ] }
        volumes { d { source: "s3://b/p" } }
    """)
    result = subprocess.run([FSMOUNT, "check", str(config)], capture_output=True, text=True)
    assert result.returncode == 0 and "s3://b/p" in result.stdout
    assert "wJalrXUtnFEMI" not in result.stdout + result.stderr


@pytest.mark.parametrize("text, message", [
    ('volumes { d { source: "s3://" } }', "volumes.d.source: expected s3://bucket/prefix"),
    ('volumes { d { source: "s3://b", endpoint: "ftp://x" } }', "volumes.d.endpoint: expected http(s)://host:port"),
    ('volumes { d { source: "s3://b", max_connections: 0 } }', "volumes.d.max_connections: expected a whole number above 0"),
    ('credentials { s3: [ { bucket: b, token: x } ] }\nvolumes { d { source: "s3://b" } }', "credentials.s3.[0].token: unknown key"),
    ('credentials { s3: { bucket: b } }\nvolumes { d { source: "s3://b" } }', "credentials.s3: expected a list"),
    ('volumes { d { source: "file:///tmp", endpoint: "http://x" } }', "volumes.d.endpoint: unknown key"),
])
def test_s3_config_errors(tmp_path, text, message):
    with pytest.raises(ConfigError) as error:
        load_config(str(write_config(tmp_path, text)))
    assert message in str(error.value)


AZURE = [
    AzureCredentials(account_name="lab", container="secret-data", sas_token="sv=container-sas"),
    AzureCredentials(account_name="lab", account_key="lab-key"),
    AzureCredentials(account_name="archive", account_key="archive-key"),
]


@pytest.mark.parametrize("account, container, chosen", [
    ("lab", "secret-data", "sv=container-sas"),
    (None, "secret-data", "sv=container-sas"),  # azure://CONTAINER/prefix: the container's entry names the account
    ("lab", "other", "lab-key"),
    ("archive", "secret-data", "archive-key"),  # the container's entry is for another account
    (None, "other", "lab-key"),  # no account named: the first entry for a whole account
])
def test_the_most_specific_azure_entry_wins(account, container, chosen):
    entry = choose_azure_credentials(AZURE, account, container)
    assert chosen in (entry.account_key, entry.sas_token)


def test_no_azure_entry_fits_an_unknown_account():
    assert choose_azure_credentials(AZURE, "elsewhere", "c") is None


def test_connection_strings():
    parsed = parse_connection_string("DefaultEndpointsProtocol=https;AccountName=lab;AccountKey=a2V5;"
                                     "EndpointSuffix=core.windows.net")
    assert (parsed.account_name, parsed.account_key, parsed.endpoint) == ("lab", "a2V5", "https://lab.blob.core.windows.net")
    azurite = parse_connection_string("BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;SharedAccessSignature=sv=x&sig=y")
    assert (azurite.account_name, azurite.sas_token) == ("devstoreaccount1", "sv=x&sig=y")
    assert "a2V5" not in repr(parsed) and "sig=y" not in repr(azurite)
    development = parse_connection_string("UseDevelopmentStorage=true")  # as the SDK reads it: Azurite's account
    assert (development.account_name, development.endpoint) == ("devstoreaccount1",
                                                                "http://127.0.0.1:10000/devstoreaccount1")
    assert development.account_key.startswith("Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq")
    with pytest.raises(ValueError):
        parse_connection_string("AccountKey=a2V5")


def azure_volume(tmp_path, text):
    return load_config(str(write_config(tmp_path, text))).volumes[0].objects


def test_azure_sources_name_the_account_or_take_it_from_the_credentials(tmp_path, monkeypatch):
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT", raising=False)
    entries = 'credentials { azure: [ { account_name: lab, account_key: k, container_name: runs }, { account_name: lab, account_key: k } ] }'
    by_container = azure_volume(tmp_path, f'{entries}\nvolumes {{ d {{ source: "azure://runs/exp/1" }} }}')
    assert (by_container.account, by_container.bucket, by_container.prefix) == ("lab", "runs", "exp/1")
    by_account = azure_volume(tmp_path, f'{entries}\nvolumes {{ d {{ source: "azure://lab/other/p" }} }}')
    assert (by_account.account, by_account.bucket, by_account.prefix) == ("lab", "other", "p")
    by_host = azure_volume(tmp_path, 'volumes { d { source: "azure://pub.blob.core.windows.net/open/x" } }')
    assert (by_host.account, by_host.bucket, by_host.endpoint) == ("pub", "open", "https://pub.blob.core.windows.net")
    assert by_host.credentials.account_key is None and by_host.credentials.sas_token is None  # public: anonymous


def test_a_sas_token_for_a_container_of_the_account_the_source_names(tmp_path, monkeypatch):
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT", raising=False)
    source = azure_volume(tmp_path, 'credentials { azure: [ { container_name: runs, sas_token: "sv=1&sig=2" } ] }\n'
                                    'volumes { d { source: "azure://lab.blob.core.windows.net/runs/p" } }')
    assert (source.account, source.bucket, source.credentials.sas_token) == ("lab", "runs", "sv=1&sig=2")


def test_azure_credentials_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setenv("AZURE_STORAGE_ACCOUNT", "envacct")
    monkeypatch.setenv("AZURE_STORAGE_KEY", "env-key")
    source = azure_volume(tmp_path, 'volumes { d { source: "azure://data/p" } }')
    assert (source.account, source.bucket, source.credentials.account_key) == ("envacct", "data", "env-key")
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", "AccountName=cs;SharedAccessSignature=sv=1&sig=2;"
                                                          "BlobEndpoint=http://127.0.0.1:10000/cs")
    source = azure_volume(tmp_path, 'volumes { d { source: "azure://data/p" } }')
    assert (source.account, source.endpoint, source.credentials.sas_token) == ("cs", "http://127.0.0.1:10000/cs", "sv=1&sig=2")


GCS = [
    GcsCredentials(bucket="lab", subdir="team/a", project="a"),
    GcsCredentials(bucket="lab", subdir="team", project="team"),
    GcsCredentials(bucket="lab", project="lab"),
    GcsCredentials(project="default"),
]


@pytest.mark.parametrize("bucket, prefix, project", [
    ("lab", "team/a/runs", "a"),
    ("lab", "team/a", "a"),
    ("lab", "team/ab", "team"),  # a subdir holds whole names only
    ("lab", "other", "lab"),
    ("elsewhere", "", "default"),
])
def test_the_most_specific_gcs_entry_wins(bucket, prefix, project):
    assert choose_gcs_credentials(GCS, bucket, prefix).project == project


def test_no_gcs_entry_means_the_default_chain():
    assert choose_gcs_credentials(GCS[:3], "elsewhere", "").use_default_chain


KEY = {"type": "service_account", "project_id": "p", "private_key": "-----BEGIN PRIVATE KEY-----", "client_email": "x@p"}


def gcs_volume(tmp_path, text):
    return load_config(str(write_config(tmp_path, text))).volumes[0].objects


def test_credentials_json_is_a_file_or_the_json_itself(tmp_path, monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    (tmp_path / "key.json").write_text(json.dumps(KEY))
    from_file = gcs_volume(tmp_path, f'credentials {{ gcs: [ {{ bucket: b, credentials_json: "{tmp_path}/key.json" }} ] }}\n'
                                     'volumes { d { source: "gs://b/p" } }')
    monkeypatch.setenv("GCS_KEY", json.dumps(KEY))
    inline = gcs_volume(tmp_path, 'credentials { gcs: [ { bucket: b, credentials_json: ${GCS_KEY} } ] }\n'
                                  'volumes { d { source: "gs://b/p" } }')
    assert from_file.credentials.info == KEY == inline.credentials.info
    assert "PRIVATE" not in repr(from_file)


def test_gcs_emulators_and_the_default_chain(tmp_path, monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    google = gcs_volume(tmp_path, 'volumes { d { source: "gs://b/p" } }')
    assert google.endpoint is None and google.credentials.use_default_chain
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "127.0.0.1:4443")
    emulated = gcs_volume(tmp_path, 'volumes { d { source: "gs://b/p" } }')
    assert emulated.endpoint == "http://127.0.0.1:4443" and not emulated.credentials.use_default_chain


@pytest.mark.parametrize("text, message", [
    ('volumes { d { source: "azure://" } }', "volumes.d.source: '' is not a container name"),
    ('volumes { d { source: "azure://Bad_Name/p" } }', "volumes.d.source: 'Bad_Name' is not a container name"),
    ('volumes { d { source: "azure://data/p" } }', "volumes.d.source: names no account"),
    ('volumes { d { source: "azure://a/b", endpoint: "127.0.0.1:10000" } }', "volumes.d.endpoint: expected an http(s)://"),
    ('volumes { d { source: "azure://a/b", extra_args: { x: y } } }', "volumes.d.extra_args: unknown key"),
    ('credentials { azure: [ { account_key: k } ] }\nvolumes { d { source: "azure://a/b" } }',
     "credentials.azure.[0]: an account_key needs its account_name (or give a connection_string)"),
    ('credentials { azure: [ { connection_string: "AccountKey=s3cr3t" } ] }\nvolumes { d { source: "azure://a/b" } }',
     "credentials.azure.[0].connection_string: not a connection string the Azure SDK takes"),
    ('volumes { d { source: "gs://" } }', "volumes.d.source: expected gs://bucket/prefix"),
    ('credentials { gcs: [ { bucket: b, credentials_json: "{not json" } ] }\nvolumes { d { source: "gs://b" } }',
     "credentials.gcs.[0].credentials_json: expected the path of a JSON key file, or the JSON text itself"),
])
def test_azure_and_gcs_config_errors(tmp_path, monkeypatch, text, message):
    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.delenv("AZURE_STORAGE_ACCOUNT", raising=False)
    with pytest.raises(ConfigError) as error:
        load_config(str(write_config(tmp_path, text)))
    assert message in str(error.value) and "s3cr3t" not in str(error.value)
