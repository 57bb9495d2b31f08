"""Programs inside a really launched sandbox try to get out: read what was not granted, write
what is read-only, reach the platform over the network, gain privileges, or outgrow their
flavor. Each probe prints what it saw; the test reads the workload's log."""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import socket
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from portal.compute import ComputeError, DatasetMount, Exited, Resources
from portal.compute.local import LocalBackend
from tests.sandbox.conftest import GRANTED, SECRET, python, spec, wait_exit

Run = Callable[..., tuple[Exited, str]]


def probe(run: Run, code: str, **kwargs: object) -> dict:
    """Run a probe that prints one JSON object as its last line; answer that object."""
    exited, log = run(python("import json, os, sys\n" + code), **kwargs)
    assert exited.status == 0, log
    return json.loads(log.strip().splitlines()[-1])


def test_granted_dataset_is_readable_and_read_only(run: Run) -> None:
    seen = probe(run, """
root = os.path.expanduser("~/datasets")
out = {"folders": sorted(os.listdir(root)),
       "text": open(root + "/Chest-CT/series/slice.dcm").read(),
       "readme": open(root + "/README").read()}
for target in (root + "/Chest-CT/series/slice.dcm", root + "/Chest-CT/new", root + "/new",
               root + "/README"):
    try:
        open(target, "a").write("x")
        out[target] = "written"
    except OSError as exc:
        out[target] = exc.errno
print(json.dumps(out))
""")
    assert seen.pop("folders") == ["Chest-CT", "README"]
    assert seen.pop("text") == "granted pixels"
    # The README names each mounted dataset exactly: folder, version and content hash.
    readme = seen.pop("readme")
    assert "Chest-CT/" in readme and "version:      1.0" in readme
    assert f"content hash: {GRANTED.content_hash}" in readme
    assert set(seen.values()) <= {30, 13}, seen  # EROFS or EACCES, never written


def test_nothing_of_the_host_or_the_platform_is_there(run: Run, sandbox_home: Path) -> None:
    # What the host holds that a sandbox must not see: the platform's data directory, the
    # administrator's home, and the host's password hashes (also through PID 1's root).
    root_ssh = Path(pwd.getpwuid(0).pw_dir) / ".ssh"
    shadow = Path("/etc") / "shadow"
    hidden = [sandbox_home, sandbox_home / "keys", root_ssh, shadow,
              Path("/proc/1/root") / shadow.relative_to("/")]
    seen = probe(run, f"""
import glob
paths = {[str(p) for p in hidden]!r}
found = {{p: os.path.exists(p) for p in paths}}
hits = []
hits += [name for name in os.listdir("/") if "foreign" in name]
system = {"usr", "proc", "sys", "dev", "bin", "lib", "lib64", "sbin"}
for top in ["/" + name for name in os.listdir("/") if name not in system]:
    for path in glob.glob(top + "/**", recursive=True):
        if "foreign" in path or "token-signing" in path:
            hits.append(path)
        if (os.path.isfile(path) and not os.path.islink(path)
                and os.path.getsize(path) < 1 << 20):
            try:
                if {SECRET!r} in open(path, errors="ignore").read():
                    hits.append(path)
            except OSError:
                pass
print(json.dumps({{"found": found, "hits": hits, "pids": sorted(
    int(p) for p in os.listdir("/proc") if p.isdigit()),
    "env": dict(os.environ)}}))
""")
    assert not any(seen["found"].values()), seen["found"]
    assert seen["hits"] == []
    assert max(seen["pids"]) < 50  # its own PID namespace: no host process in sight
    assert SECRET not in json.dumps(seen["env"])
    assert not any(name.startswith(("VRE_SECRET", "VRE_SERVICE", "VRE_DATABASE"))
                   for name in seen["env"])


def test_the_host_loopback_and_the_network_are_out_of_reach(run: Run) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]
    accepted: list[object] = []
    threading.Thread(target=lambda: accepted.append(server.accept()), daemon=True).start()
    try:
        seen = probe(run, f"""
import socket
out = {{}}
for name, address in (("platform", ("127.0.0.1", {port})), ("postgres", ("127.0.0.1", 5432)),
                      ("outside", ("1.1.1.1", 443))):
    try:
        socket.create_connection(address, timeout=3).close()
        out[name] = "connected"
    except OSError as exc:
        out[name] = type(exc).__name__
try:
    socket.getaddrinfo("pypi.org", 443)
    out["dns"] = "resolved"
except OSError as exc:
    out["dns"] = type(exc).__name__
out["interfaces"] = sorted(name for _, name in socket.if_nameindex())
print(json.dumps(out))
""")
    finally:
        server.close()
    assert accepted == []
    assert "connected" not in seen.values() and seen["dns"] != "resolved", seen
    assert seen["interfaces"] == ["lo"]


def test_no_privileges_to_gain(run: Run) -> None:
    seen = probe(run, """
status = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
out = {"uid": os.getuid(), "euid": os.geteuid(),
       "caps": [status[k].strip() for k in ("CapEff", "CapPrm", "CapBnd", "CapAmb")],
       "no_new_privs": status["NoNewPrivs"].strip()}
for target in ("/usr/bin/probe", "/etc/probe", "/probe"):
    try:
        open(target, "w")
        out[target] = "written"
    except OSError as exc:
        out[target] = exc.errno
import subprocess
out["su"] = subprocess.run(["su", "-c", "id -u"], input="", capture_output=True,
                           text=True).stdout.strip()
try:
    os.setuid(0)
    out["setuid"] = "root"
except OSError as exc:
    out["setuid"] = exc.errno
print(json.dumps(out))
""")
    assert seen["uid"] == seen["euid"] == 1000
    assert set(seen["caps"]) == {"0000000000000000"}
    assert seen["no_new_privs"] == "1"
    assert seen["su"] != "0" and seen["setuid"] != "root"
    assert all(seen[t] in (13, 30) for t in ("/usr/bin/probe", "/etc/probe", "/probe")), seen


def test_the_host_account_is_unprivileged(compute: LocalBackend) -> None:
    assert compute.user.uid != 0 and compute.user.gid != 0


def test_persistent_folder_is_the_owners_and_lasts(run: Run, sandbox_home: Path) -> None:
    write = "open(os.path.expanduser('~/persistent/model.txt'), 'w').write('weights')\n"
    probe(run, write + "print(json.dumps({}))")
    seen = probe(run, "print(json.dumps({'text': open(os.path.expanduser("
                      "'~/persistent/model.txt')).read()}))")
    assert seen["text"] == "weights"
    other = probe(run, "print(json.dumps({'files': os.listdir(os.path.expanduser("
                       "'~/persistent'))}))", owner="bob")
    assert other["files"] == ["jobs"]  # its own job outputs folder; nothing of alice's
    assert (sandbox_home / "workspaces" / "alice" / "model.txt").read_text() == "weights"


def test_a_mount_outside_the_repository_is_refused(compute: LocalBackend) -> None:
    for tree in ("../keys", "datasets/../../keys", "/etc", "datasets/missing", "keys"):
        bad = DatasetMount(dataset_id="x", name="x", version="1.0", content_hash="0" * 64,
                           tree=tree)
        with pytest.raises(ComputeError) as refused:
            compute.start(spec(["true"], mounts=(bad,)))
        assert refused.value.code == "mount_refused"
    assert list(compute.root.iterdir()) == []  # nothing left behind


def test_the_platform_environment_cannot_be_overridden(compute: LocalBackend) -> None:
    for name in ("LD_PRELOAD", "VRE_CLIPBOARD_OUT", "PATH", "bad name"):
        with pytest.raises(ComputeError) as refused:
            compute.start(spec(["true"], environment={name: "x"}))
        assert refused.value.code == "bad_environment"


def test_a_flavor_the_host_can_never_satisfy_is_refused(compute: LocalBackend) -> None:
    total = compute.capacity()
    for resources in (Resources(cpus=1, memory_mib=256, gpus=total.total_gpus + 1),
                      Resources(cpus=total.total_cpus * 4, memory_mib=256),
                      Resources(cpus=1, memory_mib=total.total_memory_mib * 4)):
        with pytest.raises(ComputeError) as refused:
            compute.start(spec(["true"], resources=resources))
        assert refused.value.code == "exceeds_host" and refused.value.reason


needs_cgroups = pytest.mark.skipif(
    not os.access("/sys/fs/cgroup/memory", os.W_OK),
    reason="limits need writable cgroup v1 hierarchies (the backend reports them unenforced)")


@needs_cgroups
def test_memory_beyond_the_flavor_ends_the_workload(run: Run) -> None:
    exited, log = run(python("b = []\nwhile True:\n    b.append(bytearray(16 << 20))"),
                      resources=Resources(cpus=1, memory_mib=128, max_runtime_seconds=60))
    assert exited.status != 0 and exited.reason == "out_of_memory", (exited, log)


@needs_cgroups
def test_a_fork_bomb_stays_inside_its_process_limit(run: Run) -> None:
    seen = probe(run, """
import subprocess
children, refused = [], 0
for _ in range(400):
    try:
        children.append(subprocess.Popen(["sleep", "30"]))
    except OSError:
        refused += 1
for child in children:
    child.kill()
print(json.dumps({"started": len(children), "refused": refused}))
""", resources=Resources(cpus=1, memory_mib=512, pids=64, max_runtime_seconds=60))
    assert seen["started"] < 64 and seen["refused"] > 0


@needs_cgroups
def test_usage_is_measured(run: Run) -> None:
    exited, _ = run(python("x = sum(i * i for i in range(3_000_000))\n"
                           "b = bytearray(64 << 20)"))
    assert exited.status == 0 and exited.cpu_seconds > 0.05
    assert exited.memory_peak_bytes > 64 << 20


def test_the_time_limit_ends_the_workload(run: Run) -> None:
    exited, _ = run(["sleep", "60"], resources=Resources(cpus=1, memory_mib=256,
                                                         max_runtime_seconds=1))
    assert exited.reason == "time_limit"


def test_stop_ends_every_process_and_is_recorded(compute: LocalBackend) -> None:
    workload = spec(["sh", "-c", "sleep 300 & sleep 300 & wait"])
    compute.start(workload)
    assert compute.poll(workload.workload_id) is None
    compute.stop(workload.workload_id, now=False)
    exited = wait_exit(compute, workload.workload_id)
    assert exited.reason == "stopped"
    assert compute.capacity().free_cpus == compute.capacity().total_cpus


def poll_until_exited(compute: LocalBackend, workload_id: str, seen: list[object]) -> None:
    """Poll until the workload has exited; add what was read, or the error a poll raised."""
    while True:
        try:
            exited = compute.poll(workload_id)
        except Exception as error:
            seen.append(error)
            return
        if exited is not None:
            seen.append(exited)
            return


def test_an_exit_is_read_whole_by_every_poll_at_once(compute: LocalBackend) -> None:
    """The agent's watcher and a stop request poll the same ending workload together: each
    must read the one exit recorded, never a record half written nor a keeper "vanished"
    between writing its exit and being reaped."""
    for _ in range(20):
        workload = spec(["sh", "-c", "exit 7"])
        compute.start(workload)
        seen: list[object] = []
        threads = [threading.Thread(target=poll_until_exited,
                                    args=(compute, workload.workload_id, seen))
                   for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(seen) == 8 and all(isinstance(e, Exited) for e in seen), seen
        assert {(e.status, e.reason) for e in seen} == {(7, "")}


def test_a_restarted_backend_adopts_a_running_workload(compute: LocalBackend,
                                                       sandbox_config) -> None:
    workload = spec(["sleep", "300"])
    state = compute.start(workload)
    again = LocalBackend(sandbox_config)
    assert again.adopt(workload.workload_id, state)
    assert again.poll(workload.workload_id) is None
    again.stop(workload.workload_id, now=True)
    assert compute.poll(workload.workload_id).reason == "stopped"
    forged = dict(state, starttime=state["starttime"] + 1)
    assert not again.adopt("w-gone", state) and again.adopt(workload.workload_id, forged)


def test_the_sandbox_python_has_tools_but_no_server(run: Run) -> None:
    seen = probe(run, """
import importlib.util
names = ("numpy", "pydicom", "batch_tools", "dataset_service", "tracer")
print(json.dumps({n: importlib.util.find_spec(n) is not None for n in names}))
""")
    assert seen["batch_tools"] and seen["pydicom"]
    assert not seen["dataset_service"] and not seen["tracer"]


def test_a_tree_the_repository_stored_is_readable_inside_and_nowhere_else(
        sandbox_config, sandbox_home: Path, tmp_path: Path) -> None:
    from dataset_service.repository import Repository, TreeFile

    repository = Repository(sandbox_home / "repository")
    source = tmp_path / "slice.dcm"
    source.write_bytes(b"stored pixels")
    digest = hashlib.sha256(b"stored pixels").hexdigest()
    repository.store(source, digest)
    repository.build_tree("stored", [TreeFile("s/1/1/0001.dcm", digest)], {"files": 1})
    backend = LocalBackend(sandbox_config)  # gives the repository to the workloads' group
    later = tmp_path / "later.dcm"
    later.write_bytes(b"later pixels")
    later_digest = hashlib.sha256(b"later pixels").hexdigest()
    repository.store(later, later_digest)
    assert repository.blob_path(later_digest).stat().st_gid == backend.user.gid
    assert repository.blob_path(digest).stat().st_mode & 0o007 == 0  # no other account
    stored = DatasetMount(dataset_id="stored", name="Stored", version="1.0",
                          content_hash="0" * 64, tree="datasets/stored")
    workload = spec(python("import os\nprint(open(os.path.expanduser("
                           "'~/datasets/Stored/s/1/1/0001.dcm')).read())"), mounts=(stored,))
    backend.start(workload)
    exited = wait_exit(backend, workload.workload_id)
    log, _ = backend.logs(workload.workload_id)
    assert exited.status == 0 and b"stored pixels" in log, log


def test_a_sandbox_starts_under_the_platforms_private_umask(run: Run) -> None:
    # `vre up` runs every process with umask 0077 so that what it writes is the platform's
    # alone; what the sandbox account must read (its /etc, its run folder) is still readable.
    before = os.umask(0o077)
    try:
        exited, output = run(["sh", "-c", "id -un && test -r /run/vre/token && echo token"])
    finally:
        os.umask(before)
    assert exited.status == 0, output
    assert output.split() == ["researcher", "token"], output
