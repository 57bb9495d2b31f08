"""`vre-job`: the batch-job command researchers use inside their desktop: submit jobs, follow
them in the queue and in their logs, cancel them and read what they left behind. It reads the
same flavor and application catalogues, and the same quota, as the portal's pages."""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from batch_tools import _common
from batch_tools._common import as_json, fields, table

# The client, the configuration (pydantic) and HTTP are imported once the arguments are
# parsed: `vre-job --help` and a mistyped command answer at once, without loading them.
if TYPE_CHECKING:
    from portal.client import PortalClient

EXIT_CODES = _common.EXIT_CODES + """\
  with submit --wait, how the job ended:
  0-255  the job's own exit status
  124    stopped at its time limit
  137    killed for using more memory than its flavor has
  130    cancelled
  1      failed without an exit status
"""

FINAL_STATES = frozenset({"succeeded", "failed", "cancelled"})
# How often `logs --follow` asks for more, and how `submit --wait` backs off while a job runs.
POLL_SECONDS = 0.5
WAIT_MAX_SECONDS = 5.0
# `submit --wait` rides out a portal that is briefly away (a restart) for this many polls.
WAIT_UNAVAILABLE_POLLS = 10


def job_exit_code(job: dict[str, Any]) -> int:
    """What `submit --wait` exits with for a job in a final state: its own status when it ran
    and exited, the shell's conventions when the platform stopped it."""
    reason = job.get("reason") or ""
    if reason == "time_limit":
        return 124
    if reason == "out_of_memory":
        return 137
    if job["state"] == "cancelled":
        return 130
    status = job.get("exit_status")
    if status is None or (job["state"] == "failed" and status == 0):
        return 1  # a failure never reads as success
    return int(status) & 0xFF


def _duration(seconds: float | None) -> str | None:
    if seconds is None:
        return None
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _state(job: dict[str, Any]) -> str:
    return job["state"] + (f" ({job['reason']})" if job.get("reason") else "")


def _dataset(dataset: dict[str, Any]) -> str:
    version = dataset.get("version")
    return " ".join(filter(None, (dataset.get("name") or dataset["id"],
                                  f"version {version}" if version else None,
                                  dataset.get("content_hash"))))


def _queue_lines(queue: dict[str, Any] | None) -> list[tuple[str, Any]]:
    if not queue:
        return []
    return [("queue position", queue.get("position")),
            ("waiting for", " - ".join(filter(None, (queue.get("reason"),
                                                     queue.get("detail"))))),
            ("estimated start", queue.get("estimated_start"))]


def _job_lines(job: dict[str, Any]) -> list[tuple[str, Any]]:
    queue = job.get("queue") or {}
    image = job.get("image") or ""
    if job.get("image_digest"):
        image += f"@{job['image_digest']}"
    lines: list[tuple[str, Any]] = [
        ("job", job["id"]), ("name", job.get("name")), ("state", _state(job)),
        ("flavor", job.get("flavor")), ("application", job.get("application")),
        ("image", image), ("command", shlex.join(job.get("command") or [])),
        ("environment", " ".join(f"{k}={v}" for k, v in (job.get("environment") or {}).items())),
        ("time limit", f"{job['time_limit_minutes']} min"
         if job.get("time_limit_minutes") is not None else None),
        ("after", " ".join(job.get("after") or [])), ("desktop", job.get("desktop_id")),
    ]
    lines += [("dataset", _dataset(d)) for d in job.get("datasets") or []]
    lines += _queue_lines(queue)
    lines += [
        ("submitted", job.get("submitted_at")), ("started", job.get("started_at")),
        ("ended", job.get("ended_at")), ("exit status", job.get("exit_status")),
        ("wall time", _duration(job.get("wall_seconds"))),
        ("cpu time", _duration(job.get("cpu_seconds"))),
        ("memory peak", f"{job['memory_peak_bytes'] / 2**20:.1f} MiB"
         if job.get("memory_peak_bytes") is not None else None),
        ("gpus", ",".join(job.get("gpus") or [])),
        ("gpu hours", _number(job.get("gpu_hours"))),
        ("outputs", job.get("outputs")), ("output hash", job.get("output_hash")),
    ]
    return lines


def _env_pair(text: str) -> tuple[str, str]:
    key, equals, value = text.partition("=")
    if not equals or not key:
        raise argparse.ArgumentTypeError(f"{text!r} is not KEY=VALUE")
    return key, value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number above 0")
    return value


def _wait(client: PortalClient, job: dict[str, Any]) -> dict[str, Any]:
    """Poll the job until it is in a final state, backing off up to WAIT_MAX_SECONDS."""
    from portal.client import PortalUnavailable

    delay, unavailable = POLL_SECONDS, 0
    while job["state"] not in FINAL_STATES:
        time.sleep(delay)
        delay = min(delay * 2, WAIT_MAX_SECONDS)
        try:
            job = client.job(job["id"])
            unavailable = 0
        except PortalUnavailable:
            unavailable += 1
            if unavailable >= WAIT_UNAVAILABLE_POLLS:
                raise
    return job


def cmd_submit(client: PortalClient, args: argparse.Namespace) -> int:
    answer = client.submit_job(
        args.argv, flavor=args.flavor, application=args.app, image=args.image, name=args.name,
        environment=dict(args.env) if args.env else None, time_limit_minutes=args.time,
        after=args.after, idempotency_key=args.idempotency_key, datasets=args.dataset,
        projects=args.project, dry_run=args.dry_run)
    if args.dry_run:
        if args.json:
            print(as_json(answer))
            return 0
        job = answer["job"]
        queue = job.get("queue")
        decision = "accepted, would wait in the queue" if queue and queue.get("position") \
            else "accepted, would start at once"
        print(fields([("dry run", f"{decision}; nothing was submitted"),
                       ("flavor", job.get("flavor")),
                       ("image", job.get("image") or job.get("application")),
                       ("command", shlex.join(job.get("command") or [])),
                       ("time limit", f"{job['time_limit_minutes']} min"
                        if job.get("time_limit_minutes") is not None else None),
                       *[("dataset", _dataset(d)) for d in job.get("datasets") or []],
                       *_queue_lines(queue)]))
        return 0
    if not args.json:
        print(answer["id"], flush=True)
    if not args.wait:
        if args.json:
            print(as_json(answer))
        return 0
    job = _wait(client, answer)
    if args.json:
        print(as_json(job))
    return job_exit_code(job)


def cmd_queue(client: PortalClient, args: argparse.Namespace) -> int:
    jobs = client.jobs(state="active")
    if args.json:
        print(as_json(jobs))
        return 0
    rows = []
    for job in jobs:
        queue = job.get("queue") or {}
        start = job.get("started_at") if job["state"] != "queued" else queue.get(
            "estimated_start")
        rows.append((job["id"], job.get("name"), job["state"], job.get("flavor"),
                     queue.get("position", "-"), queue.get("reason") or job.get("reason"),
                     start or "-"))
    print(table(rows, ("JOB", "NAME", "STATE", "FLAVOR", "POSITION", "REASON",
                        "ESTIMATED START")))
    return 0


def cmd_show(client: PortalClient, args: argparse.Namespace) -> int:
    job = client.job(args.job)
    print(as_json(job) if args.json else fields(_job_lines(job)))
    return 0


def cmd_logs(client: PortalClient, args: argparse.Namespace) -> int:
    out, offset = sys.stdout.buffer, 0
    while True:
        data, offset, state = client.job_logs(args.job, offset)
        if data:
            out.write(data)
            out.flush()
            continue  # more may be there already
        if not args.follow or state in FINAL_STATES:
            return 0
        time.sleep(POLL_SECONDS)


def cmd_cancel(client: PortalClient, args: argparse.Namespace) -> int:
    job = client.cancel_job(args.job)
    if args.json:
        print(as_json(job))
    elif job["state"] == "cancelled":
        print(f"cancelled {job['id']}")
    else:
        print(f"{job['id']} {_state(job)}")
    return 0


def cmd_history(client: PortalClient, args: argparse.Namespace) -> int:
    jobs = client.jobs(state="ended", limit=args.limit)
    if args.json:
        print(as_json(jobs))
        return 0
    rows = [(j["id"], j.get("name"), _state(j), j.get("exit_status"),
             _duration(j.get("wall_seconds")) or "-",
             "-" if j.get("gpu_hours") is None else f"{j['gpu_hours']:.2f}", j.get("ended_at"))
            for j in jobs]
    print(table(rows, ("JOB", "NAME", "STATE", "EXIT", "WALL", "GPU-HOURS", "ENDED")))
    return 0


def cmd_outputs(client: PortalClient, args: argparse.Namespace) -> int:
    outputs = client.job_outputs(args.job)
    if args.json:
        print(as_json(outputs))
        return 0
    rows = [(f["path"], f["size"], f["sha256"]) for f in outputs.get("files") or []]
    print(table(rows, ("PATH", "SIZE", "SHA256")))
    print(fields([("folder", outputs.get("folder")),
                   ("manifest hash", outputs.get("manifest_hash"))]))
    return 0


# The quota's measures: (label, limit key, usage key).
QUOTA_MEASURES = (("desktops", "max_desktops", "desktops"), ("jobs", "max_jobs", "jobs"),
                  ("gpus", "max_gpus", "gpus"),
                  ("cpu hours this month", "cpu_hours_per_month", "cpu_hours"),
                  ("gpu hours this month", "gpu_hours_per_month", "gpu_hours"))


def cmd_quota(client: PortalClient, args: argparse.Namespace) -> int:
    quota = client.quota(args.project)
    if args.json:
        print(as_json(quota))
        return 0
    rows = []
    for account, status in (("you", quota), *((f"project {p['project']}", p)
                                              for p in quota.get("projects") or [])):
        limits, usage = status.get("limits") or {}, status.get("usage") or {}
        for label, limit_key, usage_key in QUOTA_MEASURES:
            limit, used = limits.get(limit_key), usage.get(usage_key) or 0
            rows.append((account, label, "unlimited" if limit is None else _number(limit),
                         _number(used), "-" if limit is None else _number(max(limit - used, 0))))
    print(table(rows, ("ACCOUNT", "MEASURE", "LIMIT", "USED", "LEFT")))
    return 0


def _gpus(flavor: dict[str, Any]) -> str:
    """A flavor's GPUs as people read them: 1/4 for a quarter share of one."""
    share = flavor.get("gpu_share") or 1
    return f"1/{share}" if flavor["gpus"] == 1 and share > 1 else str(flavor["gpus"])


def cmd_flavors(client: PortalClient, args: argparse.Namespace) -> int:
    flavors = client.flavors(args.project, args.kind)
    if args.json:
        print(as_json(flavors))
        return 0
    rows = [(f["name"], f["cpus"], f"{f['memory_mib'] / 1024:g} GiB",
             f"{_gpus(f)}{' ' + f['gpu_model'] if f.get('gpu_model') else ''}",
             f"{f['max_runtime_minutes'] / 60:g} h",
             "yes" if f.get("usable", True) else f"no: {f.get('reason') or f.get('refusal')}")
            for f in flavors]
    print(table(rows, ("FLAVOR", "CPUS", "MEMORY", "GPUS", "MAX RUN", "USABLE")))
    return 0


def cmd_applications(client: PortalClient, args: argparse.Namespace) -> int:
    apps = client.applications(args.kind)
    if args.json:
        print(as_json(apps))
        return 0
    rows = [(a["id"], a["kind"], a["image"] + (f"@{a['image_digest']}" if a.get("image_digest")
                                               else ""), a["name"]) for a in apps]
    print(table(rows, ("APPLICATION", "KIND", "IMAGE", "NAME")))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vre-job", description=__doc__, epilog=EXIT_CODES,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    _common.global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name: str, func: Callable[[PortalClient, argparse.Namespace], int],
                what: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=what, description=what, aliases=list(aliases),
                           epilog=EXIT_CODES, formatter_class=argparse.RawDescriptionHelpFormatter)
        p.set_defaults(func=func)
        p.add_argument("--json", action="store_true", help="print JSON, for scripts")
        return p

    submit = command("submit", cmd_submit, "submit a job: vre-job submit [options] -- CMD ...")
    submit.add_argument("--flavor", help="resource flavor (see `vre-job flavors`)")
    image = submit.add_mutually_exclusive_group()
    image.add_argument("--app", help="application to run in (see `vre-job apps`)")
    image.add_argument("--image", help="container image to run in")
    submit.add_argument("--name", help="a name to know the job by")
    submit.add_argument("--env", action="append", type=_env_pair, metavar="KEY=VALUE",
                        help="environment variable for the job (repeatable)")
    submit.add_argument("--time", type=_positive, metavar="MIN", help="time limit in minutes")
    submit.add_argument("--after", action="append", metavar="JOB",
                        help="start only once this job has succeeded (repeatable)")
    submit.add_argument("--idempotency-key", metavar="KEY",
                        help="submitting again with the same key returns the same job")
    submit.add_argument("--dataset", action="append", metavar="ID",
                        help="dataset to mount read-only (repeatable)")
    submit.add_argument("--project", action="append", metavar="NAME",
                        help="the job is for this project: its flavors, counted against its "
                        "quota (repeatable; from a desktop, by default the desktop's)")
    submit.add_argument("--wait", action="store_true",
                        help="wait for the job to end and exit with its status")
    submit.add_argument("--dry-run", action="store_true",
                        help="say what would happen (decision, queue estimate); submit nothing")
    submit.add_argument("argv", nargs="*", metavar="CMD", help="the command, after --")

    command("queue", cmd_queue, "your jobs waiting or running, in queue order")
    for name, func, what in (("show", cmd_show, "one job in full"),
                             ("cancel", cmd_cancel, "cancel a job, waiting or running"),
                             ("outputs", cmd_outputs, "the files a job left, with their hashes")):
        command(name, func, what).add_argument("job", metavar="JOB")
    logs = command("logs", cmd_logs, "a job's output (stdout and stderr) as written")
    logs.add_argument("job", metavar="JOB")
    logs.add_argument("--follow", "-f", action="store_true",
                      help="keep printing as the job writes, until it ends")
    history = command("history", cmd_history, "your jobs that ended, latest first")
    history.add_argument("--limit", type=_positive, default=20, metavar="N",
                         help="at most this many (default: 20)")
    quota = command("quota", cmd_quota, "your limits and what is in use, and your projects'")
    quota.add_argument("--project", action="append", metavar="NAME",
                       help="show this project's quota too (repeatable; from a desktop, by "
                       "default the desktop's projects)")
    flavors = command("flavors", cmd_flavors, "list the resource flavors you may use")
    flavors.add_argument("--project", action="append", help="for work in this project")
    flavors.add_argument("--kind", choices=("job", "desktop"),
                         help="flavors for jobs or for desktops (default: job)")
    apps = command("applications", cmd_applications, "list the images jobs and desktops run",
                   aliases=("apps",))
    apps.add_argument("--kind", choices=("desktop", "batch"))
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "submit" and not args.argv:
        parser.error("submit: give the command to run after --, e.g. -- python train.py")
    return _common.run("vre-job", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
