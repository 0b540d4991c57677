"""A second uid through a bind mount in a private mount namespace, as a container would see the tree."""
import os
import stat
import subprocess

import pytest

from conftest import write_config

pytestmark = pytest.mark.mount

NOBODY = 65534


def in_container(mountpoint, script: str, uid: int | None = NOBODY) -> subprocess.CompletedProcess:
    """Runs SCRIPT with the tree bind-mounted at /mnt/data in a new mount namespace whose /mnt is
    a fresh tmpfs, as UID (None: as root)."""
    setup = f"mount -t tmpfs none /mnt && mkdir /mnt/data && mount --bind {mountpoint} /mnt/data"
    if uid is not None:
        script = f"setpriv --reuid {uid} --regid {uid} --clear-groups sh -c '{script}'"
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", f"{setup} && {script}"],
                          capture_output=True, text=True, timeout=30)


@pytest.fixture
def tree(workspace):
    links = workspace / "links"
    for name in ("data", "scratch"):
        (links / name).mkdir(mode=0o755)
    (links / "data" / "public.txt").write_text("for everyone\n")
    (links / "data" / "private.txt").write_text("root only\n")
    (links / "data" / "private.txt").chmod(0o600)
    (links / "scratch").chmod(0o777)

    def config(allow_other: bool):
        return write_config(workspace, f"""
            link_mounts: ["{links}"]
            allow_other: {str(allow_other).lower()}
            volumes {{
              data {{ source: "file://{links}/data" }}
              scratch {{ source: "file://{links}/scratch", mode: rw }}
            }}
        """)
    return workspace, config


def test_second_uid_reads_through_a_bind_mount_and_permissions_hold(tree, mount):
    workspace, config = tree
    mount(config(allow_other=True), workspace / "mnt")
    result = in_container(workspace / "mnt", "id -u; ls /mnt/data; cat /mnt/data/data/public.txt; cat /mnt/data/data/private.txt")
    assert result.stdout == f"{NOBODY}\ndata\nscratch\nfor everyone\n"
    assert "cat: /mnt/data/data/private.txt: Permission denied" in result.stderr
    assert result.returncode != 0


def test_without_allow_other_no_other_uid_gets_in(tree, mount):
    workspace, config = tree
    mount(config(allow_other=False), workspace / "mnt")
    result = in_container(workspace / "mnt", "cat /mnt/data/data/public.txt")
    assert result.stdout == "" and "Permission denied" in result.stderr


def test_files_are_created_for_the_caller_with_its_umask(tree, mount):
    workspace, config = tree
    mount(config(allow_other=True), workspace / "mnt")
    result = in_container(workspace / "mnt", "umask 027 && echo mine > /mnt/data/scratch/mine && mkdir /mnt/data/scratch/mydir",
                           uid=4321)
    assert result.returncode == 0, result.stderr
    for name, mode in (("mine", 0o640), ("mydir", 0o750)):
        st = os.stat(workspace / "links" / "scratch" / name)
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (4321, 4321, mode), name


def test_a_symlink_resolves_in_the_readers_view_not_the_daemons(tree, mount):
    workspace, config = tree
    (workspace / "links" / "scratch" / "view").symlink_to("/mnt/marker")
    mount(config(allow_other=True), workspace / "mnt")
    # /mnt is a fresh tmpfs inside the reader's namespace; the daemon's /mnt has no marker.
    result = in_container(workspace / "mnt", "echo reader side > /mnt/marker && cat /mnt/data/scratch/view", uid=None)
    assert result.stdout == "reader side\n", result.stderr
    assert not os.path.exists("/mnt/marker")
