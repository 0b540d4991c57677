"""Multiaddrs of IPFS nodes' RPC APIs, as Kubo and Bacalhau write them (`/ip4/10.1.10.10/tcp/80/p2p/Qm...`), as URLs."""
import ipaddress
import re

_HOST_NAME = re.compile(r"^(?=.{1,253}$)(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?$")
_SCHEMES = {(): "http", ("http",): "http", ("https",): "https", ("tls", "http"): "https"}
_EXAMPLE = "/ip4/127.0.0.1/tcp/5001, /dns4/node.example/tcp/443/https or /ip4/10.1.10.10/tcp/80/p2p/PEER_ID"


def api_url(address: str) -> str:
    """The http(s) URL of the node ADDRESS names: `/ip4|ip6|dns|dns4|dns6|dnsaddr/HOST/tcp/PORT`, then optionally
    `/http`, `/https` or `/tls/http`, then optionally `/p2p/PEER_ID` (which names the node, and is checked, but
    plays no part in reaching its API over HTTP). ValueError says what is wrong."""
    parts = address.split("/")
    if len(parts) < 5 or parts[0] != "" or parts[3] != "tcp":
        raise ValueError(f"expected a multiaddr such as {_EXAMPLE}, got {address!r}")
    _, protocol, host, _, port, *rest = parts
    if rest[-2:-1] == ["p2p"]:
        _check_peer_id(rest[-1], address)
        rest = rest[:-2]
    if tuple(rest) not in _SCHEMES:
        raise ValueError(f"expected /http, /https or /tls/http after the port, or nothing, in {address!r}")
    return f"{_SCHEMES[tuple(rest)]}://{_host(protocol, host, address)}:{_port(port, address)}"


def _host(protocol: str, host: str, address: str) -> str:
    try:
        if protocol == "ip4":
            return str(ipaddress.IPv4Address(host))
        if protocol == "ip6":
            return f"[{ipaddress.IPv6Address(host)}]"
    except ValueError:
        raise ValueError(f"{host!r} is not an {protocol} address, in {address!r}") from None
    if protocol in ("dns", "dns4", "dns6", "dnsaddr"):
        if not _HOST_NAME.match(host):
            raise ValueError(f"{host!r} is not a host name, in {address!r}")
        return host
    raise ValueError(f"expected ip4, ip6, dns, dns4, dns6 or dnsaddr, got /{protocol}, in {address!r}")


def _port(text: str, address: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"{text!r} is not a TCP port (1 to 65535), in {address!r}")
    return int(text)


def _check_peer_id(text: str, address: str):
    """A libp2p peer id: a base58btc multihash (`Qm...`, `12D3KooW...`) or a CIDv1 of a libp2p key."""
    from multiformats import CID, multibase, multihash  # slow to import: only for a tree with IPFS volumes

    try:
        if text.startswith(("Qm", "1")):
            multihash.unwrap_raw(multibase.get("base58btc").raw_decoder(text))
            return
        if CID.decode(text).codec.name == "libp2p-key":
            return
    except Exception:  # multiformats raises a different error for each way an id can be wrong
        pass
    raise ValueError(f"{text!r} is not a peer id (Qm..., 12D3KooW... or a libp2p-key CID), in {address!r}")
