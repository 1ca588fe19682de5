"""How the logs connector's erasure compares with `grep -F` over the same file.

    python -m benchmarks.bench_logs                       # 64 MiB, K = 1, 100, 10000
    python -m benchmarks.bench_logs --size-mb 1024 --repeat 3
    python -m benchmarks.bench_logs --ips                 # subjects have an IP address too

It writes a log file of realistic lines (nginx access lines by default, `--format jsonl`
for JSON-lines app logs) for a population of 2,000,000 users: emails in several domains
(URL-encoded in query strings), phone numbers (`%2B86…`, `+86 138-0013-8000`, bare),
7-8 digit user ids (`uid=…`), device ids, IPs, timestamps, sizes. About 0.1% of the
lines mention one of the chosen subjects: a third of those mention subject #1, a third one
of subjects #1-100, a third one of subjects #1-10,000, so that for every K the file has
lines to rewrite and so is rewritten.

With `--ips`, every user has an address of their own (public IPv4; IPv6 for one user in
five) that their lines carry as the client address, the subjects have it as an `ip`
identity, the sources look for IPs too (text: `identities` + ip; jsonl: the `ip` field),
and the ids file for grep has it as well. Without it the file and the subjects are as
before: random client addresses, no `ip` identity.

For each K it writes the K subjects' identity values, one a line (email, phone digits, user
id), to an ids file, copies the generated file afresh, and times on that copy

- `LC_ALL=C grep -F -c -f ids FILE` (the baseline: one pass, literal matching, no output
  but a count), then
- the connector's `erase` of the K subjects (find every spelling, rewrite the file), and
- its `verify` afterwards (a scan that finds nothing left).

With `--repeat N` each timing is the best of N fresh copies. The table shows both times
and erase / grep.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

from benchmarks import machine as describe_machine
from connectors.base import Outcome
from connectors.logs import LogsConnector
from dsrflow.crypto import Pseudonymizer, new_key
from dsrflow.datamap import LogsSystem
from dsrflow.identities import Identity, IdentityError, IdentityType, Subject, normalize_ip

POPULATION = 2_000_000
FIRST_UID = 10_000_000
SUBJECT_SHARE = 0.001  # lines that mention a chosen subject
MAX_K = 10_000

FAMILY = ("zhang", "wang", "li", "liu", "chen", "yang", "zhao", "huang", "zhou", "wu",
          "xu", "sun", "hu", "zhu", "gao", "lin", "he", "guo", "ma", "luo")
GIVEN = ("wei", "fang", "na", "min", "jing", "lei", "yang", "yong", "jie", "tao", "ming",
         "hua", "xiu", "li", "jun", "qiang", "ping", "gang", "hui", "yan")
DOMAINS = ("qq.com", "163.com", "126.com", "gmail.com", "outlook.com", "sina.com",
           "foxmail.com", "example.com", "example.org", "hotmail.com")
MOBILE_PREFIXES = ("130", "131", "132", "133", "135", "136", "137", "138", "139", "150",
                   "151", "152", "155", "156", "157", "158", "159", "166", "177", "180",
                   "181", "182", "183", "185", "186", "187", "188", "189", "199")
PATHS = ("/api/v1/items/{n}", "/api/v1/feed", "/api/v1/topics/{n}", "/api/v2/search",
         "/api/v1/orders/{n}", "/static/img/{n}.jpg", "/api/v1/live/{n}/comments")
AGENTS = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 Mobile",
    "Mozilla/5.0 (Linux; Android 14; HUAWEI Mate 60 Pro) AppleWebKit/537.36 Chrome/120",
    "Wishe/5.2.1 (iOS 17.1; iPhone15,2)", "Wishe/5.2.0 (Android 14; Xiaomi 14)",
    "okhttp/4.12.0",
)
EVENTS = ("login", "logout", "view_item", "search", "add_to_cart", "checkout", "comment",
          "upload", "follow", "like")


@dataclass(frozen=True)
class User:
    index: int

    @property
    def uid(self) -> int:
        return FIRST_UID + self.index * 3

    @property
    def email(self) -> str:
        i = self.index
        local = f"{FAMILY[i % 20]}{'.' if i % 3 else ''}{GIVEN[(i // 20) % 20]}{i // 400 or ''}"
        return f"{local}@{DOMAINS[(i * 7) % 10]}"

    @property
    def phone(self) -> str:
        """National digits of a valid Chinese mobile number, unique per user."""
        i = self.index
        return MOBILE_PREFIXES[i % len(MOBILE_PREFIXES)] + f"{(i * 48271) % 100_000_000:08d}"

    @property
    def device(self) -> str:
        return f"{(self.index * 2654435761) % 2**64:016x}"

    @property
    def ip(self) -> str:
        """A public address of the user's own, the same in every run (IPv6 for one in
        five): a multiplicative hash of the index, hashed again while it falls in a
        range many people share."""
        step = 0
        while True:
            n = ((self.index + step * 1_000_003) * 2654435761) % 2**32
            if self.index % 5 == 0:
                value = str(ipaddress.IPv6Address((0x2A02 << 112) | (n << 64) | (n * 48271)))
            else:
                value = str(ipaddress.IPv4Address(n))
            try:
                return normalize_ip(value)
            except IdentityError:  # private, loopback, multicast ...: many people's
                step += 1


class _Lines:
    def __init__(self, fmt: str, seed: int, subjects: list[User], ips: bool = False) -> None:
        self.fmt = fmt
        self.ips = ips
        self.rng = random.Random(seed)
        self.subjects = subjects
        self.subject_set = set(subjects)

    def user(self) -> User:
        rng = self.rng
        if rng.random() < SUBJECT_SHARE:
            pool = rng.choice((1, 100, MAX_K))
            return self.subjects[rng.randrange(min(pool, len(self.subjects)))]
        while True:
            user = User(rng.randrange(POPULATION))
            if user not in self.subject_set:
                return user

    def _ip(self, user: User) -> str:
        r = self.rng.randrange
        random_ip = f"{r(1, 224)}.{r(256)}.{r(256)}.{r(1, 255)}"
        return user.ip if self.ips else random_ip

    def line(self) -> str:
        return self._nginx() if self.fmt == "text" else self._jsonl()

    def _phone_spelling(self, user: User) -> str:
        p = user.phone
        return self.rng.choice(
            (p, p, "+86" + p, f"+86 {p[:3]}-{p[3:7]}-{p[7:]}", f"{p[:3]} {p[3:7]} {p[7:]}")
        )

    def _nginx(self) -> str:
        rng = self.rng
        user = self.user()
        ip = self._ip(user)
        ts = (f"{rng.randrange(1, 29):02d}/Nov/2026:{rng.randrange(24):02d}:"
              f"{rng.randrange(60):02d}:{rng.randrange(60):02d} +0800")
        path = rng.choice(PATHS).format(n=rng.randrange(1, 10_000_000))
        r = rng.random()
        if r < 0.25:
            query = f"uid={user.uid}&email={quote(user.email, safe='')}"
        elif r < 0.40:
            query = f"uid={user.uid}&phone={quote('+86' + user.phone, safe='')}"
        elif r < 0.65:
            query = f"uid={user.uid}&did={user.device}&page={rng.randrange(1, 50)}"
        elif r < 0.75:
            query = f"q={rng.choice(GIVEN)}&page={rng.randrange(1, 50)}&size=20"
        else:
            query = f"v={rng.randrange(100, 999)}&t={rng.randrange(10**12, 10**13)}"
        status = rng.choice((200, 200, 200, 200, 204, 301, 304, 400, 404, 500))
        agent = rng.choice(AGENTS)
        return (
            f'{ip} - - [{ts}] "{rng.choice(("GET", "GET", "POST"))} {path}?{query} HTTP/1.1" '
            f'{status} {rng.randrange(0, 200_000)} "-" "{agent}" {rng.random():.3f}\n'
        )

    def _jsonl(self) -> str:
        rng = self.rng
        user = self.user()
        ts = (f"2026-11-{rng.randrange(1, 29):02d}T{rng.randrange(24):02d}:"
              f"{rng.randrange(60):02d}:{rng.randrange(60):02d}.{rng.randrange(1000):03d}Z")
        ip = self._ip(user)
        email = user.email if rng.random() < 0.8 else user.email.title()
        phone = self._phone_spelling(user) if rng.random() < 0.5 else None
        phone_json = "null" if phone is None else f'"{phone}"'
        return (
            f'{{"ts":"{ts}","level":"{rng.choice(("info", "info", "info", "warn", "error"))}",'
            f'"event":"{rng.choice(EVENTS)}","user":{{"id":{user.uid},"email":"{email}"}},'
            f'"phone":{phone_json},"device":"{user.device}","ip":"{ip}",'
            f'"latency_ms":{rng.randrange(1, 3000)},"item":{rng.randrange(1, 10_000_000)}}}\n'
        )


def chosen_subjects(seed: int) -> list[User]:
    rng = random.Random(seed + 1)
    return [User(i) for i in rng.sample(range(POPULATION), MAX_K)]


def generate(path: Path, size_mb: int, fmt: str, seed: int, ips: bool = False) -> int:
    """Write about `size_mb` MiB of log lines; returns the number of lines."""
    lines = _Lines(fmt, seed, chosen_subjects(seed), ips)
    target = size_mb * 1024 * 1024
    written = count = 0
    with open(path, "w", encoding="ascii", buffering=1 << 20) as out:
        while written < target:
            batch = [lines.line() for _ in range(10_000)]
            text = "".join(batch)
            out.write(text)
            written += len(text)
            count += len(batch)
    return count


def system_for(fmt: str, ips: bool = False) -> LogsSystem:
    source: dict[str, object]
    if fmt == "text":
        source = {"path": "work/*.log", "format": "text",
                  "identities": ["email", "phone", "user_id", "device_id"] + (
                      ["ip"] if ips else [])}
    else:
        source = {"path": "work/*.log", "format": "jsonl",
                  "fields": {"user.id": "user_id", "user.email": "email", "phone": "phone",
                             "device": "device_id", **({"ip": "ip"} if ips else {})}}
    return LogsSystem.model_validate({"kind": "logs", "sources": {"bench": source}})


def subjects_of(users: list[User], ips: bool = False) -> list[Subject]:
    return [
        # The population is Chinese: its national numbers are read in CN, as a PIPL
        # request's would be (and only then are national spellings the subject's).
        Subject(
            request_id=f"00000000-0000-4000-8000-{i:012d}",
            phone_region="CN",
            identities=(
                Identity(type=IdentityType.EMAIL, value=u.email),
                Identity.read(IdentityType.PHONE, u.phone, "CN"),
                Identity(type=IdentityType.USER_ID, value=str(u.uid)),
                Identity(type=IdentityType.DEVICE_ID, value=u.device),
                *([Identity(type=IdentityType.IP, value=u.ip)] if ips else []),
            ),
        )
        for i, u in enumerate(users)
    ]


@dataclass
class Row:
    k: int
    grep_s: float
    grep_count: int
    erase_s: float
    verify_s: float
    rewritten: int
    remaining: int

    @property
    def ratio(self) -> float:
        return self.erase_s / self.grep_s


def run_k(workdir: Path, master: Path, fmt: str, users: list[User], repeat: int,
          ips: bool = False) -> Row:
    ids = workdir / f"ids-{len(users)}.txt"
    ids.write_text("".join(f"{u.email}\n{u.phone}\n{u.uid}\n" + (f"{u.ip}\n" if ips else "")
                           for u in users))
    work = workdir / "work"
    target = work / "access.log"
    subjects = subjects_of(users, ips)
    keys = {s.request_id: Pseudonymizer(new_key()) for s in subjects}
    best: Row | None = None
    for _ in range(repeat):
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(workdir / "state", ignore_errors=True)
        work.mkdir()
        shutil.copyfile(master, target)
        os.sync()  # the copy's dirty pages go to disk now, not during a timing
        start = time.perf_counter()
        grep = subprocess.run(
            ["grep", "-F", "-c", "-f", str(ids), str(target)],
            env={**os.environ, "LC_ALL": "C"}, capture_output=True, text=True,
        )
        grep_s = time.perf_counter() - start
        if grep.returncode not in (0, 1):
            sys.exit(f"grep failed: {grep.stderr.strip()}")
        connector = LogsConnector("bench", system_for(fmt, ips), workdir, workdir / "state")
        start = time.perf_counter()
        erased = connector.erase(subjects, None, keys)
        erase_s = time.perf_counter() - start
        start = time.perf_counter()
        verified = connector.verify(subjects, None)
        verify_s = time.perf_counter() - start
        row = Row(
            k=len(users), grep_s=grep_s, grep_count=int(grep.stdout.strip() or 0),
            erase_s=erase_s, verify_s=verify_s,
            rewritten=_lines_rewritten(erased), remaining=sum(
                o.total("remaining") for o in verified.values()),
        )
        if best is None:
            best = row
        else:
            best.grep_s = min(best.grep_s, row.grep_s)
            best.erase_s = min(best.erase_s, row.erase_s)
            best.verify_s = min(best.verify_s, row.verify_s)
    assert best is not None
    shutil.rmtree(work, ignore_errors=True)
    return best


def _lines_rewritten(outcomes: Mapping[str, Outcome]) -> int:
    # Lines mentioning two subjects count once per subject; the benchmark has none.
    return sum(o.total("anonymized") for o in outcomes.values())


def machine() -> str:
    try:
        from importlib.metadata import version

        engine = f"hyperscan {version('hyperscan')}"
    except Exception:
        engine = "no hyperscan (pure-Python fallback)"
    return describe_machine(engine)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_logs",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=64, help="log file size (default 64)")
    parser.add_argument("--subjects", default="1,100,10000",
                        help="batch sizes K, comma-separated (at most 10000)")
    parser.add_argument("--format", choices=("text", "jsonl"), default="text")
    parser.add_argument("--repeat", type=int, default=1, help="best of N fresh copies")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--ips", action="store_true",
                        help="users have IP addresses of their own, searched as an identity")
    parser.add_argument("--dir", type=Path, default=None,
                        help="working folder (default: a temporary one, removed afterwards); "
                             "a generated file found there is reused")
    args = parser.parse_args(argv)
    ks = [int(k) for k in args.subjects.split(",") if k.strip()]
    if not ks or max(ks) > MAX_K or min(ks) < 1:
        parser.error(f"--subjects: between 1 and {MAX_K}")

    workdir = args.dir or Path(tempfile.mkdtemp(prefix="dsrflow-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        ips = "-ips" if args.ips else ""
        master = workdir / f"master-{args.format}-{args.size_mb}mb-{args.seed}{ips}.log"
        if not master.exists():
            start = time.perf_counter()
            partial = master.with_suffix(".partial")
            lines = generate(partial, args.size_mb, args.format, args.seed, args.ips)
            partial.replace(master)
            print(f"generated {lines:,} lines in {time.perf_counter() - start:.0f} s",
                  file=sys.stderr)
        size = master.stat().st_size
        users = chosen_subjects(args.seed)
        what = " (subjects with IP addresses)" if args.ips else ""
        print(f"# {args.format} logs{what}, {size / 2**20:,.0f} MiB; {machine()}")
        print(f"# {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; best of {args.repeat}")
        print()
        print("| K subjects | grep -F -c (s) | erase (s) | erase / grep | verify (s) "
              "| lines rewritten | left after |")
        print("|---:|---:|---:|---:|---:|---:|---:|")
        for k in ks:
            row = run_k(workdir, master, args.format, users[:k], args.repeat, args.ips)
            print(f"| {row.k:,} | {row.grep_s:.2f} | {row.erase_s:.2f} | {row.ratio:.2f}x "
                  f"| {row.verify_s:.2f} | {row.rewritten:,} | {row.remaining} |", flush=True)
    finally:
        if args.dir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
