"""The shape of one local sandbox, as data: which host folders it sees, where, and how; and the
command line that builds it with bubblewrap. Pure functions, no I/O, so the shape is
table-tested and the launcher only runs what these answer.

A sandbox gets its own user, PID, IPC, UTS and network namespaces (loopback only: the
platform's services on the host's loopback are out of reach), a read-only root built from
the host's /usr and a short list of /etc files, a private /tmp, no capabilities and
no_new_privs, and runs as an unprivileged host account mapped to uid 1000 inside. Granted
datasets are read-only at ~/datasets/<folder>, the user's persistent folder read-write at
~/persistent, and the run folder (token, sockets) at /run/vre. Nothing else of the host, of
the platform's data directory or of its environment is there.

Host folders the workload account may not traverse (the 0700 data directory) are first
bound by root below a private tmpfs in a mount namespace of the launcher's own
(`launch_script`), and bubblewrap binds them from there.

A desktop is two sandboxes side by side: the display (Xvnc alone, no data, its VNC socket in a
folder of its own) and the session (the researcher's programs, the data). They share only
the X11 socket folder, read-only on the session's side. Nothing in the session can reach the
VNC socket, replace the VNC server or change what it sends (no copy-out through the
clipboard unless the platform allows it)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass, field

HOME = "/home/researcher"
RUN = "/run/vre"
STAGE = "/mnt/vre-stage"
USER_NAME = "researcher"
INNER_UID = 1000
README_FD = 3
X11_FOLDER = "/tmp/.X11-unix"
DISPLAY = ":1"

# What of the host's /etc a desktop needs to draw and a program needs to start; no secrets.
# The names sandboxes go by (--hostname), and the /etc files written for each sandbox.
HOSTNAMES = ("vre-desktop", "vre-job", "vre-display")
OWN_ETC = ("passwd", "group", "hosts")
ETC_ENTRIES = ("alternatives", "fonts", "X11", "xdg", "ld.so.cache", "ld.so.conf",
               "ld.so.conf.d", "localtime", "mime.types", "nsswitch.conf", "terminfo",
               "openbox", "ssl/openssl.cnf", "matplotlibrc", "debian_version",
               "java-17-openjdk", "java-21-openjdk")

_FOLDER_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]{0,63}$")
# Names the platform sets (and every VRE_ name); a workload's own environment may not set them.
RESERVED_ENV = frozenset({"HOME", "USER", "LOGNAME", "PATH", "SHELL", "DISPLAY", "TMPDIR",
                          "LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "PYTHONPATH",
                          "PYTHONHOME", "PYTHONSTARTUP"})


@dataclass(frozen=True)
class Bind:
    """One host folder seen inside the sandbox at `target`."""

    source: str
    target: str
    writable: bool = False


@dataclass(frozen=True)
class HostUser:
    """The unprivileged host account the sandbox runs as."""

    uid: int
    gid: int


@dataclass(frozen=True)
class SandboxPlan:
    """Everything that decides what one sandbox sees and runs."""

    workload_id: str
    command: tuple[str, ...]
    run_dir: str
    etc_dir: str
    persistent: str | None = None
    datasets: tuple[tuple[str, str], ...] = ()  # (host tree, folder under ~/datasets)
    runtime: tuple[str, ...] = ()  # host folders seen read-only at the same path
    path: tuple[str, ...] = ("/usr/local/bin", "/usr/bin", "/bin")
    environment: Mapping[str, str] = field(default_factory=dict)
    platform_env: Mapping[str, str] = field(default_factory=dict)
    host_etc: tuple[str, ...] = ()  # the ETC_ENTRIES that exist on this host
    hostname: str = "vre-desktop"
    readme: str | None = None  # a host file shown read-only as ~/datasets/README
    x11: str | None = None  # the host folder of the desktop's X11 socket
    x11_writable: bool = False  # the display's side creates the socket; the session's reads
    stage_name: str = "w"  # staged binds' prefix, distinct for each sandbox of one launcher


def dataset_folder(name: str, dataset_id: str, taken: set[str]) -> str:
    """The folder a dataset shows as under ~/datasets: its name made safe, or its id when the
    name is empty or already taken by another dataset of the same workload."""
    folder = _FOLDER_UNSAFE.sub("-", name).strip(".-")[:80]
    if not folder or folder in taken:
        folder = _FOLDER_UNSAFE.sub("-", dataset_id)[:80]
    taken.add(folder)
    return folder


def check_environment(environment: Mapping[str, str]) -> dict[str, str]:
    """A workload's own variables, refused when a name is malformed or one the platform sets."""
    out = {}
    for name, value in environment.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"environment variable name {name!r} is not NAME_LIKE_THIS")
        if name in RESERVED_ENV or name.startswith("VRE_"):
            raise ValueError(f"environment variable {name} is set by the platform")
        if "\0" in value or len(value) > 4096:
            raise ValueError(f"environment variable {name} has a NUL or is over 4096 characters")
        out[name] = value
    return out


def binds_of(plan: SandboxPlan) -> list[Bind]:
    """Every host folder the sandbox sees, in mount order."""
    binds = [Bind(source, source) for source in plan.runtime]
    binds += [Bind(tree, f"{HOME}/datasets/{folder}") for tree, folder in plan.datasets]
    if plan.persistent:
        binds.append(Bind(plan.persistent, f"{HOME}/persistent", writable=True))
    binds.append(Bind(plan.run_dir, RUN, writable=True))
    if plan.x11:
        binds.append(Bind(plan.x11, X11_FOLDER, writable=plan.x11_writable))
    return binds


def staged(plan: SandboxPlan, index: int) -> str:
    """Where bind number `index` of a plan is staged by root before bubblewrap takes it."""
    return f"{STAGE}/{plan.stage_name}{index}"


def display_command(clipboard_out: bool, geometry: str = "1600x900") -> tuple[str, ...]:
    """The display sandbox's VNC server: on a Unix socket in its run folder, no TCP, one
    viewer at a time, the viewer's clipboard taken (paste in) and its own sent only when the
    platform allows copy-out; a client of the X server may change nothing but the name."""
    send = "1" if clipboard_out else "0"
    return ("Xvnc", DISPLAY, "-rfbport", "-1", "-rfbunixpath", f"{RUN}/vnc.sock",
            "-rfbunixmode", "0600", "-SecurityTypes", "None", "-nolisten", "tcp",
            "-geometry", geometry, "-depth", "24", "-AlwaysShared=0",
            "-AllowOverride=desktop", f"-SendCutText={send}", f"-SendPrimary={send}",
            "-AcceptCutText=1")


def environment_of(plan: SandboxPlan) -> dict[str, str]:
    """The whole environment inside: the platform's variables and the workload's own, nothing
    inherited from the host."""
    env = {"HOME": HOME, "USER": USER_NAME, "LOGNAME": USER_NAME, "SHELL": "/bin/bash",
           "LANG": "C.UTF-8", "PATH": ":".join(plan.path), "TMPDIR": "/tmp",
           "VRE_WORKLOAD_ID": plan.workload_id, "VRE_API_SOCKET": f"{RUN}/api.sock",
           "VRE_TOKEN_FILE": f"{RUN}/token", "PYTHONDONTWRITEBYTECODE": "1"}
    env.update(check_environment(plan.environment))
    env.update(plan.platform_env)
    return env


def bwrap_argv(plan: SandboxPlan, bwrap: str = "bwrap", direct: bool = False) -> list[str]:
    """The bubblewrap command line for the plan, reading binds from their staged places (or
    straight from the host folders when `direct`: a launcher that is not root, whose own
    account owns them)."""
    argv = [bwrap, "--unshare-all", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--uid", str(INNER_UID), "--gid", str(INNER_UID),
            "--hostname", plan.hostname,
            "--ro-bind", "/usr", "/usr"]
    for link in ("bin", "lib", "lib64", "sbin"):
        argv += ["--symlink", f"usr/{link}", f"/{link}"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/var",
             "--dir", "/var/tmp", "--tmpfs", "/home", "--dir", HOME,
             "--tmpfs", f"{HOME}/datasets", "--dir", "/run"]
    for entry in plan.host_etc:
        argv += ["--ro-bind", f"/etc/{entry}", f"/etc/{entry}"]
    etc = plan.etc_dir if direct else f"{STAGE}/etc"
    for name in OWN_ETC:
        argv += ["--ro-bind", f"{etc}/{name}", f"/etc/{name}"]
    for index, bind in enumerate(binds_of(plan)):
        source = bind.source if direct else staged(plan, index)
        argv += ["--bind" if bind.writable else "--ro-bind", source, bind.target]
    if plan.readme:
        # Copied from the descriptor the launcher opens (see `launch_lines`), before the
        # datasets folder turns read-only.
        argv += ["--file", str(README_FD), f"{HOME}/datasets/README"]
    argv += ["--remount-ro", f"{HOME}/datasets", "--chdir", HOME, "--clearenv"]
    for name, value in environment_of(plan).items():
        argv += ["--setenv", name, value]
    argv += ["--remount-ro", "/", "--", *plan.command]
    return argv


def _command(plan: SandboxPlan, argv: list[str]) -> str:
    """A sandbox's command line for the shell, with the README's descriptor open (by the
    launcher, which may read it; the sandbox's account need not)."""
    line = shlex.join(argv)
    if plan.readme:
        line += f" {README_FD}< {shlex.quote(plan.readme)}"
    return line


def launch_lines(plan: SandboxPlan, argv: list[str], display: SandboxPlan | None = None,
                 display_argv: list[str] | None = None) -> str:
    """The end of a launcher: exec the sandbox; or, for a desktop, start the display and the
    session side by side and end both as soon as either ends (a VNC server that dies ends
    the desktop, saying so)."""
    if display is None or display_argv is None:
        return "exec " + _command(plan, argv) + "\n"
    return "\n".join([
        f"{_command(display, display_argv)} & display=$!",
        f"{_command(plan, argv)} & session=$!",
        "trap 'kill -TERM $display $session 2>/dev/null' TERM INT",
        "wait -n $display $session; status=$?",
        "if ! kill -0 $display 2>/dev/null; then",
        '  echo "desktop: the VNC server ended (status $status)"; [ "$status" = 0 ] && status=1',
        "fi",
        "kill -TERM $display $session 2>/dev/null; wait",
        "exit $status"]) + "\n"


def launch_script(plan: SandboxPlan, user: HostUser, bwrap: str = "bwrap",
                  display: SandboxPlan | None = None) -> str:
    """A bash script for root, run in a mount namespace of its own: stage every bind below a
    private tmpfs (read-only ones remounted read-only), then become the workload account,
    without privileges to regain, and run bubblewrap (twice for a desktop: the display and
    the session)."""
    lines = ["set -eu", f"mkdir -p {STAGE}",
             f"mount -t tmpfs -o mode=0755,size=1m vre-stage {STAGE}",
             f"mkdir {STAGE}/etc", f"mount --bind {shlex.quote(plan.etc_dir)} {STAGE}/etc",
             f"mount -o remount,bind,ro {STAGE}/etc"]
    for each in (plan, display) if display else (plan,):
        for index, bind in enumerate(binds_of(each)):
            target = shlex.quote(staged(each, index))
            lines.append(f"mkdir {target}")
            lines.append(f"mount --rbind {shlex.quote(bind.source)} {target}")
            if not bind.writable:
                lines.append(f"mount -o remount,bind,ro {target}")
    lines.append("set +e")
    setpriv = ["setpriv", f"--reuid={user.uid}", f"--regid={user.gid}", "--clear-groups",
               "--no-new-privs", "--"]
    return "\n".join(lines) + "\n" + launch_lines(
        plan, setpriv + bwrap_argv(plan, bwrap), display,
        setpriv + bwrap_argv(display, bwrap) if display else None)


def passwd_files(user_name: str = USER_NAME) -> dict[str, str]:
    """The /etc/passwd, /etc/group and /etc/hosts seen inside: the researcher and nobody
    else; the sandbox's own names on loopback (Spark and Java look their host name up)."""
    return {"passwd": f"{user_name}:x:{INNER_UID}:{INNER_UID}:{user_name}:{HOME}:/bin/bash\n"
                      "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
            "group": f"{user_name}:x:{INNER_UID}:\nnogroup:x:65534:\n",
            "hosts": "127.0.0.1 localhost " + " ".join(HOSTNAMES) + "\n::1 localhost\n"}

