"""Crash loops: a TP x PP x DP run killed again and again, then compared with one never killed.

    python benchmarks/chaos.py [--kills 12] [--tp 2 --pp 2 --dp 2] [--steps 24]
                               [--out benchmarks/results/chaos_cpu.json]

One run of ``--steps`` optimizer steps saves into one directory (``--save D --load D``,
Megatron-LM's habit: the first job starts from scratch, every later one resumes) and is
killed ``--kills`` times, each kill followed by a restart of the same command:

- who is killed: the whole job at once (launcher, ranks and their helpers, as a node
  failure or SLURM's cgroup kill does), one rank (SIGKILL; the launcher then ends the
  others), or the launcher alone (SIGKILL; its ranks must end by themselves, see
  ``megavid.parallel.lifeline``: how long they took is reported);
- when: at a random moment (start-up and loading included), inside a synchronous save,
  inside an asynchronous save (that attempt runs with --async-save), or between a
  save's shards and its commit (rank 0 kills itself there: MEGAVID_FAULT_INJECT);

plus a SIGTERM and a SIGUSR1 preemption, each sent to one random rank (all ranks must
stop at the same step, save and exit 0), and once the newest checkpoint is damaged
(a shard truncated): the restart must name it and resume from the one before.

At the end every step any attempt logged must equal the uninterrupted run's (loss and
gradient norm, bit for bit), and so must the final checkpoint's tensors (model and
optimizer state). Reported: kills survived, steps recomputed per kill, how long the
ranks of a killed launcher lived on, processes left behind (must be 0), and the
wall-time overhead against the uninterrupted run. Runs on gloo here; on a cluster the
same script runs one node's torchrun per attempt.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

from megavid.tools.bench_results import write_results

REPO = Path(__file__).resolve().parents[1]
TARGETS = ("job", "rank", "launcher")
MOMENTS = ("random", "sync_save", "async_save")
ORPHAN_GRACE_S = 10.0  # a process of an ended attempt alive this long after it is an orphan


@dataclass
class Event:
    kind: str  # kill | sigterm | sigusr1
    target: str = ""  # job | rank | launcher (kills)
    moment: str = ""  # random | sync_save | async_save | before_commit (kills)
    corrupt_after: bool = False  # damage the newest checkpoint once this attempt has ended


@dataclass
class Attempt:
    event: Event
    returncode: int | None = None
    resumed_from: int = 0
    last_step: int = 0
    hit: bool = True  # the kill landed in the moment it aimed at
    ranks_lived_on_s: float | None = None  # launcher kills: until the last rank ended
    orphans: list[str] = field(default_factory=list)
    fallback_named: str | None = None  # the damaged checkpoint the restart skipped
    damage_postponed: bool = False  # fewer than two checkpoints: the next kill's turn
    wall_s: float = 0.0


def schedule(kills: int, rng: random.Random) -> list[Event]:
    """``kills`` kills, each target and each moment equally often (plus one
    before-commit kill of a rank); a SIGTERM and a SIGUSR1 preemption; one damaged checkpoint."""
    # a Latin square in rounds of three: every round kills each target once and hits each moment
    # once, so any 1 + 3n kills are balanced
    rounds = [[(t, MOMENTS[(i + r) % 3]) for i, t in enumerate(TARGETS)] for r in range(3)]
    rng.shuffle(rounds)
    combos = [combo for round_ in rounds for combo in rng.sample(round_, 3)]
    events = [Event("kill", "rank", "before_commit")]
    while len(events) < kills:
        target, moment = combos[(len(events) - 1) % len(combos)]
        events.append(Event("kill", target, moment))
    events = events[:kills]
    rng.shuffle(events)
    events.insert(len(events) // 3, Event("sigterm"))
    events.insert(2 * len(events) // 3, Event("sigusr1"))
    # after the middle kill: by then at least two checkpoints exist to fall back between
    middle = [i for i, e in enumerate(events) if e.kind == "kill"][kills // 2]
    events[middle].corrupt_after = True
    return events


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Job:
    """One ``torchrun -m megavid.pretrain`` in a session of its own, its processes watched."""

    def __init__(self, world: int, args: list[str], log_dir: Path, env: dict):
        log_dir.mkdir(parents=True)
        self.log_dir = log_dir
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(world),
               "--master-port", str(free_port()), "-m", "megavid.pretrain",
               "--log-dir", str(log_dir), *args]
        self.out = (log_dir / "stdout").open("w")
        self.err = (log_dir / "stderr").open("w")
        self.proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=self.out, stderr=self.err,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        self.seen: dict[int, psutil.Process] = {}  # every descendant ever seen, by pid

    def descendants(self) -> list[psutil.Process]:
        try:
            found = psutil.Process(self.proc.pid).children(recursive=True)
        except psutil.Error:
            found = []
        for proc in found:
            self.seen.setdefault(proc.pid, proc)
        return found

    def wait_for(self, done, *, poll_s: float = 0.02, timeout_s: float = 300.0) -> bool:
        """Poll ``done()`` (noting descendants meanwhile); False if the launcher ended or the
        time ran out first."""
        deadline = time.monotonic() + timeout_s
        while not done():
            self.descendants()
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(poll_s)
        return True

    def ranks(self) -> list[psutil.Process]:
        """The launcher's direct children: its ranks."""
        try:
            return psutil.Process(self.proc.pid).children()
        except psutil.Error:
            return []

    def steps(self) -> list[dict]:
        return read_steps(self.log_dir)

    def alive(self) -> list[psutil.Process]:
        return [p for p in self.seen.values() if _running(p)]

    def close(self) -> None:
        self.out.close()
        self.err.close()


def read_steps(log_dir: Path) -> list[dict]:
    """The steps an attempt logged (metrics.jsonl), up to a line a kill cut short."""
    path = log_dir / "metrics.jsonl"
    rows = []
    for line in path.read_text().splitlines() if path.is_file() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:
            break
    return rows


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _kill(procs) -> None:
    for proc in procs:
        try:
            proc.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass


class Chaos:
    def __init__(self, opts, work: Path):
        self.opts, self.work = opts, work
        self.rng = random.Random(opts.seed)
        self.save = work / "save"
        self.world = opts.tp * opts.pp * opts.dp
        self.args = [
            "--preset", "tiny", "--tp", str(opts.tp), "--pp", str(opts.pp),
            "--train-iters", str(opts.steps), "--global-batch-size", str(4 * opts.dp),
            "--micro-batch-size", "2", "--mask-ratio", "0.8", "--lr-warmup-iters", "1",
            "--set", "model.norm_pix_loss=true", "--set", "log.tensorboard=false",
            "--set", "log.plot=false", "--set", f"data.cache_dir={work / 'clips'}",
            "--save-interval", str(opts.save_interval)]
        if opts.tp > 1:
            self.args.append("--sp")
        if opts.dp > 1:
            self.args.append("--use-distributed-optimizer")
        self.env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
        self.startup_s = self.step_s = 1.0  # measured by the reference run

    def reference(self) -> tuple[list[dict], float]:
        """The uninterrupted run; it also times the start-up (launch to first step) and a step,
        which place the random kills."""
        start = time.monotonic()
        job = Job(self.world, [*self.args, "--save", str(self.work / "reference")],
                  self.work / "logs" / "reference", self.env)
        while not job.steps() and job.proc.poll() is None:
            time.sleep(0.02)
        self.startup_s = time.monotonic() - start
        code = job.proc.wait()
        job.close()
        wall = time.monotonic() - start
        rows = job.steps()
        if code != 0 or len(rows) != self.opts.steps:
            raise SystemExit(f"the reference run failed ({code}): see {job.log_dir}")
        self.step_s = sum(r["step_time_s"] for r in rows[1:]) / max(1, len(rows) - 1)
        return rows, wall

    def attempt(self, n: int, event: Event) -> Attempt:
        record, start = Attempt(event), time.monotonic()
        args = [*self.args, "--save", str(self.save), "--load", str(self.save)]
        env = dict(self.env)
        if event.moment == "async_save":
            args.append("--async-save")
        if event.moment == "before_commit":
            env["MEGAVID_FAULT_INJECT"] = f"kill_before_commit:{self._next_save()}"
        if event.kind == "kill" and event.moment == "before_commit" and not self._next_save():
            record.hit = False
        job = Job(self.world, args, self.work / "logs" / f"attempt{n:02d}", env)
        try:
            self._drive(job, event, record)
            record.returncode = job.proc.wait(timeout=600)
        finally:
            self._reap(job, record)
            job.close()
        rows = job.steps()
        if rows:
            record.resumed_from, record.last_step = rows[0]["step"] - 1, rows[-1]["step"]
        else:
            record.resumed_from = record.last_step = self._latest()
        record.fallback_named = _skipped_damaged(job.log_dir)
        if event.corrupt_after and not _damage_newest(self.save):
            event.corrupt_after, record.damage_postponed = False, True
        record.wall_s = time.monotonic() - start
        return record

    def _latest(self) -> int:
        latest = self.save / "latest"
        return int(latest.read_text().split("_")[1]) if latest.is_file() else 0

    def _next_save(self) -> int:
        k = self.opts.save_interval
        step = (self._latest() // k + 1) * k
        return step if step < self.opts.steps else 0

    def _drive(self, job: Job, event: Event, record: Attempt) -> None:
        """Wait for the event's moment, then deliver it."""
        if event.kind == "none" or event.moment == "before_commit":
            return  # runs to its end; or rank 0 kills itself and the launcher ends the rest
        before = _partials(self.save)  # a killed save's leftovers are not this attempt's
        if event.kind == "kill" and event.moment == "random":
            # a third of them during start-up and loading, the rest within the first steps
            # of the attempt (so that every attempt leaves steps for the next ones)
            if self.rng.random() < 1 / 3:
                steps, delay = 0, self.rng.uniform(0.3, self.startup_s)
            else:
                steps, delay = self.rng.randint(1, 3), self.rng.uniform(0.0, self.step_s)
            job.wait_for(lambda: len(job.steps()) >= steps)
            until = time.monotonic() + delay
            job.wait_for(lambda: time.monotonic() >= until)
        elif event.kind == "kill":  # inside a save: as soon as its directory appears
            new = lambda: set(_partials(self.save).items()) - set(before.items())  # noqa: E731
            if not job.wait_for(new, poll_s=0.005):
                record.hit = False
                return
            time.sleep(self.rng.uniform(0.0, 0.02))
        elif not job.wait_for(lambda: len(job.steps()) >= 1):  # a preemption: after a step
            record.hit = False
            return
        job.wait_for(job.ranks, poll_s=0.01)  # a kill right after the start: ranks exist
        if job.proc.poll() is not None:
            record.hit = False
            return
        if event.kind != "kill":
            ranks = job.ranks()
            sig = signal.SIGTERM if event.kind == "sigterm" else signal.SIGUSR1
            self.rng.choice(ranks).send_signal(sig)
            return
        if event.target == "job":
            _kill([psutil.Process(job.proc.pid), *job.descendants()])
        elif event.target == "rank":
            _kill([self.rng.choice(job.ranks())])
        else:
            ranks = job.ranks()
            job.proc.send_signal(signal.SIGKILL)
            gone = time.monotonic()
            while any(_running(p) for p in ranks) and time.monotonic() - gone < ORPHAN_GRACE_S:
                time.sleep(0.01)
            record.ranks_lived_on_s = round(time.monotonic() - gone, 3)

    def _reap(self, job: Job, record: Attempt) -> None:
        """Whatever of the attempt is still alive ``ORPHAN_GRACE_S`` after its launcher ended
        is an orphan: recorded, then killed so the next attempt starts clean."""
        if job.proc.poll() is None:
            _kill([psutil.Process(job.proc.pid), *job.descendants()])
            job.proc.wait()
        ended = time.monotonic()
        while job.alive() and time.monotonic() - ended < ORPHAN_GRACE_S:
            time.sleep(0.05)
        left = job.alive()
        record.orphans = [" ".join(p.cmdline()[:4]) for p in left if _running(p)]
        _kill(left)

    def run(self) -> dict:
        reference, reference_wall = self.reference()
        attempts = []
        events = schedule(self.opts.kills, self.rng)
        for n, event in enumerate(events):
            attempts.append(self.attempt(n, event))
            print(_describe(attempts[-1]), flush=True)
            if attempts[-1].damage_postponed:  # the next kill damages instead
                later = [e for e in events[n + 1:] if e.kind == "kill"]
                if later:
                    later[0].corrupt_after = True
        final = self.attempt(len(attempts), Event("none"))
        print(_describe(final), flush=True)
        return self.report(reference, reference_wall, attempts, final)

    def report(self, reference, reference_wall, attempts, final) -> dict:
        want = {r["step"]: (r["loss"], r["grad_norm"]) for r in reference}
        mismatched, checked = [], 0
        for n, attempt in enumerate([*attempts, final]):
            for row in read_steps(self.work / "logs" / f"attempt{n:02d}"):
                checked += 1
                if (row["loss"], row["grad_norm"]) != want[row["step"]]:
                    mismatched.append((n, row["step"]))
        tensors = compare_checkpoints(self.work / "reference", self.save, self.opts.steps)
        kills = [a for a in attempts if a.event.kind == "kill"]
        nexts = [*attempts[1:], final]
        recomputed = [max(0, a.last_step - b.resumed_from)
                      for a, b in zip(attempts, nexts) if a.event.kind == "kill"]
        lived = [a.ranks_lived_on_s for a in attempts if a.ranks_lived_on_s is not None]
        chaos_wall = sum(a.wall_s for a in [*attempts, final])
        damaged = [a for a in attempts if a.event.corrupt_after]
        fallback_ok = all(b.fallback_named for a, b in zip(attempts, nexts) if a.event.corrupt_after)
        # a preempted attempt stops every rank at one step, saves it and exits 0: the next
        # attempt starts right after it
        after_preemption = [b.resumed_from - a.last_step for a, b in zip(attempts, nexts)
                            if a.event.kind != "kill"]
        preempted_ok = all(a.returncode == 0 and a.last_step < self.opts.steps and a.hit
                           for a in attempts if a.event.kind != "kill") and not any(after_preemption)
        return {
            "layout": {"tp": self.opts.tp, "pp": self.opts.pp, "dp": self.opts.dp,
                       "steps": self.opts.steps, "save_interval": self.opts.save_interval},
            "kills": len(kills),
            "kills_by_target": {t: sum(a.event.target == t for a in kills) for t in TARGETS},
            "kills_by_moment": {m: sum(a.event.moment == m for a in kills)
                                for m in (*MOMENTS, "before_commit")},
            "kills_that_missed_their_moment": sum(not a.hit for a in kills),
            "preemptions": len(attempts) - len(kills),
            "preemptions_stopped_cleanly": preempted_ok,
            "damaged_checkpoints": len(damaged),
            "damaged_checkpoint_named_and_skipped": fallback_ok,
            "final_step": final.last_step,
            "steps_checked": checked,
            "steps_mismatched": mismatched,
            "final_tensors_compared": tensors["compared"],
            "final_tensors_different": tensors["different"],
            "bit_identical": not mismatched and not tensors["different"] and tensors["compared"] > 0
                             and final.last_step == self.opts.steps,
            "steps_recomputed_per_kill": recomputed,
            "steps_recomputed_mean": round(sum(recomputed) / max(1, len(recomputed)), 2),
            "ranks_lived_on_after_launcher_kill_s": lived,
            "orphans": [o for a in [*attempts, final] for o in a.orphans],
            "reference_wall_s": round(reference_wall, 1),
            "chaos_wall_s": round(chaos_wall, 1),
            "wall_time_overhead": round(chaos_wall / reference_wall - 1, 2),
            "attempts": [asdict(a) for a in [*attempts, final]],
        }


def _skipped_damaged(log_dir: Path) -> str | None:
    """What the attempt's output said it skipped as damaged (megavid prints it on stdout)."""
    text = "".join((log_dir / name).read_text(errors="replace") for name in ("stdout", "stderr"))
    for line in text.splitlines():
        if "skipped damaged checkpoint" in line:
            return line.split("checkpoint", 1)[1].strip(" :")[:200]
    return None


def _partials(save: Path) -> dict[str, int]:
    """Saves in progress: name -> inode (a re-save of the same step is a new directory)."""
    found = {}
    for path in save.glob("iter_*.partial"):
        try:
            found[path.name] = path.stat().st_ino
        except FileNotFoundError:
            pass
    return found


def _damage_newest(save: Path) -> bool:
    """Truncate the newest checkpoint's largest shard to half (a torn write), if an older
    complete one exists to fall back to."""
    if len([p for p in save.glob("iter_???????") if (p / "megavid_manifest.json").is_file()]) < 2:
        return False
    latest = save / (save / "latest").read_text().strip()
    shard = max((p for p in latest.rglob("*.distcp")), key=lambda p: p.stat().st_size)
    with shard.open("r+b") as f:
        f.truncate(shard.stat().st_size // 2)
    return True


def compare_checkpoints(a_root: Path, b_root: Path, step: int) -> dict:
    """Tensors of ``iter_<step>`` of both roots (model and optimizer), compared bit for bit."""
    import torch
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    def tensors(root: Path) -> dict:
        reader = dcp.FileSystemReader(str(root / f"iter_{step:07d}"))
        meta = reader.read_metadata().state_dict_metadata
        out = {k: torch.empty(m.size, dtype=m.properties.dtype) for k, m in meta.items()
               if isinstance(m, TensorStorageMetadata)}
        dcp.load(out, storage_reader=reader, no_dist=True)
        return out

    try:
        with warnings.catch_warnings():  # "assuming the intent is to load in a single process"
            warnings.simplefilter("ignore", UserWarning)
            a, b = tensors(a_root), tensors(b_root)
    except Exception as err:  # noqa: BLE001 - a missing final checkpoint is the report's to say
        return {"compared": 0, "different": [f"cannot read: {err}"]}
    different = sorted(set(a) ^ set(b)) + [k for k in sorted(set(a) & set(b))
                                           if not torch.equal(a[k], b[k])]
    return {"compared": len(set(a) & set(b)), "different": different}


def _describe(a: Attempt) -> str:
    e = a.event
    what = f"kill {e.target} at {e.moment}" if e.kind == "kill" else e.kind
    what += " (+ damage newest)" if e.corrupt_after else ""
    extra = f", ranks lived on {a.ranks_lived_on_s} s" if a.ranks_lived_on_s is not None else ""
    extra += f", skipped damaged {a.fallback_named}" if a.fallback_named else ""
    extra += f", ORPHANS {a.orphans}" if a.orphans else ""
    extra += "" if a.hit else ", missed its moment"
    return (f"{what:34s} exit {a.returncode}, steps {a.resumed_from + 1}..{a.last_step}, "
            f"{a.wall_s:.1f} s{extra}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=12)
    parser.add_argument("--tp", type=int, default=2)
    parser.add_argument("--pp", type=int, default=2)
    parser.add_argument("--dp", type=int, default=2)
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--save-interval", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, default=None, help="default: a temporary one")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/chaos_cpu.json")
    opts = parser.parse_args(argv)
    if opts.kills < 4:
        parser.error("--kills: at least 4 (one per moment and the before-commit kill)")
    with tempfile.TemporaryDirectory(prefix="megavid-chaos-") as tmp:
        work = opts.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        result = Chaos(opts, work).run()
    result["command"] = "python benchmarks/chaos.py " + " ".join(argv or sys.argv[1:])
    write_report(opts.out, result)
    summary = {k: v for k, v in result.items() if k != "attempts"}
    print(json.dumps(summary, indent=1))
    return 0 if result["bit_identical"] and not result["orphans"] else 1


def write_report(path: Path, result: dict) -> None:
    """The report in the benchmarks' format (``megavid/tools/bench_results.py``): the
    headline numbers as rows, the wall-time ratio, and the whole report beside them."""
    lived = result["ranks_lived_on_after_launcher_kill_s"]
    rows = [
        {"name": "kills survived", "value": result["kills"], "unit": "kills"},
        {"name": "preemptions survived", "value": result["preemptions"], "unit": "signals"},
        {"name": "steps recomputed per kill, mean", "value": result["steps_recomputed_mean"],
         "unit": "steps"},
        {"name": "steps compared bit for bit", "value": result["steps_checked"], "unit": "steps"},
        {"name": "steps that differ", "value": len(result["steps_mismatched"]), "unit": "steps"},
        {"name": "final tensors that differ", "value": len(result["final_tensors_different"]),
         "unit": "tensors", "compared": result["final_tensors_compared"]},
        {"name": "processes left behind", "value": len(result["orphans"]), "unit": "processes"},
        *([{"name": "ranks lived on after their launcher's SIGKILL, max", "value": max(lived),
            "unit": "s"}] if lived else []),
        {"name": "wall time uninterrupted", "value": result["reference_wall_s"], "unit": "s"},
        {"name": "wall time with the kills", "value": result["chaos_wall_s"], "unit": "s"},
    ]
    ratios = {"chaos_vs_uninterrupted_wall": round(
        result["chaos_wall_s"] / result["reference_wall_s"], 2)}
    notes = [f"bit_identical: {result['bit_identical']} (every logged step's loss and gradient "
             "norm, and the final checkpoint's model and optimizer tensors)"]
    write_results(path, "benchmarks.chaos", rows, ratios, notes=notes,
                  extra={"settings": result["layout"],
                         **{k: v for k, v in result.items() if k != "layout"}})


if __name__ == "__main__":
    sys.exit(main())
