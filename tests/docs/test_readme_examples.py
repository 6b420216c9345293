"""READMEs that run: every command example of README.md and projects/*/README.md runs, scaled down.

The examples are read from the README text (fenced ``bash`` blocks; continuation lines joined, comments dropped,
``a; b`` split). Each one is scaled down by the small, explicit tables below (digits instead of files on disk, one
epoch, tiny grids and depths) and placeholders (``<train run id>``, ``runs:/<fit run id>/...``) are filled with
runs that earlier examples of the same README made, in a temporary MLflow store. An example the tables cannot map
fails the test with its README line, so a new or edited example must either run or be added, with a reason, to
SKIP. Each README is one test: its examples run in order and share their runs.
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
READMES = ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in ROOT.glob("projects/*/README.md"))
COMMAND = re.compile(r"^(geomlab|mlflow|make|mpiexec|\.venv/bin/|python|sudo|export|cat|curl|CUDA_VISIBLE_DEVICES)")

# -- what is not run, and why (matched against the start of the example) ----------------------------------------------
SKIP = {
    "make test": "runs this test suite itself",
    "make setup": "installs into the shared virtual environment",
    "make ui": "starts a long-running server",
    ".venv/bin/mlflow ui": "starts a long-running server",
    "mlflow ui": "starts a long-running server",
    "mlflow server": "starts a long-running server (PostgreSQL backend of a cluster)",
    "sudo ": "system administration (package install, database creation)",
    "curl ": "talks to a remote tracking server",
    "export MLFLOW_": "configures a remote tracking server or its credentials (cluster recipe)",
    "cat > hostfile": "writes a hostfile for a multi-host MPI job",
    ".venv/bin/mpiexec -f hostfile": "needs a real multi-host cluster",
    "export GEOMLAB_OPTUNA_STORAGE=postgresql": "points at the cluster's PostgreSQL storage",
    "geomlab sweep cone_geometry train --space projects/cone_geometry/spaces/teacher.yaml --n-trials 200": "the "
    "cluster recipe's worker (its storage is the cluster's PostgreSQL; the same sweep runs above on one machine)",
    ".venv/bin/pytest": "runs (part of) this test suite itself",
    ".venv/bin/python benchmarks/": "benchmarks take minutes on an idle machine (make bench runs them by hand)",
    "CUDA_VISIBLE_DEVICES=": "needs several GPUs",
}

# -- the scaling-down rewrite table: (pattern, replacement), applied in order to the joined command ------------------
REWRITE = [
    # the demo: its shortest form (one step) instead of all of them (minutes on 2 cores)
    (r"^make demo$", "mlflow run . -e demo -P steps=shared --env-manager local"),
    # data: the embedded digits instead of files under /data or ./data (regression sets stay)
    (r"--dataset (?!digits\b|sin\b|constant\b)\S+", "--dataset digits"),
    (r"-P dataset=(?!digits\b)\S+", "-P dataset=digits"),
    (r" --data-path \S+", ""),
    # models: hyperplane's vgg11 (torchvision's, 129 M parameters) writes a 1 GB snapshot per epoch: its LeNet here
    (r"^(geomlab hyperplane-bias train .*)--arch vgg11\b", r"\1--arch lenet"),
    # length: one epoch, a few trials, small grids, shallow nets
    (r"^(geomlab depth-limit fit .*)--epochs \d+", r"\1--epochs=20"),   # 20 steps: enough points for curve-fit
    (r"--epochs \d+", "--epochs 1"),
    (r"-P epochs=\d+", "-P epochs=1"),
    (r"--n-trials \d+", "--n-trials 2"),
    (r"-P n_trials=\d+", "-P n_trials=2"),
    (r"--runs \d+", "--runs 2"),
    (r"--snapshot-every \d+", "--snapshot-every 1"),
    (r"--steps 51\b", "--steps 5"),
    (r"--num-samples \d+", "--num-samples 200"),
    (r"--L (?!56\b)\d+", "--L 4"),
    (r"--dim \d+", "--dim 2"),
    (r"\bepoch_\d{3}\.pt\b", "epoch_001.pt"),
    # studies: the smoke preset (embedded digits), two depths, one seed
    (r"--scale (cpu|paper)\b", "--scale smoke"),
    (r"-P scale=\w+", "-P scale=smoke"),
    (r"--depths \S+", "--depths 8,32"),
    (r"--seeds \S+", "--seeds 1,2"),
    (r"mpiexec -n \d+", "mpiexec -n 2"),
    # a placeholder space file: the test writes it (see _space_file)
    (r"--space my_space\.yaml", "--space {space}"),
    # continuation of the previous example ("the same command again")
    (r"^(geomlab feature-amounts sweep) \.\.\.$", r"\1"),
]
# options added to a command (after the rewrite) when it does not set them: the project's defaults are full scale
APPEND = {
    "geomlab train": "--dataset digits --epochs 1",
    # --train-fraction: the paper's networks (VGG9, vgg11) on a fifth (a tenth) of the 1 437 digits
    "geomlab cone-geometry train": "--dataset digits --epochs 1 --train-fraction 0.2",
    "geomlab cone-geometry distill": "--epochs 1 --train-fraction 0.2",
    "geomlab cone-geometry distill-all": "--epochs 1 --train-fraction 0.2",
    "geomlab hyperplane-bias train": "--dataset digits --epochs 1 --lr 0.01 --train-fraction 0.1",
    "geomlab hyperplane-bias reinit": "--max-test 50",
    "geomlab depth-limit fit": "--epochs=20 --num-samples 200",
    "geomlab depth-limit resnet-cifar10": "--dataset digits --epochs 1 --train-fraction 0.05",
    "geomlab depth-limit landscape render": "--steps 5 --cell-size 5",
    "geomlab feature-amounts train": "--dataset digits --epochs 1 --width-multiplier 0.02 --patch-size 16 "
                                     "--split-cache ''",
    "geomlab feature-amounts sweep": "--dataset digits --epochs 1 --width-multiplier 0.02 --patch-size 16 "
                                     "--split-cache '' --stop 2",
    "geomlab feature-amounts optimize": "--dataset digits --epochs 1 --width-multiplier 0.02 --patch-size 16 "
                                        "--split-cache '' --storage sqlite:///{tmp}/optuna-fa.db",
    "geomlab sweep": "--storage sqlite:///{tmp}/optuna.db",
    # studies: the smoke preset, shortened further (tests/studies runs the smoke presets themselves end to end)
    "geomlab hyperplane-bias study": "--seeds 0 --epochs 1 --max-test 100",
    # undeclared -P parameters reach the command as --<name> <value>: out-dir keeps outputs out of the checkout
    # (commands without --out-dir, e.g. sweeps and studies, write to outputs/ beside the test's SQLite store)
    "mlflow run . -e train": "-P epochs=1 -P out-dir={tmp}/mlflow-run-out",
    "mlflow run projects/cone_geometry -e train": "-P train-fraction=0.2",
    "mlflow run . -e demo": "-P out-dir={tmp}/mlflow-run-out",
    "mlflow run . -e sweep": "-P storage=sqlite:///{tmp}/optuna-mlflow.db",
    "mlflow run projects/cone_geometry -e study": "-P teacher-epochs-total=1 -P teacher-epochs=0,1",
}
# placeholders: `<role run id>` is the newest run of the same project whose entry point is the role's
ROLES = {
    "train": "train", "teacher": "train", "student": "distill", "distill": "distill",
    "distill-all": "distill_all", "nesting": "nesting", "reinit": "reinit", "fit": "fit",
    "render": "landscape", "sweep": "sweep",
}
PLACEHOLDER = re.compile(r"<([\w-]+) run (ids?)(\.\.\.)?>")


@dataclass
class Example:
    readme: str
    line: int
    text: str

    def __str__(self) -> str:
        return f"{self.readme}:{self.line}: {self.text}"


def examples(readme: str) -> list[Example]:
    """The command examples of a README: fenced bash blocks, continuation lines joined, comments and heredoc bodies
    dropped, `a; b` split."""
    out: list[Example] = []
    block = False
    buf, start, heredoc = "", 0, None
    for i, raw in enumerate((ROOT / readme).read_text().splitlines(), 1):
        s = raw.strip()
        if s.startswith("```"):
            block = s == "```bash" if not block else False
            continue
        if not block:
            continue
        if heredoc:
            heredoc = None if s == heredoc else heredoc
            continue
        s = re.sub(r"(^|\s)#.*$", "", s).strip()
        if not s and not buf:
            continue
        buf, start = (f"{buf} {s}", start) if buf else (s, i)
        if buf.endswith("\\"):
            buf = buf[:-1].rstrip()
            continue
        m = re.search(r"<<\s*'?(\w+)'?", buf)
        if m:
            heredoc = m.group(1)
        for part in buf.split(";"):
            if part.strip():
                out.append(Example(readme, start, " ".join(part.split())))
        buf = ""
    return out


def skip_reason(ex: Example) -> str | None:
    return next((why for prefix, why in SKIP.items() if ex.text.startswith(prefix)), None)


def _options(spec: str) -> list[tuple[str, str]]:
    """'--a 1 --b --c=3 -P d=2' -> [('--a', '--a 1'), ('--b', '--b'), ('--c', '--c=3'), ('-P d=', '-P d=2')]."""
    return [(o.split("=")[0] + "=" if o.startswith("-P") else o.split()[0].split("=")[0], o)
            for o in re.findall(r"-P \S+|--\S+(?: (?!-)\S+)?", spec)]


def scale_down(text: str) -> str:
    for pat, rep in REWRITE:
        text = re.sub(pat, rep, text)
    for prefix in sorted(APPEND, key=len):
        if (text == prefix or text.startswith(prefix if prefix.endswith("/") else prefix + " ")) \
                and " --help" not in text:
            for name, opt in _options(APPEND[prefix]):
                if not re.search(rf"(^| ){re.escape(name)}( |=|$)" if not name.endswith("=") else re.escape(name),
                                 text):
                    text += " " + opt
    return text


def unmapped(ex: Example) -> str | None:
    """Why an example cannot be run by this test (None: it can)."""
    if skip_reason(ex):
        return None
    t = scale_down(ex.text)
    if not COMMAND.match(t):
        return "not a command this test knows how to run (geomlab, mlflow run, make, mpiexec, .venv/bin/...)"
    for m in re.finditer(r"<[^>]*>", t):
        pm = PLACEHOLDER.fullmatch(m.group(0))
        if not pm or pm.group(1) not in ROLES:
            return f"placeholder {m.group(0)} is not in the test's ROLES table"
    if re.search(r"(^| )/data\b|\./data\b", t):
        return "reads files under a data folder the test does not have (add a rewrite)"
    for pat, what in [(r"--epochs (?!1\b)", "epochs"), (r"--n-trials (?!2\b)", "trials"),
                      (r"--scale (?!smoke\b)", "study preset")]:
        if re.search(pat, t):
            return f"full-scale {what} left after the rewrite table"
    return None


@pytest.mark.parametrize("readme", READMES)
def test_every_example_is_mapped(readme):
    """Every example of every README is either run (scaled down by the tables) or skipped for a stated reason."""
    exs = examples(readme)
    assert exs, f"{readme}: no command examples found (is the bash fence still ```bash?)"
    bad = [f"{ex}\n    -> {why}" for ex in exs if (why := unmapped(ex))]
    assert not bad, "README examples this test cannot run (fix the README or the tables in " \
                    f"{Path(__file__).name}):\n" + "\n".join(bad)


def test_scale_down_table():
    """The rewrite table does what it says on the shapes the READMEs use."""
    assert scale_down("geomlab cone-geometry train --arch VGG9 --dataset cifar10 --data-path /data --epochs 75") \
        == "geomlab cone-geometry train --arch VGG9 --dataset digits --epochs 1 --train-fraction 0.2"
    assert scale_down("geomlab feature-amounts train --variant 0").startswith(
        "geomlab feature-amounts train --variant 0 --dataset digits --epochs 1")
    assert scale_down("geomlab depth-limit fit --dataset sin --L 100 --epochs 200") == \
        "geomlab depth-limit fit --dataset sin --L 4 --epochs=20 --num-samples 200"
    assert scale_down("geomlab depth-limit landscape render 0123 --steps 51") == \
        "geomlab depth-limit landscape render 0123 --steps 5 --cell-size 5"
    assert scale_down("geomlab sweep --help") == "geomlab sweep --help"
    assert scale_down("mlflow run . -e train -P arch=mlp").endswith(" -P epochs=1 -P out-dir={tmp}/mlflow-run-out")
    assert scale_down("geomlab cone-geometry distill --epochs 20") \
        == "geomlab cone-geometry distill --epochs 1 --train-fraction 0.2"
    assert scale_down("geomlab depth-limit fit --dataset sin").endswith("--epochs=20 --num-samples 200")
    assert unmapped(Example("R", 1, "geomlab x --run <frobnicated run id>"))
    assert unmapped(Example("R", 1, "frobnicate --now"))


# -- running ------------------------------------------------------------------------------------------------------
class Session:
    """Runs one README's examples in order in a temporary MLflow store, filling placeholders from its runs."""

    def __init__(self, tmp: Path, uri: str):
        from mlflow.tracking import MlflowClient

        self.tmp, self.uri = tmp, uri
        self.client = MlflowClient(tracking_uri=uri)
        self.env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(ROOT),
                    "PATH": f"{ROOT / '.venv' / 'bin'}:{os.environ.get('PATH', '')}", "OMP_NUM_THREADS": "1",
                    "GEOMLAB_NO_PROGRESS": "1", "MLFLOW_DISABLE_TELEMETRY": "true"}
        for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_ID", "MLFLOW_EXPERIMENT_NAME"):
            self.env.pop(var, None)
        # `mlflow run` runs from the repository root: the experiments it would create there would get ./mlruns of
        # the checkout as their artifact root; they are made here first, with their artifacts in tmp
        names = {"geomlab", "demo", *(p.name for p in (ROOT / "projects").iterdir() if (p / "MLproject").is_file())}
        for name in sorted(names):
            if self.client.get_experiment_by_name(name) is None:
                self.client.create_experiment(name, artifact_location=str(tmp / "mlruns" / name))
        (tmp / "projects").symlink_to(ROOT / "projects")  # relative paths in examples (spaces) resolve from tmp
        self.space = tmp / "space.yaml"
        self.space.write_text("params:\n  lr: {type: float, low: 1.0e-3, high: 1.0e-1, log: true}\n"
                              "fixed:\n  dataset: digits\n  epochs: 1\n  split: 0.1\n  arch: lenet_small\n")

    def scaled_space(self, rel: str, command: str = "") -> str:
        """A copy of a space file whose fixed options follow the tables (digits, one epoch, the swept command's
        APPEND options where the space does not set them)."""
        import yaml

        doc = yaml.safe_load((ROOT / rel).read_text())
        fixed = doc.setdefault("fixed", {})
        if fixed.get("dataset") not in (None, "digits", "sin", "constant"):
            fixed["dataset"] = "digits"
        fixed.pop("data_path", None)
        for name, opt in _options(APPEND.get(command, "")):
            key = name.lstrip("-").replace("-", "_")
            if key not in fixed and key not in doc.get("params", {}) and key != "split_cache":
                fixed[key] = yaml.safe_load(opt.split(" ", 1)[1]) if " " in opt else True
        if "epochs" in fixed:
            fixed["epochs"] = 1
        out = self.tmp / ("scaled-" + rel.replace("/", "-"))
        out.write_text(yaml.safe_dump(doc))
        return str(out)

    def runs(self, project: str, entry_point: str) -> list[str]:
        exps = [e.experiment_id for e in self.client.search_experiments()]
        found = self.client.search_runs(exps, f"tags.project = '{project}' and tags.entry_point = '{entry_point}'",
                                        order_by=["attributes.start_time DESC"], max_results=50)
        if entry_point == "sweep":  # a project's own sweep (feature_amounts' variants) before an Optuna study's parent
            found = sorted(found, key=lambda r: "optuna_study" in r.data.tags)
        top = [r.info.run_id for r in found if "mlflow.parentRunId" not in r.data.tags]
        nested = [r.info.run_id for r in found if "mlflow.parentRunId" in r.data.tags]
        return top or nested

    def fill(self, text: str, project: str, where: Example) -> str:
        used: dict[str, int] = {}

        def one(m: re.Match) -> str:
            role, plural, more = m.group(1), m.group(2) == "ids", m.group(3)
            ids = self.runs(project, ROLES[role])
            if not ids:
                raise LookupError(f"{where}: no {ROLES[role]!r} run of {project} in this README for {m.group(0)}")
            if plural or more:
                return " ".join(ids[:2])
            k = used.get(role, 0)
            used[role] = k + 1
            return ids[min(k, len(ids) - 1)]

        text = PLACEHOLDER.sub(one, text)
        sw = (re.match(r"geomlab sweep (\w+) ([\w-]+)", text)
              or re.match(r"mlflow run \S+ -e sweep -P project=(\w+) -P entry=([\w-]+)", text))
        command = f"geomlab {sw.group(1).replace('_', '-')} {sw.group(2)}" if sw else ""
        text = re.sub(r"(--space |-P space=)(projects/\S+\.yaml)",
                      lambda m: m.group(1) + self.scaled_space(m.group(2), command), text)
        return re.sub(r"(^| )\.\.\.(?= |$)", " ", text).replace("{space}", str(self.space)) \
            .replace("{tmp}", str(self.tmp))

    def run(self, ex: Example) -> tuple[str, int, str]:
        text = scale_down(ex.text)
        words = text.split()
        if text.startswith("mlflow run") or text.startswith(".venv/bin/mlflow run"):
            target = words[2] if words[0] == "mlflow" else words[2]
            project = Path(target).name if target != "." else "shared"
        elif text.startswith("geomlab ") and len(words) > 1 and not words[1].startswith("-") and \
                (ROOT / "projects" / words[1].replace("-", "_")).is_dir():
            project = words[1].replace("-", "_")
        elif "shared.cli" in words:
            project = words[words.index("shared.cli") + 1].replace("-", "_")
        else:
            project = "shared"
        cmd = self.fill(text, project, ex)
        argv = shlex.split(cmd)
        if argv[0] == "geomlab":  # in-process, as tests/conftest.py's `cli` (saves an interpreter start each)
            import mlflow
            from typer.testing import CliRunner

            from shared.cli import app

            r = CliRunner().invoke(app, argv[1:])
            while mlflow.active_run():
                mlflow.end_run()
            err = "" if r.exception is None or isinstance(r.exception, SystemExit) else repr(r.exception)
            return cmd, r.exit_code, (r.stdout + r.stderr + err)[-1500:]
        if argv[0] == "mpiexec":
            argv[0] = str(ROOT / ".venv" / "bin" / "mpiexec")
        elif argv[0] in ("mlflow", "python"):
            argv[0] = str(ROOT / ".venv" / "bin" / argv[0])
        for i, a in enumerate(argv):
            if a.startswith(".venv/bin/"):
                argv[i] = str(ROOT / a)
        # `mlflow run <folder>` resolves the folder from the working directory: run those from the repository root
        cwd = ROOT if "mlflow" in Path(argv[0]).name and argv[1:2] == ["run"] else self.tmp
        p = subprocess.run(argv, cwd=cwd, env=self.env, capture_output=True, text=True, timeout=600)
        return cmd, p.returncode, (p.stdout + p.stderr)[-1500:]


@pytest.mark.slow
@pytest.mark.timeout(1800)  # one README's examples in sequence: minutes when the 2 cores are shared
@pytest.mark.parametrize("readme", READMES)
def test_readme_examples_run(readme, mlflow_store, tmp_path):
    """Run every mapped example of one README in order; each must exit 0."""
    s = Session(tmp_path, mlflow_store)
    failures: list[str] = []
    todo = [ex for ex in examples(readme) if not skip_reason(ex) and not unmapped(ex)]  # unmapped: see above
    for attempt in (1, 2):  # an example whose runs come later in the README is tried again after the others
        later = []
        for ex in todo:
            t0 = time.perf_counter()
            try:
                cmd, rc, out = s.run(ex)
            except LookupError as e:
                (later if attempt == 1 else failures).append(ex if attempt == 1 else str(e))
                continue
            print(f"{ex.readme}:{ex.line}: {time.perf_counter() - t0:.1f} s  {cmd}", file=sys.stderr)
            if rc != 0:
                failures.append(f"{ex}\n    ran: {cmd}\n    exit code {rc}\n    " + out.replace("\n", "\n    "))
        todo = later
    assert not failures, f"{len(failures)} example(s) of {readme} failed:\n" + "\n".join(failures)


def _commands(group, path=()):
    """(path, click command) of every command of the `geomlab` tree."""
    import click

    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        if hasattr(cmd, "list_commands"):  # a group (typer ships its own click: no isinstance on click.Group)
            yield from _commands(cmd, path + (name,))
        elif cmd is not None:
            yield path + (name,), cmd


def test_dataset_options_have_the_same_names_everywhere():
    """The root README's "Dataset options of every command that trains" exist on every command that trains (takes
    --dataset and --epochs); the options are read from the README's sentence."""
    import typer

    from shared.cli import app

    text = " ".join((ROOT / "README.md").read_text().split())
    m = re.search(r"Dataset options of every command that trains[^:]*:(.*?)Where the project's pipeline allows", text)
    assert m, "README.md: the sentence 'Dataset options of every command that trains ...' is gone"
    assert "`study`" in m.group(0), "README.md: the dataset-option sentence no longer says how studies differ"
    promised = set(re.findall(r"`(--[a-z-]+)", m.group(1)))
    assert {"--noise", "--split", "--subsample-classes"} <= promised
    missing, seen = [], []
    for path, cmd in _commands(typer.main.get_command(app)):
        seen.append(path)
        names = {o for p in cmd.params for o in getattr(p, "opts", []) + getattr(p, "secondary_opts", [])}
        study = path[-1] == "study"  # a paper's whole experiment: its presets set its runs' data (README says so)
        if {"--dataset", "--epochs"} <= names and not study and (lost := promised - names):
            missing.append(f"geomlab {' '.join(path)}: {sorted(lost)}")
    assert ("cone-geometry", "train") in seen and ("depth-limit", "fit") in seen
    assert not missing, "commands that train without the README's dataset options:\n" + "\n".join(missing)
