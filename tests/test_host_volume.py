"""Linked host paths through a real mount: everyday tools behave as on a plain directory."""
import ctypes
import errno
import hashlib
import os
import stat
import subprocess

import pytest

from conftest import wait_for, write_config
from fsmount.config import ConfigError, load_config

pytestmark = pytest.mark.mount

AT_FDCWD, RENAME_NOREPLACE, RENAME_EXCHANGE = -100, 1, 2

# Each line runs on its own; its exit status is part of what is compared.
TOOL_SCRIPT = r"""
mkdir -p a/b/c
cp -r "$SRC" a/b/
cp -p "$SRC/big.bin" a/
mv a/b/src a/moved
mv a/big.bin a/moved/big-renamed.bin
ln -s moved/big-renamed.bin a/link
ln -s ../dangling a/dangling-link
rm -r a/b
mkdir -p x/y && rmdir x/y
printf 'one\n' >> a/moved/appended && printf 'two\n' >> a/moved/appended
truncate -s 100 a/moved/big-renamed.bin
truncate -s 5000000 a/moved/sparse
chmod 640 a/moved/big-renamed.bin
chmod 0700 a/moved/nested
touch -d '2020-01-02 03:04:05' a/moved/small.txt
rm a/does-not-exist
rmdir a
mkdir a/moved
mv -n a/moved/small.txt a/moved/appended
mv -T a/moved/nested a/moved
dd if=/dev/zero of=a/moved/patched bs=1k count=64 status=none && printf 'XY' | dd of=a/moved/patched bs=1 seek=1000 conv=notrunc status=none
f=$(mktemp) && tar -cf "$f" a && mkdir t && tar -xpf "$f" -C t && rm "$f"
rsync -a a/moved/ r/
rm -rf t/a/moved/nested
"""


def make_source(path):
    path.mkdir()
    (path / "small.txt").write_text("small\n")
    (path / "big.bin").write_bytes(os.urandom(3 * 2**20 + 17))
    (path / "nested" / "deeper").mkdir(parents=True)
    (path / "nested" / "deeper" / "leaf").write_bytes(b"\0leaf\xff")
    (path / "name with spaces & ünïcode").write_text("odd name\n")


def run_script(directory, source):
    statuses = []
    for line in filter(None, TOOL_SCRIPT.strip().splitlines()):
        result = subprocess.run(["bash", "-c", line], cwd=directory, env={**os.environ, "SRC": str(source)},
                                capture_output=True)
        statuses.append((line, result.returncode))
    return statuses


def snapshot(root):
    """Every entry below ROOT: type, permission bits, size, content digest or link target."""
    entries = {}
    for directory, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(directory, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                detail = os.readlink(path)
            elif stat.S_ISREG(st.st_mode):
                with open(path, "rb") as stream:
                    detail = hashlib.sha256(stream.read()).hexdigest()
            else:
                detail = None
            size = st.st_size if not stat.S_ISDIR(st.st_mode) else None
            entries[os.path.relpath(path, root)] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode), size, detail)
    return entries


def test_everyday_tools_behave_as_on_a_plain_directory(host_tree, tmp_path):
    mnt, links, _ = host_tree
    source = tmp_path / "src"
    make_source(source)
    plain = tmp_path / "plain"
    plain.mkdir()
    expected_statuses = run_script(plain, source)
    assert run_script(mnt / "scratch", source) == expected_statuses
    expected = snapshot(plain)
    assert snapshot(mnt / "scratch") == expected
    assert snapshot(links / "scratch") == expected
    assert len(expected) > 20


def test_times_set_by_tools_are_kept(host_tree):
    mnt, links, _ = host_tree
    target = mnt / "scratch" / "dated"
    target.write_text("x")
    os.utime(target, ns=(1_000_000_123, 1_577_934_245_000_000_789))
    assert os.stat(target).st_mtime_ns == 1_577_934_245_000_000_789
    assert os.stat(links / "scratch" / "dated").st_atime_ns == 1_000_000_123
    os.utime(target, ns=(5_000_000_000, os.stat(target).st_mtime_ns))
    assert os.stat(target).st_mtime_ns == 1_577_934_245_000_000_789


def test_hard_links_are_one_file_with_one_inode_number_and_a_true_link_count(host_tree):
    mnt, links, _ = host_tree
    first, second = mnt / "scratch" / "first", mnt / "scratch" / "second"
    first.write_text("shared")
    os.stat(first)  # the kernel has its attributes, with one link
    os.link(first, second)
    assert os.stat(first).st_nlink == 2 and os.stat(first).st_ino == os.stat(second).st_ino
    os.chmod(second, 0o600)
    assert stat.S_IMODE(os.stat(first).st_mode) == 0o600
    os.link(links / "scratch" / "first", links / "scratch" / "third")  # made outside the mount
    assert os.stat(mnt / "scratch" / "third").st_ino == os.stat(first).st_ino
    assert os.stat(first).st_nlink == 3
    os.unlink(first)
    os.rename(second, mnt / "scratch" / "renamed")
    assert (mnt / "scratch" / "renamed").read_text() == "shared"
    assert os.stat(mnt / "scratch" / "third").st_nlink == 2
    listed = subprocess.run(["du", "-b", "-s", "--apparent-size", str(mnt / "scratch")], check=True,
                            capture_output=True, text=True).stdout
    assert int(listed.split()[0]) < 2 * len("shared") + 4096  # du counts a file of two names once


def test_rsync_round_trip_finds_nothing_to_change(host_tree, tmp_path):
    mnt, _, _ = host_tree
    source = tmp_path / "src"
    make_source(source)
    subprocess.run(["rsync", "-a", f"{source}/", f"{mnt}/scratch/copy/"], check=True)
    check = subprocess.run(["rsync", "-a", "-c", "-n", "--itemize-changes", f"{mnt}/scratch/copy/", f"{source}/"],
                           check=True, capture_output=True, text=True)
    assert check.stdout == ""


def test_read_only_volume_refuses_every_mutation_with_erofs(host_tree):
    mnt, links, _ = host_tree
    data = mnt / "data"
    attempts = {
        "create": lambda: open(data / "new", "w"),
        "write": lambda: open(data / "hello.txt", "r+"),
        "truncate": lambda: os.truncate(data / "hello.txt", 0),
        "unlink": lambda: os.unlink(data / "hello.txt"),
        "mkdir": lambda: os.mkdir(data / "d"),
        "rmdir": lambda: os.rmdir(data / "sub" / "deeper"),
        "rename": lambda: os.rename(data / "hello.txt", data / "moved"),
        "symlink": lambda: os.symlink("x", data / "link"),
        "link": lambda: os.link(data / "hello.txt", data / "hard"),
        "chmod": lambda: os.chmod(data / "hello.txt", 0o600),
        "chown": lambda: os.chown(data / "hello.txt", 1, 1),
        "utime": lambda: os.utime(data / "hello.txt", (1, 1)),
        "setxattr": lambda: os.setxattr(data / "hello.txt", "user.k", b"v"),
        "mkfifo": lambda: os.mkfifo(data / "fifo"),
    }
    for name, attempt in attempts.items():
        with pytest.raises(OSError) as error:
            attempt()
        assert error.value.errno == errno.EROFS, name
    assert sorted(os.listdir(links / "data")) == ["hello.txt", "sub"]
    assert (links / "data" / "hello.txt").read_text() == "hello\n"


def test_rename_across_volumes_is_exdev_so_mv_copies(host_tree):
    mnt, links, _ = host_tree
    (mnt / "scratch" / "f").write_text("moving\n")
    with pytest.raises(OSError) as error:
        os.rename(mnt / "scratch" / "f", mnt / "team" / "a" / "notes" / "f")
    assert error.value.errno == errno.EXDEV
    subprocess.run(["mv", f"{mnt}/scratch/f", f"{mnt}/team/a/notes/f"], check=True)
    assert (links / "notes" / "f").read_text() == "moving\n"
    assert not (links / "scratch" / "f").exists()


def test_symlinks_are_shown_as_symlinks(host_tree):
    mnt, links, _ = host_tree
    (links / "scratch" / "to-etc").symlink_to("/etc")
    (links / "scratch" / "relative").symlink_to("../data/hello.txt")
    link = mnt / "scratch" / "to-etc"
    assert stat.S_ISLNK(os.lstat(link).st_mode)
    assert os.readlink(link) == "/etc"
    assert os.readlink(mnt / "scratch" / "relative") == "../data/hello.txt"
    assert (mnt / "scratch" / "relative").read_text() == "hello\n"


def test_extended_attributes(host_tree):
    mnt, links, _ = host_tree
    path = mnt / "scratch" / "tagged"
    path.write_text("x")
    os.setxattr(path, "user.origin", b"s3://bucket/key")
    assert os.getxattr(path, "user.origin") == b"s3://bucket/key"
    assert os.getxattr(links / "scratch" / "tagged", "user.origin") == b"s3://bucket/key"
    assert "user.origin" in os.listxattr(path)
    os.removexattr(path, "user.origin")
    with pytest.raises(OSError) as error:
        os.getxattr(path, "user.origin")
    assert error.value.errno == errno.ENODATA
    os.setxattr(links / "data" / "hello.txt", "user.kind", b"greeting")
    assert os.getxattr(mnt / "data" / "hello.txt", "user.kind") == b"greeting"


def test_ownership_and_mode_pass_through(host_tree):
    mnt, links, _ = host_tree
    path = mnt / "scratch" / "owned"
    path.write_text("x")
    os.chown(path, 1234, 5678)
    os.chmod(path, 0o604)
    st = os.stat(links / "scratch" / "owned")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o604)
    assert os.stat(path).st_uid == 1234


def test_unlinked_open_file_stays_usable(host_tree):
    mnt, _, _ = host_tree
    path = mnt / "scratch" / "temp"
    with open(path, "w+b") as stream:
        stream.write(b"still here")
        stream.flush()
        os.unlink(path)
        assert not path.exists()
        stream.seek(0)
        assert stream.read() == b"still here"
        os.ftruncate(stream.fileno(), 5)
        assert os.fstat(stream.fileno()).st_size == 5


def test_random_writes_appends_and_fsync(host_tree):
    mnt, links, _ = host_tree
    path = mnt / "scratch" / "random"
    fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.pwrite(fd, b"END", 1_000_000)
        os.pwrite(fd, b"START", 0)
        os.fsync(fd)
        os.fdatasync(fd)
        assert os.pread(fd, 5, 0) == b"START" and os.pread(fd, 3, 1_000_000) == b"END"
    finally:
        os.close(fd)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND)
    os.write(fd, b"+tail")
    os.close(fd)
    content = (links / "scratch" / "random").read_bytes()
    assert len(content) == 1_000_008 and content.endswith(b"END+tail") and content[5:1_000_000] == bytes(999_995)


def test_hard_links_share_content(host_tree):
    mnt, _, _ = host_tree
    (mnt / "scratch" / "first").write_text("shared")
    os.link(mnt / "scratch" / "first", mnt / "scratch" / "second")
    assert os.stat(mnt / "scratch" / "second").st_nlink == 2
    (mnt / "scratch" / "second").write_text("changed")
    assert (mnt / "scratch" / "first").read_text() == "changed"


def renameat2(old, new, flags):
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags) != 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


def test_rename_flags_noreplace_and_exchange(host_tree):
    mnt, links, _ = host_tree
    scratch = mnt / "scratch"
    (scratch / "a").write_text("a")
    (scratch / "b").write_text("b")
    with pytest.raises(OSError) as error:
        renameat2(scratch / "a", scratch / "b", RENAME_NOREPLACE)
    assert error.value.errno == errno.EEXIST
    assert (scratch / "b").read_text() == "b"
    renameat2(scratch / "a", scratch / "b", RENAME_EXCHANGE)
    assert ((scratch / "a").read_text(), (scratch / "b").read_text()) == ("b", "a")
    assert ((links / "scratch" / "a").read_text(), (links / "scratch" / "b").read_text()) == ("b", "a")


def test_rmdir_of_a_directory_with_entries(host_tree):
    mnt, _, _ = host_tree
    (mnt / "scratch" / "d" / "e").mkdir(parents=True)
    with pytest.raises(OSError) as error:
        os.rmdir(mnt / "scratch" / "d")
    assert error.value.errno == errno.ENOTEMPTY


def test_large_directory_lists_every_entry_once(host_tree):
    mnt, links, _ = host_tree
    big = links / "scratch" / "big"
    big.mkdir()
    names = {f"entry-{i:05d}-{'x' * (i % 40)}" for i in range(5000)}
    for name in names:
        (big / name).touch()
    listed = os.listdir(mnt / "scratch" / "big")
    assert len(listed) == len(names) and set(listed) == names
    with os.scandir(mnt / "scratch" / "big") as entries:
        inodes = {entry.inode() for entry in entries}
    assert len(inodes) == len(names)
    ls = subprocess.run(["ls", "-la", str(mnt / "scratch" / "big")], check=True, capture_output=True, text=True)
    assert len(ls.stdout.splitlines()) == len(names) + 3  # "total", ".", ".."


def test_inode_numbers_are_stable_while_known(host_tree):
    mnt, _, _ = host_tree
    path = mnt / "data" / "sub" / "deeper" / "numbers.bin"
    with open(path, "rb") as stream:
        first = os.fstat(stream.fileno()).st_ino
        assert os.stat(path).st_ino == first
        assert hashlib.sha256(stream.read()).digest() == hashlib.sha256(bytes(range(256)) * 4096).digest()
    assert {entry.inode() for entry in os.scandir(path.parent)} == {first}


def test_forgotten_files_are_dropped_by_the_daemon(host_tree):
    mnt, links, _ = host_tree
    for index in range(2000):
        (links / "scratch" / f"f{index}").touch()
    before = {entry.name: entry.inode() for entry in os.scandir(mnt / "scratch")}
    # The kernel drops unused dentries and sends FORGET; a name looked up again is a new node.
    with open("/proc/sys/vm/drop_caches", "w") as drop:
        drop.write("2")
    inodes = lambda: {entry.name: entry.inode() for entry in os.scandir(mnt / "scratch")}
    wait_for(lambda: not set(inodes().values()) & set(before.values()), 10, "the daemon to drop the forgotten nodes")
    assert set(inodes()) == set(before)


def test_changes_on_the_host_are_seen(host_tree):
    mnt, links, _ = host_tree
    assert (mnt / "scratch").exists()
    (links / "scratch" / "from-host").write_text("host side\n")
    assert (mnt / "scratch" / "from-host").read_text() == "host side\n"
    (links / "scratch" / "from-host").write_text("changed on the host\n")
    assert (mnt / "scratch" / "from-host").read_text() == "changed on the host\n"


def test_special_files(host_tree):
    mnt, links, _ = host_tree
    os.mkfifo(mnt / "scratch" / "fifo", 0o600)
    assert stat.S_ISFIFO(os.lstat(links / "scratch" / "fifo").st_mode)
    assert stat.S_ISFIFO(os.lstat(mnt / "scratch" / "fifo").st_mode)


def test_link_mounts_as_bacalhau_globs_them_and_a_volume_of_one_file(workspace, mount):
    """Bacalhau's allow-list `/etc/config:rw,/etc/*.conf:ro`: a file volume whose source matches the glob is that
    file, read-only as the glob's entry caps it; a directory matching a glob in the middle of a path is linked."""
    links = workspace / "links"
    (links / "etc" / "config").mkdir(parents=True)
    (links / "etc" / "app.conf").write_text("answer = 42\n")
    (links / "etc" / "config" / "settings").write_text("x\n")
    (links / "data" / "team" / "public").mkdir(parents=True)
    (links / "data" / "team" / "public" / "table.csv").write_text("a,b\n1,2\n")
    (links / "data" / "team" / "secret").mkdir()
    config = write_config(workspace, f"""
        link_mounts: ["{links}/etc/config:rw", "{links}/etc/*.conf:ro", "{links}/data/*/public:ro"]
        volumes {{
          "app.conf" {{ source: "file://{links}/etc/app.conf" }}
          config {{ source: "file://{links}/etc/config", mode: rw }}
          public {{ source: "file://{links}/data/team/public" }}
        }}
    """)
    mount(config, workspace / "mnt")
    mnt = workspace / "mnt"
    assert stat.S_ISREG(os.stat(mnt / "app.conf").st_mode)
    assert (mnt / "app.conf").read_text() == "answer = 42\n"
    with pytest.raises(OSError) as error:
        (mnt / "app.conf").write_text("answer = 43\n")
    assert error.value.errno == errno.EROFS
    assert sorted(os.listdir(mnt)) == ["app.conf", "config", "public"]
    (mnt / "config" / "settings").write_text("y\n")
    assert (links / "etc" / "config" / "settings").read_text() == "y\n"
    assert (mnt / "public" / "table.csv").read_text() == "a,b\n1,2\n"
    globs = f'link_mounts: ["{links}/data/*/public:ro", "{links}/etc/*.conf:ro"]\n'
    with pytest.raises(ConfigError, match="lies outside every link mount"):
        load_config(str(write_config(workspace, globs + f'volumes {{ s {{ source: "file://{links}/data/team/secret" }} }}')))
    with pytest.raises(ConfigError, match=r"rw, but link mount .*/etc/\*\.conf is read-only"):
        load_config(str(write_config(workspace, globs + f'volumes {{ a {{ source: "file://{links}/etc/app.conf", mode: rw }} }}')))
