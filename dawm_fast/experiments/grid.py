"""A sweep's grid: tasks x algos x arms x seeds as jobs, one world-model job per (task, seed).

Every job is an ordinary `python -m dawm_fast.train` command run with the sweep directory as its
working directory, so every path in it (and in the run's config.json) is relative and a sweep
directory can be moved or copied to another machine:

    SWEEP/wm/<task>_seed<k>_<fingerprint>/   idm, world model, synthetic.npz (--until generation)
    SWEEP/rl/<task>_<algo>_<arm>_seed<k>/    one RL run; a DAWM run reads its world model's
                                             synthetic.npz (--world-model-dir), a plain run
                                             (synthetic ratio 0) never trains one
    SWEEP/logs/<job>.log                     each job's output
    SWEEP/sweep.json                         the settings every run shares (checked on re-runs)
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from dawm_fast.config import dict_differences
from dawm_fast.data.tasks import TASK_NAMES
from dawm_fast.run_progress import stages_done

# dawm: synthetic data with IDM actions; plain: synthetic ratio 0; dawm-bc / dawm-random: the
# action-label ablation (same world model, states and rewards; actions from a BC policy or
# uniform noise).
ARMS = ("dawm", "plain", "dawm-bc", "dawm-random")
# DAWM's and the field's D4RL locomotion table: three envs x three datasets.
LOCOMOTION = tuple(f"{env}-{kind}" for env in ("halfcheetah", "hopper", "walker2d")
                   for kind in ("medium", "medium-replay", "medium-expert"))

# Minutes per job on one worker, used by --dry-run until the sweep has finished jobs of its own to
# time (then their measured wall times are used). cpu: 2-core CPU, one thread per process, two
# workers (medians of the #18 program-1 sweeps, medium-replay tasks: world model with IDM and
# generation 13 min; 100k updates with evaluations: TD3+BC 15 min, IQL 22 min); paper: one H200
# with the fast backend (world model 2e6 x 5.7 ms; 1e6 updates x 0.36 / 0.55 ms plus evaluations).
ESTIMATED_MINUTES = {
    ("smoke", "wm"): 0.5, ("smoke", "td3bc"): 0.3, ("smoke", "iql"): 0.3,
    ("cpu", "wm"): 13.0, ("cpu", "td3bc"): 15.0, ("cpu", "iql"): 22.0,
    ("paper", "wm"): 190.0, ("paper", "td3bc"): 12.0, ("paper", "iql"): 15.0,
}


class GridError(ValueError):
    """A grid or sweep directory the user must fix: one line that says how."""


@dataclass(frozen=True)
class SweepSettings:
    """What every run of a sweep shares. A sweep directory holds runs of one setting; growing the
    grid (more tasks, algos, seeds) is fine, changing these is refused without --force."""
    preset: str
    backend: str = "reference"
    device: str | None = None
    overrides: tuple[str, ...] = ()     # --set KEY=VALUE, passed to every run

    def train_args(self) -> list[str]:
        args = ["--preset", self.preset, "--backend", self.backend]
        if self.device is not None:
            args += ["--device", self.device]
        for item in self.overrides:
            args += ["--set", item]
        return args


@dataclass
class Job:
    name: str                   # its directory under the sweep dir, e.g. "rl/hopper-medium_iql_..."
    kind: str                   # "wm" | "rl"
    task: str
    seed: int
    args: list[str]             # python -m dawm_fast.train arguments (paths relative to the sweep)
    algo: str | None = None
    arm: str | None = None
    depends_on: str | None = None   # the world-model job a DAWM run reads
    fingerprint: str | None = None  # world-model fingerprint (wm jobs and DAWM runs)

    @property
    def timing_kind(self) -> str:
        """Jobs that take about as long as each other: "wm", or the RL run's algo."""
        return self.kind if self.kind == "wm" else self.algo

    @property
    def log_name(self) -> str:
        return "logs/" + self.name.replace("/", "__") + ".log"

    def finished(self, sweep_dir: Path) -> bool:
        """A world-model job is finished when its generation stage is and synthetic.npz is there
        (an exported wm/ dir copied back says generation is done but has no synthetic data: the
        sweep reruns it and the pipeline redoes the missing stage), an RL job when its
        results.json exists."""
        run = sweep_dir / self.name
        if self.kind == "rl":
            return (run / "results.json").exists()
        return world_model_finished(run, stages_done(run))

    def estimated_minutes(self, preset: str) -> float:
        return ESTIMATED_MINUTES.get((preset, self.timing_kind), 10.0)


def world_model_finished(run: Path, done: dict) -> bool:
    """A world-model directory whose progress lists `done` has its synthetic data."""
    return "generation" in done and (run / "synthetic.npz").exists()


def expand_tasks(envs: list[str]) -> list[str]:
    tasks: list[str] = []
    for name in envs:
        for task in (LOCOMOTION if name == "locomotion" else (name,)):
            if task not in TASK_NAMES:
                raise GridError(f"unknown task {task!r}; valid: locomotion, "
                                f"{', '.join(TASK_NAMES)}")
            if task not in tasks:
                tasks.append(task)
    return tasks


def plan(tasks: list[str], algos: list[str], arms: list[str], seeds: list[int],
         settings: SweepSettings, fingerprint_of) -> list[Job]:
    """The jobs of a grid, world models first. `fingerprint_of(train_args)` returns the world-model
    fingerprint of the config those train arguments make (the train CLI's own parsing, so the
    sweep and the runs cannot disagree)."""
    from dawm_fast.config import ALGOS

    for arm in arms:
        if arm not in ARMS:
            raise GridError(f"unknown arm {arm!r}; valid: {', '.join(ARMS)}")
    for algo in algos:
        if algo not in ALGOS:
            raise GridError(f"unknown algo {algo!r}; valid: {', '.join(ALGOS)}")
    if not (tasks and algos and arms and seeds):
        raise GridError("the grid is empty: give at least one task, algo, arm and seed")
    base = settings.train_args()
    # Grouped by (task, seed), the world model first: engines launch jobs in this order, so each
    # group's runs finish early (a batch stopped midway leaves whole groups, not 9 world models
    # and no runs), and a DAWM run always comes after the world model it reads.
    jobs: list[Job] = []
    for task in tasks:
        for seed in seeds:
            common = ["--env", task, "--seed", str(seed)] + base
            if any(arm != "plain" for arm in arms):
                fp = fingerprint_of(common)
                name = f"wm/{task}_seed{seed}_{fp}"
                wm = Job(name, "wm", task, seed,
                         common + ["--out", name, "--until", "generation"], fingerprint=fp)
                jobs.append(wm)
            for algo in algos:
                for arm in arms:
                    name = f"rl/{task}_{algo}_{arm}_seed{seed}"
                    args = common + ["--algo", algo, "--out", name]
                    job = Job(name, "rl", task, seed, args, algo=algo, arm=arm)
                    if arm != "plain":
                        job.args += ["--world-model-dir", wm.name]
                        job.depends_on, job.fingerprint = wm.name, wm.fingerprint
                        if arm != "dawm":
                            job.args += ["--set", f"synthetic_actions={arm.split('-', 1)[1]}"]
                    else:   # plain: the same run with no synthetic data (applied after --set)
                        job.args += ["--set", "synthetic_ratio=0"]
                    jobs.append(job)
    return jobs


def saved_settings(sweep_dir: Path) -> dict | None:
    """The settings a sweep directory was made with (sweep.json); None for a new directory."""
    path = sweep_dir / "sweep.json"
    if not path.exists():
        return None
    try:
        saved = json.loads(path.read_text())["settings"]
        if not isinstance(saved, dict):
            raise TypeError
    except (OSError, ValueError, KeyError, TypeError):
        raise GridError(f"{path} is unreadable; delete it to start the sweep's record "
                        f"anew, or choose another --out") from None
    return saved


def check_settings(sweep_dir: Path, settings: SweepSettings, force: bool) -> None:
    """Refuse a sweep directory made with other settings (naming the difference) unless forced;
    record the settings on first use."""
    path = sweep_dir / "sweep.json"
    saved = saved_settings(sweep_dir)
    if saved is not None:
        now = dataclasses.asdict(settings)
        now["overrides"] = list(now["overrides"])
        diff = [d.replace(" vs ", " there vs ", 1) + " now"
                for d in dict_differences(saved, now)]
        if diff and not force:
            raise GridError(f"sweep directory {sweep_dir} was made with other settings "
                            f"({'; '.join(diff)}); use another --out, or --force to add runs of "
                            f"these settings to it")
        if not diff:
            return
    sweep_dir.mkdir(parents=True, exist_ok=True)
    from dawm_fast.run_io import write_json
    write_json(path, {"settings": dataclasses.asdict(settings)})


@dataclass
class JobOutcome:
    job: Job
    status: str                 # "done" | "skipped" (finished before) | "failed"
    wall_s: float = 0.0
    error: str | None = None
    resumed: bool = False       # started from a mid-stage checkpoint: ran only part of the job


def error_line(log_path: Path) -> str:
    """The line that says why a job failed: its last `error:` line, else its last line."""
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines()
                 if ln.strip()]
    except OSError:
        return f"no log at {log_path}"
    errors = [ln for ln in lines if ln.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1][:300]


@dataclass
class SweepSummary:
    outcomes: list[JobOutcome] = field(default_factory=list)

    def counts(self) -> dict[str, int]:
        c: dict[str, int] = {}
        for o in self.outcomes:
            c[o.status] = c.get(o.status, 0) + 1
        return c
