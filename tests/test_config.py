"""The config file: what a good one gives, and one test per error message (file, line, key, expectation)."""
import os
import subprocess

import pytest

from conftest import FSMOUNT, write_config
from fsmount.config import ConfigError, load_config

pytestmark = pytest.mark.unit


@pytest.fixture
def links(tmp_path):
    for name in ("data", "out", "ro/inner"):
        (tmp_path / "links" / name).mkdir(parents=True)
    return tmp_path / "links"


def config_error(directory, text) -> str:
    path = write_config(directory, text)
    with pytest.raises(ConfigError) as error:
        load_config(str(path))
    message = str(error.value)
    assert message.startswith(str(path)), message
    return message[len(str(path)):]


def test_a_full_config(tmp_path, links, monkeypatch):
    monkeypatch.setenv("DATA_DIR", str(links / "data"))
    write_config(tmp_path, "cache { block_size: 4MiB }", name="cache.conf")
    config = load_config(str(write_config(tmp_path, f"""
        include "cache.conf"
        mountpoint: ~/mnt
        allow_other: true
        uid: 1000, gid: 100
        attr_timeout: 500ms
        log {{ level: DEBUG }}
        cache {{ max_size: 20GiB, metadata_ttl: 2m }}
        link_mounts: ["{links}", "{links}/ro:ro"]
        volumes {{
          data {{ source: "file://"${{DATA_DIR}} }}
          team/a/out {{ source: "file://{links}/out", mode: rw }}
          "v1.2" {{ source: "file://{links}/ro/inner", path: "archive/v1.2" }}
        }}
    """)))
    assert config.mountpoint == os.path.expanduser("~/mnt")
    assert (config.allow_other, config.uid, config.gid, config.attr_timeout, config.log_level) == (True, 1000, 100, 0.5, "debug")
    assert (config.cache.block_size, config.cache.max_size, config.cache.metadata_ttl) == (4 * 2**20, 20 * 2**30, 120.0)
    volumes = {volume.path: volume for volume in config.volumes}
    assert set(volumes) == {("data",), ("team", "a", "out"), ("archive", "v1.2")}
    assert volumes[("data",)].host_path == str(links / "data") and volumes[("data",)].read_only
    assert not volumes[("team", "a", "out")].read_only


def test_values_from_the_environment_are_converted_as_hocon_says(tmp_path, links, monkeypatch):
    monkeypatch.setenv("SHARE", "yes")
    monkeypatch.setenv("OWNER", "1000")
    config = load_config(str(write_config(tmp_path, f"""
        allow_other: ${{SHARE}}
        uid: ${{OWNER}}
        link_mounts: ["{links}"]
        volumes {{ data {{ source: "file://{links}/data" }} }}
    """)))
    assert (config.allow_other, config.uid) == (True, 1000)


def test_link_mounts_from_the_environment(tmp_path, links, monkeypatch):
    monkeypatch.setenv("FSMOUNT_LINK_MOUNTS", f"/nowhere,{links}/out:rw")
    config = load_config(str(write_config(tmp_path, f'volumes {{ out {{ source: "file://{links}/out", mode: rw }} }}')))
    assert [volume.name for volume in config.volumes] == ["out"]


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="cannot read the config: No such file or directory"):
        load_config(str(tmp_path / "absent.conf"))


def test_syntax_error_names_the_line(tmp_path):
    assert config_error(tmp_path, "a {\n  b: [1,\n  c: 2\n") .startswith(":4: not valid HOCON: Expected ']'")


def test_unresolved_substitution_names_the_line(tmp_path):
    assert config_error(tmp_path, "\nvolumes: ${NOT_SET_ANYWHERE}\n") == (
        ":2: Cannot resolve variable ${NOT_SET_ANYWHERE} (line: 2, col: 10)")


def test_unknown_top_level_key(tmp_path):
    assert config_error(tmp_path, "# fsmount\nmountpoint: /mnt\ncahce { max_size: 1GiB }\n").startswith(
        ":3: cahce: unknown key; expected one of allow_other, attr_timeout, cache,")


def test_unknown_volume_key_hints_at_quoting(tmp_path, links):
    message = config_error(tmp_path, f'link_mounts: ["{links}"]\nvolumes {{\n  data.v1 {{ source: "file://{links}/data" }}\n}}')
    assert message == ":3: volumes.data.v1: unknown key; expected one of mode, path, source (a name with '.' must be quoted)"


def test_bad_size(tmp_path):
    assert config_error(tmp_path, "cache {\n  max_size: 20 gigs\n}") == (
        ":2: cache.max_size: expected a size such as 512KiB, 8MiB or 20GiB, got '20 gigs'")


def test_an_error_names_the_keys_line_not_a_comment_that_mentions_it(tmp_path):
    text = ('# cache { max_size: 10GiB } is the default\n// cache: see max_size below\nlog { file: "/tmp/a#cache.log" }\n'
            'cache {\n  # max_size: 1GiB\n  max_size: 20 gigs\n}')
    assert config_error(tmp_path, text).startswith(":6: cache.max_size: expected a size")


def test_sizes_as_hocon_spells_them(tmp_path, links):
    config = load_config(str(write_config(tmp_path, f"""
        link_mounts: ["{links}"]
        cache {{ max_size: 8 gibibytes, block_size: 4Mi, read_ahead: 64 megabytes }}
        volumes {{ data {{ source: "file://{links}/data" }} }}
    """)))
    assert (config.cache.max_size, config.cache.block_size, config.cache.read_ahead) == (8 * 2**30, 4 * 2**20, 64 * 10**6)


def test_bad_duration(tmp_path):
    assert config_error(tmp_path, "attr_timeout: soon") == (
        ":1: attr_timeout: expected a duration such as 500ms, 60s or 5m, got 'soon'")


def test_bad_boolean(tmp_path):
    assert config_error(tmp_path, "allow_other: sometimes") == ":1: allow_other: expected true or false, got 'sometimes'"


def test_bad_uid(tmp_path):
    assert config_error(tmp_path, "uid: alice") == ":1: uid: expected a numeric id (0 or more), got 'alice'"


def test_bad_log_level(tmp_path):
    assert config_error(tmp_path, "log { level: loud }") == ":1: log.level: expected one of debug, info, warning, error, got 'loud'"


def test_section_that_is_not_an_object(tmp_path):
    assert config_error(tmp_path, "cache: 5GiB") == ":1: cache: expected an object { ... }, got '5GiB'"


def test_link_mounts_not_a_list(tmp_path):
    assert config_error(tmp_path, "link_mounts: /srv") == ":1: link_mounts: expected a list of paths, got '/srv'"


def test_relative_link_mount(tmp_path):
    assert config_error(tmp_path, 'link_mounts: ["/srv", "data:ro"]') == (
        ":1: link_mounts: entry 2: expected an absolute path, optionally ending in :ro or :rw, got 'data:ro'")


def test_bad_link_mount_in_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FSMOUNT_LINK_MOUNTS", "relative/dir")
    assert config_error(tmp_path, "volumes {}") == (
        ": $FSMOUNT_LINK_MOUNTS: expected an absolute path, optionally ending in :ro or :rw, got 'relative/dir'")


def test_no_volumes(tmp_path):
    assert config_error(tmp_path, "mountpoint: /mnt\nvolumes {}").startswith(
        ":2: volumes: expected an object with at least one volume")


def test_volume_that_is_not_an_object(tmp_path):
    assert config_error(tmp_path, 'volumes {\n  data: "file:///srv"\n}') == (
        ":2: volumes.data: expected an object { source: ..., mode: ro|rw }, got 'file:///srv'")


def test_volume_path_with_dot_dot(tmp_path, links):
    assert config_error(tmp_path, f'volumes {{\n  "a/../b" {{ source: "file://{links}/data" }}\n}}') == (
        ":2: volumes.a/../b: not a valid volume path: use names separated by '/', without '.', '..' or empty parts")


def test_missing_source(tmp_path):
    assert config_error(tmp_path, "volumes {\n  data { mode: ro }\n}") == (
        ":2: volumes.data: missing key 'source', such as source: \"file:///srv/data\"")


def test_bad_mode(tmp_path, links):
    assert config_error(tmp_path, f'link_mounts: ["{links}"]\nvolumes {{\n  data {{\n    source: "file://{links}/data"\n    mode: rx\n  }}\n}}') == (
        ":5: volumes.data.mode: expected ro or rw, got 'rx'")


def test_unsupported_source_is_shown_without_its_secret(tmp_path):
    message = config_error(tmp_path, 'volumes { web { source: "ftp://user:hunter2@example.org/a?sig=TOKEN" } }')
    assert message == (":1: volumes.web.source: unsupported source 'ftp://user:***@example.org/a?***'; "
                       "expected file:///absolute/path, s3://bucket/prefix, azure://container/prefix, gs://bucket/prefix, "
                       "ipfs://CID/path or http(s)://host/file")


def test_file_source_with_a_host(tmp_path):
    assert config_error(tmp_path, 'volumes { data { source: "file://server/srv" } }') == (
        ":1: volumes.data.source: expected file:///absolute/path, got 'file://server/srv'")


def test_source_that_does_not_exist(tmp_path, links):
    assert config_error(tmp_path, f'link_mounts: ["{links}"]\nvolumes {{ data {{ source: "file://{links}/absent" }} }}') == (
        f":2: volumes.data.source: {links}/absent is not an existing directory or file")


def test_source_outside_every_link_mount(tmp_path, links):
    assert config_error(tmp_path, f'link_mounts: ["{links}/out"]\nvolumes {{ data {{ source: "file://{links}/data" }} }}') == (
        f":2: volumes.data.source: {links}/data lies outside every link mount (allowed: {links}/out)")


def test_source_with_no_link_mounts_at_all(tmp_path, links):
    assert config_error(tmp_path, f'volumes {{ data {{ source: "file://{links}/data" }} }}') == (
        f":1: volumes.data.source: {links}/data lies outside every link mount (allowed: none; set link_mounts or $FSMOUNT_LINK_MOUNTS)")


def test_symlink_out_of_a_link_mount_does_not_count_as_inside(tmp_path, links):
    (links / "escape").symlink_to(tmp_path)
    assert config_error(tmp_path, f'link_mounts: ["{links}"]\nvolumes {{ data {{ source: "file://{links}/escape" }} }}') == (
        f":2: volumes.data.source: {tmp_path} lies outside every link mount (allowed: {links})")


def test_rw_volume_in_a_read_only_link_mount(tmp_path, links):
    assert config_error(tmp_path, f'link_mounts: ["{links}", "{links}/ro:ro"]\nvolumes {{\n  x {{ source: "file://{links}/ro/inner", mode: rw }}\n}}') == (
        f":3: volumes.x.mode: rw, but link mount {links}/ro is read-only (:ro)")


def test_two_volumes_at_the_same_path(tmp_path, links):
    assert config_error(tmp_path, f'''link_mounts: ["{links}"]
volumes {{
  data {{ source: "file://{links}/data" }}
  other {{ source: "file://{links}/out", path: "data" }}
}}''') == ":4: volumes.other: two volumes at the same path 'data'"


def test_a_volume_inside_another(tmp_path, links):
    assert config_error(tmp_path, f'''link_mounts: ["{links}"]
volumes {{
  data {{ source: "file://{links}/data" }}
  data/inner {{ source: "file://{links}/out" }}
}}''') == ":4: volumes.data/inner: volume 'data/inner' would lie inside volume 'data'; volumes cannot nest"


def test_check_prints_the_mount_table(tmp_path, links):
    config = write_config(tmp_path, f'''link_mounts: ["{links}", "{links}/ro:ro"]
volumes {{
  data {{ source: "file://{links}/data" }}
  team/a/out {{ source: "file://{links}/out", mode: rw }}
}}''')
    result = subprocess.run([FSMOUNT, "check", str(config)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert f"link mounts  {links} (rw), {links}/ro (ro)" in result.stdout
    assert "metrics      off" in result.stdout
    assert "staging      " in result.stdout and ": at most 10GiB, parts of 8MiB (GCS: 32MiB) above 16MiB" in result.stdout
    assert result.stdout.splitlines()[-3:] == [
        "PATH        MODE  SOURCE",
        f"data        ro    file://{links}/data",
        f"team/a/out  rw    file://{links}/out",
    ]
    with_metrics = write_config(tmp_path, f'metrics {{ listen: "[::1]:9464" }}\n{config.read_text()}', "metrics.conf")
    result = subprocess.run([FSMOUNT, "check", str(with_metrics)], capture_output=True, text=True)
    assert "metrics      http://[::1]:9464/metrics and /healthz" in result.stdout, result.stdout + result.stderr


def test_check_fails_with_the_message_and_no_secret(tmp_path):
    config = write_config(tmp_path, 'volumes { web { source: "ftp://user:hunter2@example.org/a" } }')
    result = subprocess.run([FSMOUNT, "check", str(config)], capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr.startswith(f"fsmount: {config}:1: volumes.web.source: unsupported source")
    assert "hunter2" not in result.stdout + result.stderr


def test_s3_volume_options(tmp_path):
    config = load_config(str(write_config(tmp_path, """
        volumes {
          logs { source: "s3://bucket/logs/", filter: "\\\\.csv$", extra_args { ServerSideEncryption: AES256 },
                 request_payer: requester }
          model { source: "s3://bucket/models/m.bin", version_id: "3HL4kqtJvjVBH40Nrjfkd",
                  checksum_sha256: "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=" }
        }
    """)))
    volumes = {volume.name: volume.objects for volume in config.volumes}
    assert volumes["logs"].filter.search("logs/a.csv") and not volumes["logs"].filter.search("logs/a.json")
    assert volumes["logs"].extra_args == {"ServerSideEncryption": "AES256"} and not volumes["logs"].single_object
    assert volumes["logs"].request_payer == "requester" and volumes["model"].request_payer is None
    model = volumes["model"]
    assert model.single_object and model.version_id == "3HL4kqtJvjVBH40Nrjfkd"
    assert model.checksum_sha256.hex() == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def test_bad_filter(tmp_path):
    assert config_error(tmp_path, 'volumes {\n  v { source: "s3://b/", filter: "(" }\n}') == \
        ":2: volumes.v.filter: not a valid regular expression (missing ), unterminated subpattern at position 0): '('"


def test_bad_checksum(tmp_path):
    assert config_error(tmp_path, 'volumes {\n  v { source: "s3://b/k", checksum_sha256: abc }\n}') == \
        ":2: volumes.v.checksum_sha256: expected a SHA-256 digest in hex (64 digits) or base64, got 'abc'"


def test_version_id_of_a_prefix(tmp_path):
    assert config_error(tmp_path, 'volumes {\n  v { source: "s3://b/dir/", version_id: x }\n}') == \
        ":2: volumes.v.version_id: needs a source that names one object, such as s3://b/data.csv"


def test_a_pinned_object_cannot_be_written(tmp_path):
    assert config_error(tmp_path, 'volumes {\n  v { source: "s3://b/k", version_id: x, mode: rw }\n}') == \
        ":2: volumes.v.mode: rw, but a volume of one pinned or checksummed object is read-only"


def test_extra_args_not_an_object(tmp_path):
    assert config_error(tmp_path, 'volumes {\n  v { source: "s3://b/", extra_args: AES256 }\n}') == \
        ":2: volumes.v.extra_args: expected an object of names and values, such as { ServerSideEncryption: AES256 }, got 'AES256'"


def test_a_request_payer_other_than_the_requester(tmp_path):
    assert config_error(tmp_path, 'volumes {\n  v { source: "s3://b/", request_payer: owner }\n}') == \
        ":2: volumes.v.request_payer: expected requester, got 'owner'"


def test_staging_and_upload_options(tmp_path):
    config = load_config(str(write_config(tmp_path, """
        cache { dir: /var/cache/fsmount }
        staging { max_size: 2GiB, multipart_threshold: 64MiB, part_size: 16MiB, parallel_parts: 8 }
        volumes { out { source: "s3://bucket/out/", mode: rw, rename_limit: 50 } }
    """)))
    staging = config.staging
    assert staging.dir == "/var/cache/fsmount/staging"
    assert (staging.max_size, staging.multipart_threshold, staging.part_size, staging.parallel_parts) == (
        2 * 2**30, 64 * 2**20, 16 * 2**20, 8)
    assert config.volumes[0].objects.rename_limit == 50


@pytest.mark.parametrize("size", ["1MiB", "6000000"])  # too small for S3; no multiple of 256 KiB for GCS
def test_a_part_size_every_store_takes(tmp_path, size):
    assert config_error(tmp_path, f'staging {{\n  part_size: {size}\n}}\nvolumes {{ v {{ source: "s3://b/" }} }}') == \
        (":2: staging.part_size: expected at least 5MiB (S3 refuses smaller parts) and a multiple of 256KiB "
         "(GCS does), such as 8MiB")


def test_url_volumes_name_their_files(tmp_path):
    config = load_config(str(write_config(tmp_path, """
        volumes {
          one { source: "https://example.org/data/weather%20.csv?token=SECRET" }
          renamed { source: "https://example.org/download?id=3", name: model.bin }
          listed { source: ["https://a.example/x.csv", { url: "https://b.example/x.csv", name: y.csv }] }
        }
    """)))
    files = {volume.name: volume.objects.files for volume in config.volumes}
    assert files == {"one": {"weather .csv": "https://example.org/data/weather%20.csv?token=SECRET"},
                     "renamed": {"model.bin": "https://example.org/download?id=3"},
                     "listed": {"x.csv": "https://a.example/x.csv", "y.csv": "https://b.example/x.csv"}}
    assert all(volume.read_only for volume in config.volumes)


@pytest.mark.parametrize("text, message", [
    ('volumes { w { source: "https://e.org/f", mode: rw } }', ":1: volumes.w.mode: URL volumes are read-only"),
    ('volumes { w { source: "https://e.org/dir/" } }', ":1: volumes.w.source: 'https://e.org/dir/' names no file"),
    ('volumes { w { source: ["https://a.org/x", "https://b.org/x"] } }',
     ":1: volumes.w.source.[1]: a second file named 'x'"),
    ('volumes { w { source: ["ftp://a.org/x"] } }', ":1: volumes.w.source.[0]: expected an http(s)://host/path URL"),
    ('volumes { w { source: ["https://a.org/x", "https://a.org/y"], name: z } }',
     ":1: volumes.w.name: names the file of a volume of one URL"),
    ('volumes { w { source: "https://e.org/f?sig=SECRET", endpoint: "x" } }', ":1: volumes.w.endpoint: unknown key"),
])
def test_url_volume_errors(tmp_path, text, message):
    assert config_error(tmp_path, text).startswith(message)


def test_verify_is_true_false_a_ca_bundle_path_or_its_url_which_is_noted_for_the_daemon_to_fetch(tmp_path):
    """Only the URLs volumes use are noted: a credentials entry no volume chooses is never fetched."""
    bundle = "https://ca.example/bundle.pem"
    config = load_config(str(write_config(tmp_path, f"""
        credentials {{ s3: [ {{ host: "127.0.0.1:9000", key: k, secret: s, verify: "{bundle}" }}
                             {{ bucket: unused, verify: "http://ca.example/unused.pem" }} ] }}
        volumes {{
          s3 {{ source: "s3://127.0.0.1:9000/b/" }}
          web {{ source: "https://e.org/f", verify: "~/ca.pem" }}
          ipfs {{ source: "ipfs://QmPZ9gcCEpqKTo6aq61g2nXGUhM4iCL3ewB6LDXZCtioEB", gateway: "https://gw.example",
                  verify: "{bundle}" }}
          gcs {{ source: "gs://b/", verify: false }}
        }}
    """)))
    assert {volume.name: volume.objects.verify for volume in config.volumes} == {
        "s3": bundle, "web": os.path.expanduser("~/ca.pem"), "ipfs": bundle, "gcs": False}
    assert config.ca_bundles == {bundle: "credentials.s3.[0].verify"}


def test_verify_of_another_scheme_is_refused(tmp_path):
    assert config_error(tmp_path, 'volumes { w { source: "https://e.org/f", verify: "ftp://ca.example/ca.pem" } }') == (
        ":1: volumes.w.verify: expected true, false, the path of a CA bundle or its http(s) URL, "
        "got 'ftp://ca.example/ca.pem'")


def test_ipfs_volumes_take_a_cid_and_a_path_from_an_api_or_a_gateway(tmp_path, monkeypatch):
    monkeypatch.setenv("FSMOUNT_IPFS_API", "/dns4/node.internal/tcp/443/https")
    config = load_config(str(write_config(tmp_path, """
        volumes {
          v0 { source: "ipfs://QmPZ9gcCEpqKTo6aq61g2nXGUhM4iCL3ewB6LDXZCtioEB", api: "/ip4/127.0.0.1/tcp/5001" }
          v1 { source: "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi/wiki/a%20b", gateway: "http://127.0.0.1:8080/" }
          six { source: "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi", api: "/ip6/::1/tcp/5001" }
          bacalhau { source: "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi",
                     api: "/ip4/10.1.10.10/tcp/80/p2p/QmVcSqVEsvm5RR9mBLjwpb2XjFVn5bPdPL69mL8PH45pPC" }
          env { source: "ipfs://bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi" }
        }
    """)))
    sources = {volume.name: volume.objects for volume in config.volumes}
    assert (sources["v0"].bucket, sources["v0"].path, sources["v0"].api) == (
        "QmPZ9gcCEpqKTo6aq61g2nXGUhM4iCL3ewB6LDXZCtioEB", "", "http://127.0.0.1:5001")
    assert (sources["v1"].path, sources["v1"].gateway, sources["v1"].api) == ("wiki/a b", "http://127.0.0.1:8080", None)
    assert sources["six"].api == "http://[::1]:5001"
    assert sources["bacalhau"].api == "http://10.1.10.10:80"
    assert sources["env"].api == "https://node.internal:443"
    assert all(volume.read_only and volume.objects.immutable for volume in config.volumes)


CID_V1 = "bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi"


@pytest.mark.parametrize("text, message", [
    ('volumes { i { source: "ipfs://notacid", api: "/ip4/127.0.0.1/tcp/5001" } }',
     ":1: volumes.i.source: expected ipfs://CID[/path] with a CIDv0"),
    (f'volumes {{ i {{ source: "ipfs://{CID_V1}", api: "/ip4/127.0.0.1/udp/5001" }} }}',
     ":1: volumes.i.api: expected a multiaddr such as /ip4/127.0.0.1/tcp/5001"),
    (f'volumes {{ i {{ source: "ipfs://{CID_V1}", api: "/ip4/127.0.0.1/tcp/5001", gateway: "http://x" }} }}',
     ":1: volumes.i.gateway: an IPFS volume reads from its api or its gateway: give one"),
    (f'volumes {{ i {{ source: "ipfs://{CID_V1}" }} }}', ":1: volumes.i: names no IPFS node: add api:"),
    (f'volumes {{ i {{ source: "ipfs://{CID_V1}", gateway: "http://x", mode: rw }} }}',
     ":1: volumes.i.mode: rw, but IPFS content never changes"),
    (f'volumes {{ i {{ source: "ipfs://{CID_V1}", gateway: "http://x", filter: "a" }} }}',
     ":1: volumes.i.filter: unknown key"),
])
def test_ipfs_volume_errors(tmp_path, monkeypatch, text, message):
    monkeypatch.delenv("FSMOUNT_IPFS_API", raising=False)
    assert config_error(tmp_path, text).startswith(message)
