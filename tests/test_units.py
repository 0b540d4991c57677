"""Pure parsing: sizes, durations, mount options, link mounts, multiaddrs, URL redaction."""
import datetime
import os
import re

import pytest

from fsmount.config import LinkMount, parse_link_mount
from fsmount.stores.base import redact_url
from fsmount.daemon import MountError, parse_mount_options
from fsmount.multiaddr import api_url
from fsmount.volumes.host import filesystem_type
from fsmount.units import format_size, parse_duration, parse_size

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("text, size", [
    ("8MiB", 8 * 2**20), ("8M", 8 * 2**20), ("20GiB", 20 * 2**30), ("512KiB", 512 * 1024),
    ("1.5GB", 1_500_000_000), ("10kB", 10_000), ("4096", 4096), (4096, 4096), ("1 TiB", 2**40), ("0B", 0),
    ("8Gi", 8 * 2**30), ("8 gibibytes", 8 * 2**30), ("1 kibibyte", 1024), ("2Pi", 2 * 2**50), ("1 EiB", 2**60),
    ("3 megabytes", 3_000_000), ("1 exabyte", 10**18), ("5 bytes", 5), ("1e", 2**60),
])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["8 parsecs", "-1", "MiB", "", True, -5, "1e3"])
def test_bad_sizes_say_what_is_expected(text):
    with pytest.raises(ValueError, match="expected a size such as"):
        parse_size(text)


@pytest.mark.parametrize("value, seconds", [
    ("60s", 60.0), ("500ms", 0.5), ("1.5s", 1.5), ("5m", 300.0), ("2h", 7200.0), ("1d", 86400.0),
    (30, 30.0), (0.25, 0.25), (datetime.timedelta(minutes=2), 120.0),
])
def test_durations(value, seconds):
    assert parse_duration(value) == seconds


def test_durations_as_pyhocon_reads_them_with_or_without_dateutil():
    from pyhocon import ConfigFactory
    assert parse_duration(ConfigFactory.parse_string("a: 90s")["a"]) == 90.0
    dateutil = pytest.importorskip("dateutil.relativedelta")
    assert parse_duration(dateutil.relativedelta(minutes=2, seconds=3)) == 123.0


@pytest.mark.parametrize("value", ["soon", "5 fortnights", "-3s", False])
def test_bad_durations_say_what_is_expected(value):
    with pytest.raises(ValueError, match="expected a duration such as"):
        parse_duration(value)


def test_format_size_is_the_inverse_for_round_sizes():
    assert [format_size(s) for s in (8 * 2**20, 10 * 2**30, 1536, 100)] == ["8MiB", "10GiB", "1.5KiB", "100B"]


def test_mount_options_as_fstab_passes_them():
    options = parse_mount_options("rw,allow_other,_netdev,noauto,x-systemd.automount,uid=1000,gid=100,nodev,log=/tmp/l")
    assert options.allow_other is True
    assert (options.uid, options.gid, options.log_file) == (1000, 100, "/tmp/l")
    assert options.kernel_flags == {"nodev"}
    assert options.read_only is False


def test_ro_option_makes_the_kernel_mount_read_only_too():
    options = parse_mount_options("ro")
    assert options.read_only and options.kernel_flags == {"ro"}


def test_unknown_mount_option_is_named():
    with pytest.raises(MountError, match="unknown mount option 'turbo'"):
        parse_mount_options("defaults,turbo")


@pytest.mark.parametrize("entry, expected", [
    ("/srv/data", LinkMount("/srv/data", False)),
    ("/srv/data:ro", LinkMount("/srv/data", True)),
    ("/srv/data:rw", LinkMount("/srv/data", False)),
    ("/srv/odd:name", LinkMount("/srv/odd:name", False)),
])
def test_link_mount_entries(entry, expected):
    assert parse_link_mount(entry) == expected


def test_relative_link_mount_is_refused():
    with pytest.raises(ValueError, match="expected an absolute path"):
        parse_link_mount("data:ro")


def test_redact_url_masks_passwords_and_query_tokens():
    assert redact_url("https://user:hunter2@example.org/x?sig=SECRET") == "https://user:***@example.org/x?***"
    assert redact_url("file:///srv/data") == "file:///srv/data"


MOUNTINFO = """22 27 0:21 / /proc rw,relatime - proc proc rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
31 27 0:45 / /u/nlp rw,relatime shared:5 - nfs4 server:/export rw,vers=4.2
"""


def test_filesystem_type_by_device_number():
    assert filesystem_type(MOUNTINFO, os.makedev(254, 0)) == "ext4"
    assert filesystem_type(MOUNTINFO, os.makedev(0, 45)) == "nfs4"
    assert filesystem_type(MOUNTINFO, os.makedev(9, 9)) is None


@pytest.mark.parametrize("address, url", [
    ("/ip4/10.1.10.10/tcp/80/p2p/QmVcSqVEsvm5RR9mBLjwpb2XjFVn5bPdPL69mL8PH45pPC", "http://10.1.10.10:80"),  # Bacalhau's
    ("/ip4/127.0.0.1/tcp/5001", "http://127.0.0.1:5001"),
    ("/dns4/node.example/tcp/443/https", "https://node.example:443"),
    ("/dns/node.example/tcp/443/tls/http/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp", "https://node.example:443"),
    ("/ip6/::1/tcp/5001/http", "http://[::1]:5001"),
    ("/dnsaddr/node.example/tcp/4001", "http://node.example:4001"),
])
def test_multiaddrs_of_an_ipfs_api(address, url):
    assert api_url(address) == url


@pytest.mark.parametrize("address, complaint", [
    ("/ip4/300.1.1.1/tcp/80", "'300.1.1.1' is not an ip4 address"),
    ("/ip6/1.2.3.4/tcp/80", "'1.2.3.4' is not an ip6 address"),
    ("/ip4/1.1.1.1/tcp/0", "'0' is not a TCP port"),
    ("/ip4/1.1.1.1/tcp/65536", "'65536' is not a TCP port"),
    ("/ip4/1.1.1.1/udp/80", "expected a multiaddr such as"),
    ("/ip4/1.1.1.1/tcp/80/p2p/QmNOTAPEER", "'QmNOTAPEER' is not a peer id"),
    ("/ip4/1.1.1.1/tcp/80/p2p/bafybeigdyrzt5sfp7udm7hu76uh7y26nf3efuylqabf3oclgtqy55fbzdi", "is not a peer id"),
    ("/dns4/-bad-/tcp/80", "'-bad-' is not a host name"),
    ("/ip4/1.1.1.1/tcp/80/ws", "expected /http, /https or /tls/http"),
    ("/onion3/abc/tcp/80", "expected ip4, ip6, dns"),
])
def test_bad_multiaddrs_say_what_is_wrong(address, complaint):
    with pytest.raises(ValueError, match=re.escape(complaint)):
        api_url(address)
