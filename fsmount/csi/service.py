"""`fsmount csi`: the CSI Identity and Node services on a Unix socket, as kubelet and its sidecars call them; each
request checked as the spec requires, then carried out by the node's registry of volumes."""
import contextlib
import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import signal
import sys
import threading
import traceback
from concurrent.futures import ThreadPoolExecutor

import grpc

from fsmount.csi import csi_identity_pb2 as csi_identity, csi_identity_pb2_grpc
from fsmount.csi import csi_node_pb2 as csi_node, csi_node_pb2_grpc
from fsmount.csi.mounts import MountFailed
from fsmount.csi.registry import CsiError, Publication, Registry
from fsmount.csi.volume_config import mask, read_node_config, volume_attributes
from fsmount.daemon import MountError, parse_mount_options
from fsmount.config import ConfigError

DRIVER_NAME = "csi.fsmount.dev"
log = logging.getLogger("fsmount.csi")

_WORKERS = 8  # requests served at once; those for one volume wait for each other
_STOP_GRACE = 10  # seconds requests under way get to finish on SIGTERM
_READ_ONLY_MODES = {csi_node.VolumeCapability.AccessMode.SINGLE_NODE_READER_ONLY,
                    csi_node.VolumeCapability.AccessMode.MULTI_NODE_READER_ONLY}
_FS_TYPES = {"", "fuse", "fuse.fsmount", "fsmount"}


def _answering(method):
    """Turns a CsiError into its gRPC status, and anything else into INTERNAL with the error's text; a secret of the
    request is masked in either."""
    @functools.wraps(method)
    def answer(self, request, context):
        secrets = dict(getattr(request, "secrets", {}))
        try:
            return method(self, request, context)
        except CsiError as error:
            code, message = error.code, str(error)
        except (MountFailed, OSError) as error:
            code, message = grpc.StatusCode.INTERNAL, str(error)
        except Exception as error:
            log.error("%s failed:\n%s", method.__name__, mask(traceback.format_exc(), secrets))
            code, message = grpc.StatusCode.INTERNAL, f"{type(error).__name__}: {error}"
        message = mask(message, secrets)
        log.warning("%s: %s: %s", method.__name__, code.name, message)
        context.abort(code, message)
    return answer


def _require(value, what: str):
    if not value:
        raise CsiError(grpc.StatusCode.INVALID_ARGUMENT, f"{what} is missing")


class Identity(csi_identity_pb2_grpc.IdentityServicer):
    def GetPluginInfo(self, request, context):
        return csi_identity.GetPluginInfoResponse(name=DRIVER_NAME,
                                                  vendor_version=importlib.metadata.version("fsmount"))

    def GetPluginCapabilities(self, request, context):
        return csi_identity.GetPluginCapabilitiesResponse()  # a node plugin alone: no controller service, no topology

    @_answering
    def Probe(self, request, context):
        if not os.path.exists("/dev/fuse"):
            raise CsiError(grpc.StatusCode.FAILED_PRECONDITION, "no /dev/fuse: the plugin's container needs the "
                                                                "host's /dev/fuse")
        return csi_identity.ProbeResponse(ready=csi_identity.BoolValue(value=True))


class Node(csi_node_pb2_grpc.NodeServicer):
    def __init__(self, registry: Registry, node_id: str):
        self.registry = registry
        self.node_id = node_id

    def NodeGetInfo(self, request, context):
        return csi_node.NodeGetInfoResponse(node_id=self.node_id, max_volumes_per_node=self.registry.max_volumes)

    def NodeGetCapabilities(self, request, context):
        rpc = csi_node.NodeServiceCapability.RPC
        return csi_node.NodeGetCapabilitiesResponse(capabilities=[
            csi_node.NodeServiceCapability(rpc=rpc(type=kind))
            for kind in (rpc.GET_VOLUME_STATS, rpc.VOLUME_CONDITION, rpc.SINGLE_NODE_MULTI_WRITER)])

    @_answering
    def NodePublishVolume(self, request, context):
        self.registry.publish(publication(request))
        return csi_node.NodePublishVolumeResponse()

    @_answering
    def NodeUnpublishVolume(self, request, context):
        _require(request.volume_id, "volume_id")
        _require(request.target_path, "target_path")
        self.registry.unpublish(request.volume_id, os.path.abspath(request.target_path))
        return csi_node.NodeUnpublishVolumeResponse()

    @_answering
    def NodeGetVolumeStats(self, request, context):
        _require(request.volume_id, "volume_id")
        _require(request.volume_path, "volume_path")
        status, trouble = self.registry.usage(request.volume_id, request.volume_path)
        if status is None:
            return csi_node.NodeGetVolumeStatsResponse(
                volume_condition=csi_node.VolumeCondition(abnormal=True, message=trouble))
        cache = status["cache"] or {"used": 0, "limit": 0}
        staging = status["staging"]
        used, total = cache["used"] + staging["used"], cache["limit"] + staging["limit"]
        return csi_node.NodeGetVolumeStatsResponse(
            usage=[csi_node.VolumeUsage(unit=csi_node.VolumeUsage.BYTES, used=used, total=total,
                                        available=max(0, total - used))],
            volume_condition=csi_node.VolumeCondition(abnormal=False, message="served"))


def publication(request) -> Publication:
    """The NodePublishVolumeRequest checked: InvalidArgument for what is missing or malformed, FailedPrecondition for
    what a fsmount volume cannot be."""
    _require(request.volume_id, "volume_id")
    _require(request.target_path, "target_path")
    if not os.path.isabs(request.target_path):
        raise CsiError(grpc.StatusCode.INVALID_ARGUMENT, f"target_path {request.target_path!r} is not absolute")
    _require(request.HasField("volume_capability"), "volume_capability")
    capability = request.volume_capability
    access = capability.WhichOneof("access_type")
    _require(access, "volume_capability's access type (mount)")
    if access == "block":
        raise CsiError(grpc.StatusCode.FAILED_PRECONDITION, "an fsmount volume is a file system: block access is not "
                                                            "supported")
    _require(capability.access_mode.mode, "volume_capability's access_mode")
    if capability.mount.fs_type not in _FS_TYPES:
        raise CsiError(grpc.StatusCode.FAILED_PRECONDITION, f"fs_type {capability.mount.fs_type!r}: an fsmount volume "
                                                            "is fuse.fsmount")
    options = ",".join(flag.strip() for flag in capability.mount.mount_flags if flag.strip())
    try:
        parsed = parse_mount_options(options)
    except MountError as error:
        raise CsiError(grpc.StatusCode.INVALID_ARGUMENT, f"mount flags: {error}") from None
    if parsed.log_file is not None:
        raise CsiError(grpc.StatusCode.INVALID_ARGUMENT, "mount flags: log= is the node's to set, not a volume's")
    capability_digest = hashlib.sha256(capability.SerializeToString(deterministic=True)).hexdigest()
    attributes = volume_attributes(dict(request.volume_context))
    params = json.dumps([request.volume_id, attributes, capability_digest, request.readonly], sort_keys=True)
    return Publication(
        volume_id=request.volume_id, target=os.path.abspath(request.target_path), attributes=attributes,
        secrets=dict(request.secrets),
        read_only=request.readonly or parsed.read_only or capability.access_mode.mode in _READ_ONLY_MODES,
        options=options, access_mode=capability.access_mode.mode, capability=capability_digest,
        params=hashlib.sha256(params.encode()).hexdigest())


def serve(endpoint: str, node_id: str, config_file: str | None, state_dir: str, max_volumes: int) -> int:
    """Serves until SIGTERM or SIGINT; the daemons go on serving their volumes, for the next plugin to take up."""
    logging.basicConfig(stream=sys.stderr, level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not endpoint.startswith("unix://"):
        print(f"fsmount csi: expected --endpoint unix:///path/csi.sock, got {endpoint!r}", file=sys.stderr)
        return 1
    if max_volumes < 1:
        print(f"fsmount csi: expected --max-volumes of 1 or more, got {max_volumes}", file=sys.stderr)
        return 1
    try:
        node = read_node_config(config_file, state_dir)
    except ConfigError as error:
        print(f"fsmount csi: {error}", file=sys.stderr)
        return 1
    registry = Registry(state_dir, node, max_volumes)
    registry.recover()
    server = grpc.server(ThreadPoolExecutor(max_workers=_WORKERS))
    csi_identity_pb2_grpc.add_IdentityServicer_to_server(Identity(), server)
    csi_node_pb2_grpc.add_NodeServicer_to_server(Node(registry, node_id), server)
    socket_path = endpoint.removeprefix("unix://")
    os.makedirs(os.path.dirname(socket_path) or ".", exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(socket_path)  # a plugin that served here before
    server.add_insecure_port(endpoint)
    server.start()
    os.chmod(socket_path, 0o600)  # whoever may speak to it mounts as root
    log.info("serving CSI %s on %s as node %s (%d volumes of the state directory %s)", DRIVER_NAME, endpoint,
             node_id, len(registry.records), registry.state_dir)
    stopping = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stopping.set())
    stopping.wait()
    server.stop(_STOP_GRACE).wait()
    log.info("stopped; the volumes' daemons go on serving")
    return 0
