"""`fsmount csi`, driven as kubelet drives it: gRPC on its Unix socket, S3 volumes on moto published into target
directories and read there, one daemon per volume, the spec's error codes, a restarted plugin, a daemon killed under
its targets; and the Kubernetes manifests, read as the cluster and the CSI sidecars would."""
import errno
import filecmp
import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest
import yaml

from buckets import new_bucket
from conftest import FSMOUNT, MOUNT_TIMEOUT, check_log_files, force_unmount, require_kind, wait_for
from fsmount.csi import csi_identity_pb2 as csi_identity, csi_identity_pb2_grpc
from fsmount.csi import csi_node_pb2 as csi_node, csi_node_pb2_grpc
from fsmount.csi.service import DRIVER_NAME
from fsmount.csi.volume_config import check, read_node_config, volume_config, write_private

ROOT = Path(__file__).resolve().parents[1]
SECRET = "Secret-Only-The-Node-May-See-7f3a9c"  # moto takes any key; this one must show up nowhere
DATA = os.urandom(3 * 2**20 + 12345)
OBJECTS = {"data/a.bin": DATA, "hello.txt": b"hello\n"}
MODE = csi_node.VolumeCapability.AccessMode
NODE_BOUND, MAX_VOLUMES = 64 * 2**20, 4


class Plugin:
    """An `fsmount csi` process on a socket in DIRECTORY, its state in DIRECTORY/state, and stubs to speak to it."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.state = directory / "state"
        self.socket = directory / "csi.sock"
        self.log_path = directory / "plugin.log"
        self.node_config = directory / "node.conf"
        self.node_config.write_text(f'cache {{ dir: "{directory}/cache", max_size: {NODE_BOUND} }}\n'
                                    f'link_mounts: ["{directory}/links"]\n')
        self.start()

    def start(self):
        require_kind("mount", doing="runs the CSI plugin, which mounts")
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [FSMOUNT, "csi", "--endpoint", f"unix://{self.socket}", "--node-id", "node-7",
                 "--config", str(self.node_config), "--state-dir", str(self.state), "--max-volumes", str(MAX_VOLUMES)],
                stdout=log, stderr=subprocess.STDOUT)
        self.channel = grpc.insecure_channel(f"unix://{self.socket}")
        try:
            grpc.channel_ready_future(self.channel).result(timeout=MOUNT_TIMEOUT)
        except grpc.FutureTimeoutError:
            raise AssertionError(f"the plugin did not serve:\n{self.log()}") from None
        self.identity = csi_identity_pb2_grpc.IdentityStub(self.channel)
        self.node = csi_node_pb2_grpc.NodeStub(self.channel)

    def stop(self):
        self.channel.close()
        self.process.terminate()
        assert self.process.wait(timeout=30) == 0, self.log()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def daemons(self) -> list[int]:
        """The pids of the fsmount daemons serving this plugin's volumes."""
        found = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            try:
                arguments = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"mount" in arguments and any(str(self.state).encode() in argument for argument in arguments):
                found.append(int(pid))
        return found

    def publish(self, target: Path, bucket, readonly=False, access=MODE.MULTI_NODE_MULTI_WRITER, volume_id="pv-data",
                **attributes):
        """Publishes BUCKET, with the ATTRIBUTES given beside its source and endpoint, on TARGET."""
        context = {"source": f"s3://{bucket.name}/", "endpoint": bucket.server.url, **attributes}
        secrets = {"key": "test", "secret": SECRET}
        self.node.NodePublishVolume(publish_request(target, context, secrets, readonly, access, volume_id=volume_id))

    def unpublish(self, target: Path, volume_id: str = "pv-data"):
        self.node.NodeUnpublishVolume(csi_node.NodeUnpublishVolumeRequest(volume_id=volume_id, target_path=str(target)))


def publish_request(target: Path, context: dict, secrets: dict, readonly=False, mode=MODE.MULTI_NODE_MULTI_WRITER,
                    flags=(), volume_id="pv-data") -> csi_node.NodePublishVolumeRequest:
    capability = csi_node.VolumeCapability(mount=csi_node.VolumeCapability.MountVolume(mount_flags=list(flags)),
                                      access_mode=MODE(mode=mode))
    return csi_node.NodePublishVolumeRequest(volume_id=volume_id, target_path=str(target), volume_capability=capability,
                                        readonly=readonly, secrets=secrets, volume_context=context)


@pytest.fixture
def plugin(tmp_path):
    tmp_path.chmod(0o755)
    (tmp_path / "links").mkdir()
    plugin = Plugin(tmp_path)
    yield plugin
    if plugin.process.poll() is None:
        plugin.stop()
    for mountpoint in sorted(tmp_path.glob("pods/*/volume")) + sorted(tmp_path.glob("state/volumes/*/mnt")):
        force_unmount(str(mountpoint))
    for pid in plugin.daemons():
        os.kill(pid, signal.SIGKILL)
    assert SECRET not in plugin.log()
    check_log_files(plugin.log_path, *sorted(plugin.state.glob("logs/*.log")))


@pytest.fixture
def bucket(request):
    return new_bucket(request, "s3", OBJECTS)


def target(plugin: Plugin, pod: str) -> Path:
    """A pod's target path, as kubelet makes it: its parent exists, the target itself is the plugin's to create."""
    path = plugin.directory / "pods" / pod / "volume"
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def code_of(call) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as failed:
        call()
    return failed.value.code(), failed.value.details()


def daemon_logs(plugin: Plugin) -> str:
    return "".join(log.read_text(errors="replace") for log in (plugin.state / "logs").glob("*.log"))


@pytest.mark.mount
def test_identity_and_node_answers(plugin):
    info = plugin.identity.GetPluginInfo(csi_identity.GetPluginInfoRequest())
    assert info.name == DRIVER_NAME and info.vendor_version
    assert plugin.identity.Probe(csi_identity.ProbeRequest()).ready.value is True
    assert not plugin.identity.GetPluginCapabilities(csi_identity.GetPluginCapabilitiesRequest()).capabilities
    node = plugin.node.NodeGetInfo(csi_node.NodeGetInfoRequest())
    assert (node.node_id, node.max_volumes_per_node) == ("node-7", MAX_VOLUMES)
    kinds = {capability.rpc.type for capability in
             plugin.node.NodeGetCapabilities(csi_node.NodeGetCapabilitiesRequest()).capabilities}
    assert csi_node.NodeServiceCapability.RPC.GET_VOLUME_STATS in kinds
    assert csi_node.NodeServiceCapability.RPC.STAGE_UNSTAGE_VOLUME not in kinds


@pytest.mark.mount
def test_two_targets_share_one_daemon_until_the_last_unpublish(plugin, bucket):
    first, second = target(plugin, "pod-a"), target(plugin, "pod-b")
    plugin.publish(first, bucket, **{"csi.storage.k8s.io/pod.name": "a"})  # what kubelet adds is not the volume's
    plugin.publish(second, bucket, **{"csi.storage.k8s.io/pod.name": "b"})
    plugin.publish(second, bucket, **{"csi.storage.k8s.io/pod.name": "b"})  # kubelet repeats itself: nothing more
    assert (first / "data" / "a.bin").read_bytes() == DATA
    assert (second / "data" / "a.bin").read_bytes() == DATA
    assert (second / "hello.txt").read_text() == "hello\n"
    assert len(plugin.daemons()) == 1

    stats = plugin.node.NodeGetVolumeStats(csi_node.NodeGetVolumeStatsRequest(volume_id="pv-data", volume_path=str(first)))
    usage, = stats.usage
    assert usage.unit == csi_node.VolumeUsage.BYTES and not stats.volume_condition.abnormal
    assert usage.used >= len(DATA)  # the blocks just read are in the volume's cache
    assert usage.total >= NODE_BOUND // MAX_VOLUMES and usage.available == usage.total - usage.used

    plugin.unpublish(first)
    plugin.unpublish(first)  # not published any more: still OK
    assert not first.exists()
    assert (second / "data" / "a.bin").read_bytes() == DATA
    assert len(plugin.daemons()) == 1

    plugin.unpublish(second)
    assert not second.exists() and plugin.daemons() == []
    assert list((plugin.state / "volumes").iterdir()) == []  # the config with the secret went with its daemon
    assert SECRET not in plugin.log() + daemon_logs(plugin)


@pytest.mark.mount
def test_concurrent_publishes_of_one_volume_start_one_daemon(plugin, bucket):
    pods = [target(plugin, f"pod-{index}") for index in range(4)]
    with ThreadPoolExecutor(len(pods)) as pool:
        list(pool.map(lambda pod: plugin.publish(pod, bucket), pods))
    assert len(plugin.daemons()) == 1
    assert all((pod / "hello.txt").read_text() == "hello\n" for pod in pods)
    with ThreadPoolExecutor(len(pods)) as pool:
        list(pool.map(plugin.unpublish, pods))
    assert plugin.daemons() == [] and not any(pod.exists() for pod in pods)


@pytest.mark.mount
def test_a_host_directory_inside_the_node_link_mounts(plugin):
    shared = plugin.directory / "links" / "models"
    shared.mkdir()
    (shared / "weights.bin").write_bytes(DATA)
    pod = target(plugin, "pod-h")
    plugin.node.NodePublishVolume(publish_request(pod, {"source": f"file://{shared}"}, {}, volume_id="pv-host"))
    assert (pod / "weights.bin").read_bytes() == DATA
    stats = plugin.node.NodeGetVolumeStats(csi_node.NodeGetVolumeStatsRequest(volume_id="pv-host", volume_path=str(pod)))
    assert not stats.volume_condition.abnormal and stats.usage[0].used == 0  # linked: nothing cached
    plugin.node.NodeUnpublishVolume(csi_node.NodeUnpublishVolumeRequest(volume_id="pv-host", target_path=str(pod)))
    assert plugin.daemons() == [] and (shared / "weights.bin").exists()


@pytest.mark.mount
def test_last_unpublish_waits_for_uploads(plugin, bucket):
    pod = target(plugin, "pod-w")
    plugin.publish(pod, bucket, mode="rw")
    (pod / "results").mkdir()
    (pod / "results" / "out.txt").write_text("written in a pod\n")
    plugin.unpublish(pod)  # write_back (2 s) has not come yet: the daemon uploads as it ends
    assert bucket.get("results/out.txt") == b"written in a pod\n"
    assert plugin.daemons() == []


@pytest.mark.mount
def test_read_only_request_and_access_mode_force_ro(plugin, bucket):
    by_flag, by_mode = target(plugin, "pod-r"), target(plugin, "pod-s")
    plugin.publish(by_flag, bucket, readonly=True, mode="rw")
    plugin.publish(by_mode, bucket, access=MODE.MULTI_NODE_READER_ONLY, volume_id="pv-reader", mode="rw")
    for path in (by_flag, by_mode):
        with pytest.raises(OSError) as refused:
            (path / "new.txt").write_text("no")
        assert refused.value.errno == errno.EROFS


@pytest.mark.mount
@pytest.mark.expect_log(
    r"WARNING fsmount\.csi: NodePublishVolume: INVALID_ARGUMENT: ",
    r"WARNING fsmount\.csi: NodePublishVolume: FAILED_PRECONDITION: (an fsmount volume is a file system: block access is not supported|volume pv-data is published for a single writer already)$",
    r"WARNING fsmount\.csi: NodePublishVolume: INTERNAL: the daemon of volume pv-data failed: ",
    r"WARNING fsmount\.csi: NodePublishVolume: RESOURCE_EXHAUSTED: the volume.s cache share, 1GiB, is more than the 64MiB left of the node.s 64MiB$",
    r"WARNING fsmount\.csi: NodeGetVolumeStats: NOT_FOUND: volume pv-data is not published on ",
    r"WARNING fsmount\.csi: NodePublishVolume: ALREADY_EXISTS: \S+ holds volume pv-data published with other arguments$",
    r"WARNING fsmount\.csi: NodeUnpublishVolume: INVALID_ARGUMENT: target_path is missing$",
)
def test_spec_error_codes(plugin, bucket):
    pod = target(plugin, "pod-e")
    good = {"source": f"s3://{bucket.name}/", "endpoint": bucket.server.url}
    secrets = {"key": "test", "secret": SECRET}
    publish = plugin.node.NodePublishVolume

    def publish_with(**fields):
        request = publish_request(pod, good, secrets)
        for name, value in fields.items():
            if value is None:
                request.ClearField(name)
            else:
                setattr(request, name, value)
        return code_of(lambda: publish(request))

    assert publish_with(volume_id="")[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert publish_with(target_path="")[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert publish_with(volume_capability=None)[0] == grpc.StatusCode.INVALID_ARGUMENT
    code, message = code_of(lambda: publish(publish_request(pod, {**good, "mode": "rx"}, secrets)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message == "volume attribute mode: expected ro or rw, got 'rx'"
    code, message = code_of(lambda: publish(publish_request(pod, {**good, "colour": "blue"}, secrets)))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message.startswith("volume attribute colour: unknown key")
    code, message = code_of(lambda: publish(publish_request(pod, good, {**secrets, "password": SECRET})))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "secret password: unknown key" in message
    code, message = code_of(lambda: publish(publish_request(pod, good, {**secrets, "secure": SECRET})))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and message == "secret secure: expected true or false, got '***'"
    code, message = code_of(lambda: publish(publish_request(pod, good, {**secrets, "verify": bucket.server.url})))
    assert code == grpc.StatusCode.INTERNAL and "holds no PEM certificate" in message  # the daemon's own error
    assert not list((plugin.state / "volumes").iterdir())  # nor its config, with the secret
    code, message = code_of(lambda: publish(publish_request(pod, {"source": "file:///etc"}, {})))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "outside every link mount" in message
    code, message = code_of(lambda: publish(publish_request(pod, good, secrets, flags=["sparkle"])))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "unknown mount option 'sparkle'" in message
    block = publish_request(pod, good, secrets)
    block.volume_capability.block.SetInParent()
    assert code_of(lambda: publish(block))[0] == grpc.StatusCode.FAILED_PRECONDITION
    too_large = publish_request(pod, {**good, "cache_size": "1GiB"}, secrets)
    assert code_of(lambda: publish(too_large))[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
    stats = csi_node.NodeGetVolumeStatsRequest(volume_id="pv-data", volume_path=str(pod))
    assert code_of(lambda: plugin.node.NodeGetVolumeStats(stats))[0] == grpc.StatusCode.NOT_FOUND
    assert plugin.daemons() == [] and not pod.exists()

    publish(publish_request(pod, good, secrets, flags=["uid=1234"]))
    assert pod.stat().st_uid == 1234  # a flag fsmount knows, as a mount option
    assert publish_with(readonly=True)[0] == grpc.StatusCode.ALREADY_EXISTS
    single = publish_request(target(plugin, "pod-f"), good, secrets, flags=["uid=1234"],
                             mode=MODE.SINGLE_NODE_SINGLE_WRITER)
    assert code_of(lambda: publish(single))[0] == grpc.StatusCode.FAILED_PRECONDITION
    assert plugin.node.NodeUnpublishVolume(csi_node.NodeUnpublishVolumeRequest(volume_id="pv-data", target_path=str(pod)))
    assert code_of(lambda: plugin.node.NodeUnpublishVolume(csi_node.NodeUnpublishVolumeRequest(volume_id="pv-data")))[0] \
        == grpc.StatusCode.INVALID_ARGUMENT
    assert SECRET not in plugin.log() + daemon_logs(plugin)


@pytest.mark.mount
@pytest.mark.expect_log(
    r"WARNING fsmount\.csi: NodePublishVolume: RESOURCE_EXHAUSTED: the volume.s cache share, 16MiB, is more than the 8MiB left of the node.s 64MiB$",
)
def test_each_volume_has_its_own_cache_within_the_node_bound(plugin, bucket, request):
    other = new_bucket(request, "s3", OBJECTS)
    first, second = target(plugin, "pod-1"), target(plugin, "pod-2")
    plugin.publish(first, bucket)
    plugin.node.NodePublishVolume(publish_request(second, {"source": f"s3://{other.name}/",
                                                           "endpoint": other.server.url, "cache_size": "40MiB"},
                                                  {"key": "test", "secret": SECRET}, volume_id="pv-other"))
    assert (first / "data" / "a.bin").read_bytes() == (second / "data" / "a.bin").read_bytes() == DATA
    assert len(plugin.daemons()) == 2
    caches = sorted(path.name for path in (plugin.directory / "cache").iterdir())
    assert len(caches) == 2  # a directory each: one daemon holds a cache's index
    third = publish_request(target(plugin, "pod-3"), {"source": f"s3://{other.name}/sub/",
                                                      "endpoint": other.server.url}, {}, volume_id="pv-third")
    code, message = code_of(lambda: plugin.node.NodePublishVolume(third))
    assert code == grpc.StatusCode.RESOURCE_EXHAUSTED and "8MiB left" in message  # 64 - 16 - 40


@pytest.mark.mount
@pytest.mark.expect_log(r"WARNING fsmount\.csi\.registry: volume pv-data: its daemon died; mounting it again$")
def test_restarted_plugin_finds_its_daemons_and_repairs_dead_mounts(plugin, bucket):
    first, second = target(plugin, "pod-a"), target(plugin, "pod-b")
    plugin.publish(first, bucket)
    plugin.publish(second, bucket)
    daemon, = plugin.daemons()
    plugin.stop()
    assert (first / "hello.txt").read_text() == "hello\n"  # the daemon serves on without the plugin
    plugin.start()
    assert plugin.daemons() == [daemon]
    plugin.unpublish(first)
    assert plugin.daemons() == [daemon] and (second / "hello.txt").read_text() == "hello\n"

    plugin.stop()
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: _errno_of(second) == errno.ENOTCONN, 10, "the target to go dead")
    plugin.start()  # finds the dead mounts and mounts them again
    assert (second / "data" / "a.bin").read_bytes() == DATA
    assert len(plugin.daemons()) == 1 and plugin.daemons() != [daemon]
    plugin.unpublish(second)
    assert plugin.daemons() == []


@pytest.mark.mount
@pytest.mark.expect_log(r"WARNING fsmount\.csi\.registry: volume pv-data: its daemon died; mounting it again$")
def test_daemon_killed_under_its_targets_is_repaired_by_the_next_publish(plugin, bucket):
    first, second = target(plugin, "pod-a"), target(plugin, "pod-b")
    plugin.publish(first, bucket)
    plugin.publish(second, bucket)
    daemon, = plugin.daemons()
    os.kill(daemon, signal.SIGKILL)
    wait_for(lambda: _errno_of(first) == errno.ENOTCONN, 10, "the target to go dead")
    stats = plugin.node.NodeGetVolumeStats(csi_node.NodeGetVolumeStatsRequest(volume_id="pv-data", volume_path=str(first)))
    assert stats.volume_condition.abnormal and not stats.usage
    plugin.publish(first, bucket)
    assert (first / "data" / "a.bin").read_bytes() == DATA
    assert (second / "hello.txt").read_text() == "hello\n"  # every target of the volume is bound again
    assert len(plugin.daemons()) == 1


@pytest.mark.mount
def test_the_daemon_config_is_private_and_no_command_line_holds_the_secret(plugin, bucket):
    pod = target(plugin, "pod-a")
    plugin.publish(pod, bucket)
    config, = (plugin.state / "volumes").glob("*/fsmount.conf")
    assert config.stat().st_mode & 0o777 == 0o600 and SECRET in config.read_text()
    for pid in plugin.daemons() + [plugin.process.pid]:
        assert SECRET.encode() not in Path(f"/proc/{pid}/cmdline").read_bytes()


def _errno_of(path: Path) -> int | None:
    try:
        os.statvfs(path)
    except OSError as error:
        return error.errno
    return None


@pytest.mark.unit
def test_generated_modules_are_what_the_protos_compile_to(tmp_path):
    """The committed csi_*_pb2*.py are, byte for byte, what grpcio-tools makes of the protos now, and each is short."""
    subprocess.run([str(ROOT / "scripts" / "protoc"), str(tmp_path)], check=True, timeout=60,
                   env={**os.environ, "PYTHON": sys.executable})
    generated = sorted(path.name for path in (tmp_path / "fsmount" / "csi").iterdir())
    assert generated == sorted(path.name for path in (ROOT / "fsmount" / "csi").glob("csi_*_pb2*.py"))
    assert generated == ["csi_identity_pb2.py", "csi_identity_pb2_grpc.py", "csi_node_pb2.py", "csi_node_pb2_grpc.py"]
    for name in generated:
        committed = ROOT / "fsmount" / "csi" / name
        assert filecmp.cmp(tmp_path / "fsmount" / "csi" / name, committed, shallow=False), name
        assert len(committed.read_text().splitlines()) <= 400, name


def _documents(name: str) -> list[dict]:
    with open(ROOT / "deploy" / "kubernetes" / name) as stream:
        return [document for document in yaml.safe_load_all(stream) if document]


@pytest.mark.unit
def test_manifests_give_the_sidecars_what_they_need(tmp_path):
    driver, = _documents("csidriver.yaml")
    assert driver["kind"] == "CSIDriver" and driver["metadata"]["name"] == DRIVER_NAME
    assert driver["spec"]["attachRequired"] is False and driver["spec"]["volumeLifecycleModes"] == ["Persistent"]
    daemonset, = [document for document in _documents("node.yaml") if document["kind"] == "DaemonSet"]
    pod = daemonset["spec"]["template"]["spec"]
    containers = {container["name"]: container for container in pod["containers"]}
    plugin, registrar = containers["fsmount-csi"], containers["node-driver-registrar"]
    host_paths = {volume["name"]: volume["hostPath"]["path"] for volume in pod["volumes"] if "hostPath" in volume}
    mounted = {mount["name"]: mount for mount in plugin["volumeMounts"]}
    assert plugin["securityContext"]["privileged"] is True
    assert mounted["kubelet-dir"]["mountPropagation"] == "Bidirectional"
    assert host_paths["kubelet-dir"] == "/var/lib/kubelet" and host_paths["fuse-device"] == "/dev/fuse"
    socket = plugin["args"][plugin["args"].index("--endpoint") + 1]
    assert socket == f"unix://{mounted['plugin-dir']['mountPath']}/csi.sock"
    assert host_paths["plugin-dir"] == f"/var/lib/kubelet/plugins/{DRIVER_NAME}"
    registration = [arg for arg in registrar["args"] if arg.startswith("--kubelet-registration-path=")]
    assert registration == [f"--kubelet-registration-path={host_paths['plugin-dir']}/csi.sock"]
    assert host_paths["registration-dir"] == "/var/lib/kubelet/plugins_registry"
    config_map, = _documents("node-config.yaml")
    (tmp_path / "node.conf").write_text(config_map["data"]["node.conf"].replace("/srv/shared", str(tmp_path)))
    node = read_node_config(str(tmp_path / "node.conf"), str(tmp_path / "state"))
    for example in sorted((ROOT / "deploy" / "kubernetes" / "examples").glob("*.yaml")):
        kinds = {document["kind"]: document for document in _documents(f"examples/{example.name}")}
        assert {"PersistentVolume", "PersistentVolumeClaim", "Pod"} <= set(kinds), example.name
        volume = kinds["PersistentVolume"]["spec"]
        assert volume["csi"]["driver"] == DRIVER_NAME and "source" in volume["csi"]["volumeAttributes"]
        assert kinds["PersistentVolumeClaim"]["spec"]["volumeName"] == kinds["PersistentVolume"]["metadata"]["name"]
        if not volume["csi"]["volumeAttributes"]["source"].startswith("file://"):  # the node's own paths
            secret = kinds.get("Secret", {}).get("stringData", {})
            config = volume_config(node, volume["csi"]["volumeAttributes"], secret, False, str(tmp_path / "cache"),
                                   2**30, 2**30, str(tmp_path / "log"))
            write_private(str(tmp_path / f"{example.stem}.conf"), config)
            check(str(tmp_path / f"{example.stem}.conf"), secret)  # fsmount takes the example as it is


@pytest.mark.unit
def test_the_node_config_of_the_manifests_is_one_fsmount_takes(tmp_path):
    config_map, = _documents("node-config.yaml")
    (tmp_path / "node.conf").write_text(config_map["data"]["node.conf"])
    node = read_node_config(str(tmp_path / "node.conf"), str(tmp_path / "state"))
    assert node.cache_dir == "/var/lib/fsmount-csi/cache" and node.cache_bound == 40 * 2**30
