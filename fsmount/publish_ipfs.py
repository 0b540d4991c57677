"""`fsmount publish --to ipfs`: a directory added to an IPFS node through its RPC API (Kubo's `/api/v0/add`), then read back and checked.

The tree goes up as one multipart/form-data body, made as the files are read: each directory, file and symlink
a part (Kubo's form: `application/x-directory`, file bytes, `application/symlink`), named by its URL-escaped
path below the directory's own name, its mtime in the part's form name. The node makes CIDv1 with raw leaves
and pins the root. The check reads the result back as an IPFS volume does, block by block through
`block/get` with every block hashed against its CID, and compares it with the tree: names, kinds, symlink
targets, file times, and every file's bytes.
"""
import hashlib
import json
import os
import stat
import tempfile
import urllib.parse
import uuid

import trio
import urllib3

from fsmount.config import IPFS_API_ENV, ipfs_api_url
from fsmount.publish import Progress, run_with_stores, walk
from fsmount.stores.aio import TrioStore
from fsmount.stores.base import ListPage, StoreError
from fsmount.stores.ipfs import IpfsStore

_READ = 4 * 2**20  # bytes of a file read at once, here and back from the node
_ADD_ARGUMENTS = {"cid-version": "1", "raw-leaves": "true", "wrap-with-directory": "false", "pin": "true",
                  "preserve-mtime": "true", "progress": "false"}


class PublishError(StoreError):
    """The node refused the tree, or what it holds is not the tree."""


def publish_ipfs(root: str, api: str | None, progress: Progress) -> str:
    """Adds the tree at ROOT to the node whose RPC API is API (a multiaddr or URL; None: $FSMOUNT_IPFS_API),
    checks what the node made, and returns its root CID."""
    api = api or os.environ.get(IPFS_API_ENV)
    if not api:
        raise PublishError(f"no IPFS node: give --api /ip4/127.0.0.1/tcp/5001 or set ${IPFS_API_ENV}")
    try:
        api = ipfs_api_url(api)
    except ValueError as error:
        raise PublishError(str(error)) from None
    top = os.path.basename(os.path.abspath(root))
    boundary = uuid.uuid4().hex
    response = urllib3.PoolManager().request(
        "POST", f"{api}/api/v0/add?{urllib.parse.urlencode(_ADD_ARGUMENTS)}", body=_form(root, top, boundary, progress),
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"}, chunked=True, preload_content=False,
        retries=False)
    cid = None
    try:
        if response.status != 200:
            raise PublishError(f"{api}/api/v0/add: {response.status} {response.data[:200]!r}")
        for line in response:
            added = json.loads(line)
            if "Hash" not in added:
                raise PublishError(f"{api}/api/v0/add: {added.get('Message', line)}")
            if added.get("Name") == top:
                cid = added["Hash"]
    finally:
        response.release_conn()
    if cid is None:
        raise PublishError(f"{api}/api/v0/add named no CID for {top}")
    run_with_stores(_check, root, cid, api)
    return cid


def _form(root: str, top: str, boundary: str, progress: Progress):
    """The body of an `add` of ROOT as TOP, in pieces, as the tree is read."""
    for path, relative, info in [(root, "", os.stat(root)), *walk(root)]:
        name = urllib.parse.quote(os.path.join(top, relative).rstrip("/"), safe="")
        seconds, nanoseconds = divmod(info.st_mtime_ns, 10**9)
        if stat.S_ISDIR(info.st_mode):
            kind = "application/x-directory"
        elif stat.S_ISLNK(info.st_mode):
            kind = "application/symlink"
        elif stat.S_ISREG(info.st_mode):
            kind = "application/octet-stream"
        else:
            continue  # a device, a socket or a FIFO: UnixFS has no such node
        yield (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file?mtime={seconds}&mtime-nsecs={nanoseconds}"
               f"\"; filename=\"{name}\"\r\nContent-Type: {kind}\r\n\r\n").encode()
        if stat.S_ISLNK(info.st_mode):
            yield os.fsencode(os.readlink(path))
        elif stat.S_ISREG(info.st_mode):
            with open(path, "rb") as stream:
                while data := stream.read(_READ):
                    progress.add(len(data))
                    yield data
        yield b"\r\n"
    yield f"--{boundary}--\r\n".encode()


async def _check(root: str, cid: str, api: str):
    """That the tree the node holds as CID is the tree at ROOT, read back as an IPFS volume reads it."""
    with tempfile.TemporaryDirectory(prefix="fsmount-publish-") as listings:
        store = TrioStore(IpfsStore(cid, "", listings, api=api))
        await store.open()
        try:
            await _check_directory(store, root, "")
        finally:
            await store.close()


async def _check_directory(store: TrioStore, root: str, prefix: str):
    published = {}
    token = None
    while True:
        page: ListPage = await store.list_page(prefix, "/", token)
        published.update((info.key[len(prefix):], info) for info in page.objects if info.key != prefix)
        published.update((name[len(prefix):-1], None) for name in page.prefixes)
        token = page.next_token
        if token is None:
            break
    directory = os.path.join(root, prefix)
    local = [name for name in sorted(os.listdir(directory)) if _published(os.lstat(os.path.join(directory, name)))]
    if sorted(published) != local:
        raise PublishError(f"{prefix or './'}: the node holds {sorted(published)}, the tree {local}")
    for name, info in published.items():
        path = os.path.join(directory, name)
        local_info = os.lstat(path)
        if info is None:
            if not stat.S_ISDIR(local_info.st_mode):
                raise PublishError(f"{prefix}{name}: a directory on the node, not in the tree")
            await _check_directory(store, root, f"{prefix}{name}/")
        elif stat.S_ISLNK(local_info.st_mode):
            if info.link_target != os.readlink(path):
                raise PublishError(f"{prefix}{name}: a symlink to {info.link_target!r} on the node")
        elif info.link_target is not None or info.size != local_info.st_size or info.mtime_ns != local_info.st_mtime_ns:
            raise PublishError(f"{prefix}{name}: {info.size} bytes of {info.mtime_ns} on the node, "
                               f"{local_info.st_size} of {local_info.st_mtime_ns} in the tree")
        elif await trio.to_thread.run_sync(_published_digest, store.store, info.key, info.size, info.version) != _digest(path):
            raise PublishError(f"{prefix}{name}: the bytes on the node are not the file's")


def _published(info: os.stat_result) -> bool:
    return stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode) or stat.S_ISLNK(info.st_mode)


def _published_digest(store: IpfsStore, key: str, size: int, version: str) -> bytes:
    digest = hashlib.sha256()
    for start in range(0, size, _READ):
        digest.update(store.read_range(key, start, _READ, version))
    return digest.digest()


def _digest(path: str) -> bytes:
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").digest()
