"""Which credentials a bucket gets, and how s3:// sources and endpoints are read (no server needed)."""
import subprocess

import pytest

from conftest import FSMOUNT, write_config
from fsmount.config import ConfigError, load_config
from fsmount.credentials import S3Credentials, choose_s3_credentials

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
    return load_config(str(write_config(tmp_path, text))).volumes[0].s3


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
