"""lamflow: pretrain, finetune and distil DeePMD-kit large atomic models.

Every bad input ends in one line on stderr and exit code 2 (``--debug`` shows the traceback);
a failing library call (dp, LAMMPS) ends with its log's tail and exit code 1; a run that ends
short of what its config asked (no convergence by max_iterations, a dataset refused by
verification) exits 3 (see :data:`EXIT_INCOMPLETE`).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import logging
import os
import signal
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lamflow.steps.errors import InputError, StepFailed, StepInterrupted

from lamflow.flows.core import stopping

from lamflow.flows.core.run_lock import run_lock


def _parse_sets(sets: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in sets:
        key, sep, value = item.partition("=")
        if not sep:
            raise InputError("--set", f"expected key=value, got {item!r}")
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = yaml.safe_load(value)
    return out


def cmd_step(args: argparse.Namespace) -> int:
    """One step through the runner, as pods and batch jobs run it: validated, recorded next to
    its output (a second call with the same inputs returns the record), mirrored to the
    artifact store when ``LAMFLOW_ARTIFACTS`` is set."""
    from lamflow.steps.dp_input import deep_merge

    from lamflow.flows.core.config import read_mapping
    from lamflow.flows.core.execute import execute, validated
    from lamflow.flows.core.resources import Resources

    raw = read_mapping(Path(args.params)) if args.params else {}
    raw = deep_merge(raw, _parse_sets(args.set or []))
    params = validated(args.name, raw)
    resources = Resources(threads=args.threads) if args.threads else None
    record = execute(args.name, params, resources)
    text = record.result.model_dump_json(indent=2)
    if args.result:
        Path(args.result).write_text(text)
    print(text)
    return 0


def cmd_templates(args: argparse.Namespace) -> int:
    from lamflow.steps.dp_input import load_template, template_names

    if args.name:
        print(json.dumps(load_template(args.name), indent=2))
    else:
        print("\n".join(template_names()))
    return 0


def quiet_libraries(debug: bool) -> None:
    """Keep the terminal for lamflow's own progress: Prefect and deepmd-kit talk at WARNING+.

    Prefect's telemetry is off too (these machines often have no route out, and its failed
    attempts only add noise); users can set the variables themselves to override.
    """
    # Prefect's ephemeral API server (embedded runs) must start within 20 s by default; on a
    # machine whose cores are busy with MD or training it can take longer, and the run then dies
    # before its first step ("Timed out while attempting to connect to ephemeral Prefect API server").
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    if debug:
        return
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # ...but the run loggers, which feed the Prefect UI's Logs tab (and not this terminal: they do
    # not propagate, below), keep INFO: each step says there whether it ran or was read back.
    # Environment, not code, so that `lamflow prefect up`'s server, worker and flow runs inherit it.
    for name in ("FLOW_RUNS", "TASK_RUNS"):
        os.environ.setdefault(f"PREFECT_LOGGING_LOGGERS_PREFECT_{name}_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DP_INFER_BATCH_SIZE", "4096")
    for var in ("OMP_NUM_THREADS", "DP_INTRA_OP_PARALLELISM_THREADS"):
        os.environ.setdefault(var, str(os.cpu_count() or 1))
    os.environ.setdefault("DP_INTER_OP_PARALLELISM_THREADS", "1")
    for name in ("deepmd", "prefect"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # SevenNet says on every load that it runs without its optional CUDA kernels
    warnings.filterwarnings("ignore", message="No tensor product accelerator")
    # dpdata's extxyz reader, on every frame ASE wrote with per-atom energies or charges: lamflow
    # reads the frame's energy and forces, and the lines bury an error line under library noise
    warnings.filterwarnings("ignore", message="Skipping unknown per-atom property")
    # ASE's extxyz reader, on every slab ase.build wrote (its adsorption sites are a dict): the
    # structure is read all the same
    warnings.filterwarnings("ignore", message="Skipping unhashable information")
    # CHGNet 0.4.2 on every structure it converts (its own code's tensor-to-float)
    warnings.filterwarnings("ignore", message="Converting a tensor with requires_grad=True to a scalar")
    # A failed step's traceback stays in the Prefect UI (the run loggers' API handler), not on
    # the terminal, where lamflow says what failed in one line.
    for name in ("prefect.flow_runs", "prefect.task_runs"):
        logging.getLogger(name).propagate = False


#: exit codes of the pipelines: 0 done as asked, 1 a step failed, 2 bad input, 3 finished short
#: of what the config asked: stopped at max_iterations without meeting the convergence rule (the
#: student is delivered), or a dataset of ``lamflow version`` refused by verification (the other
#: versions are trained); a script or a scheduler must be able to tell either from a complete
#: run. 128 + the signal when stopped by one (130 SIGINT, 143 SIGTERM)
EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INCOMPLETE = 0, 1, 2, 3


def run_exit_code(report: Any) -> int:
    """The exit code of a finished run from its report (a distillation's, the LAM pipeline's
    whose last stage is one, or a version history)."""
    distill = getattr(report, "distill", None)
    status = distill.get("status") if isinstance(distill, dict) else getattr(report, "status", None)
    incomplete = status in ("max_iterations", "inaccurate") or getattr(report, "rejected", None)
    return EXIT_INCOMPLETE if incomplete else EXIT_OK


def cmd_run(args: argparse.Namespace) -> int:
    """``lamflow distill`` / ``lamflow lam``: a pipeline on an engine, with live progress."""
    from rich.console import Console

    from lamflow.flows.engines import ENGINES, Hooks
    from lamflow.flows.pipelines import load_any
    from lamflow.flows.report.progress import Progress

    pipeline, cfg = load_any(Path(args.config), expect=args.command)
    if getattr(args, "max_iterations", None):
        cfg = cfg.model_copy(update={"max_iterations": args.max_iterations})
    quiet_libraries(args.debug)
    console = Console(width=None if sys.stdout.isatty() else 140)
    run_dir = cfg.run_dir(args.workdir)
    _check_writable(run_dir)
    engine = ENGINES[args.engine]
    with run_lock(run_dir):
        if not engine.in_process:  # steps run as processes of their own: no live progress here
            report = engine.run(pipeline, cfg, run_dir)
            console.print(f"{engine.name} workflow in {Path(run_dir).resolve() / engine.name}")
        else:
            with Progress(console) as progress:
                report = engine.run(pipeline, cfg, run_dir, Hooks(progress.on_batch, progress.on_iteration,
                                                                  progress.on_done))
    pipeline.summarize(console, cfg, report)
    return run_exit_code(report)


def _check_writable(run_dir: Path) -> None:
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise InputError(str(run_dir), f"run directory is not writable ({exc.strerror})") from None


def cmd_status(args: argparse.Namespace) -> int:
    """Where a run stands, from its run directory alone (any engine, running or not): the
    iteration table, then the steps finished (and how long they computed), those under way or
    interrupted (an ``NAME.partial`` folder without a record), and the MD tasks that failed.
    Given a dflow/Argo workflow's id instead: the workflow's phase and its step pods by key."""
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 160)
    run_dir = Path(args.run_dir)
    if run_dir.is_dir():
        _print_run_status(console, run_dir)
    elif args.workdir or args.host or os.environ.get("LAMFLOW_ARGO_HOST"):
        _print_workflow_status(console, args)
    else:
        raise InputError(str(run_dir), "no such run directory (a workflow id needs --workdir for dflow's debug "
                         "mode, or --host / LAMFLOW_ARGO_HOST for Argo)")
    return 0


def _print_workflow_status(console: Any, args: argparse.Namespace) -> None:
    """A workflow's phase, its run directory's status when it is here, and its step pods."""
    from lamflow.flows.engines.dflow.engine import workflow_state

    workdir = Path(args.workdir) if args.workdir else None
    state = workflow_state(args.run_dir, workdir, None if workdir else _argo_settings(args))
    console.print(f"workflow {state.workflow_id}: {state.status} (run directory {state.run_dir})")
    if state.run_dir.is_dir():  # debug mode, or the shared volume mounted here
        _print_run_status(console, state.run_dir)
    done = [s for s in state.steps if s.phase == "Succeeded"]
    console.print(f"step pods finished: {len(done)} ({sum(s.cached for s in done)} read back from their records)")
    for s in state.steps:
        if s.phase != "Succeeded":
            console.print(f"{'failed' if s.phase in ('Failed', 'Error') else s.phase.lower()}: {s.key} ({s.kind})")


def _print_run_status(console: Any, run_dir: Path) -> None:
    from lamflow.flows.pipelines.distill.records import DistillReport, report_path
    from lamflow.flows.report.distill import table

    candidate = report_path(run_dir)
    if (run_dir / "versions.json").is_file():  # a `lamflow version` run: its history so far
        _print_history(console, run_dir)
    elif candidate is not None:
        report = DistillReport.from_json(candidate)
        console.print(table(report))
        console.print(f"status: {report.status}")
    records = [json.loads(p.read_text()) for p in sorted(run_dir.rglob("*.result.json"))]
    seconds = sum(r.get("seconds", 0.0) for r in records)
    console.print(f"finished steps: {len(records)} ({seconds:,.0f} s of compute)")
    unfinished = sorted(p for p in run_dir.rglob("*.partial") if not p.with_suffix(".result.json").exists())
    for path in unfinished:
        age = time.time() - path.stat().st_mtime
        console.print(f"running or interrupted: {path.relative_to(run_dir)} (last written {age:,.0f} s ago)")
    for status in sorted(run_dir.rglob("task.*/status.json")):
        task = json.loads(status.read_text())
        if task.get("status") == "failed":
            console.print(f"failed MD task: {status.parent.relative_to(run_dir)}: {task.get('reason', '')[:160]}")


def cmd_report(args: argparse.Namespace) -> int:
    """A run's table and summary, its HTML page, and where its Prefect flow run shows them."""
    from rich.console import Console

    from lamflow.flows.engines.prefect.artifacts import read_link

    link = read_link(Path(args.run_dir))
    if (Path(args.run_dir) / "versions.json").is_file():  # a `lamflow version` run: its history
        from lamflow.flows.report.versions import render_versions_html

        history = _print_history(Console(width=None if sys.stdout.isatty() else 200), Path(args.run_dir))
        print(f"html: {render_versions_html(history, Path(args.run_dir))}")
        if link:
            print(link)
        return 0

    from lamflow.flows.pipelines.distill.records import find_report
    from lamflow.flows.report.distill import summarize, table
    from lamflow.flows.report.html import render_html

    candidate, report = find_report(Path(args.run_dir))
    page = render_html(report, candidate.parent)
    console = Console(width=None if sys.stdout.isatty() else 160)
    console.print(table(report))
    summarize(console, None, report)
    console.print(f"html: {page}")
    if link:
        console.print(link, markup=False, soft_wrap=True)
    return 0


def cmd_versions(args: argparse.Namespace) -> int:
    """The version history of a ``lamflow version`` run: a table, or its ``versions.json``."""
    from rich.console import Console

    from lamflow.flows.pipelines.version.history import read_history

    if args.json:
        print(read_history(Path(args.run_dir)).model_dump_json(indent=2))
        return 0
    _print_history(Console(width=None if sys.stdout.isatty() else 200), Path(args.run_dir))
    return 0


def _print_history(console: Any, run_dir: Path) -> Any:
    """A version run's history as ``lamflow versions``, ``status`` and ``report`` print it:
    the table, the refused datasets, the status; returns the history read."""
    from lamflow.flows.pipelines.version.history import read_history
    from lamflow.flows.report.versions import history_table, refusals

    history = read_history(run_dir)
    console.print(history_table(history))
    for line in refusals(history):
        console.print(line, markup=False)
    console.print(f"status: {history.status}")
    return history


def _argo_settings(args: argparse.Namespace):
    from lamflow.flows.engines.dflow.engine import ArgoSettings

    return ArgoSettings.from_env(host=args.host, token=args.token, namespace=args.namespace,
                                 runs_claim=args.runs_claim, image_pull_secrets=args.image_pull_secret,
                                 parallelism=args.parallelism, ssh_secret=getattr(args, "ssh_secret", None))


def cmd_export(args: argparse.Namespace) -> int:
    from lamflow.flows.engines.dflow.engine import RUNS_MOUNT, export
    from lamflow.flows.pipelines import load_any

    pipeline, cfg = load_any(Path(args.config))
    flow = pipeline.name
    run_dir = Path(args.workdir or f"{RUNS_MOUNT}/{cfg.name}")
    settings = _argo_settings(args)
    cfg, staged = _staged(args, cfg, run_dir, settings)
    text = yaml.safe_dump(export(flow, cfg, run_dir, settings, staged), sort_keys=False)
    if args.output:
        Path(args.output).write_text(text)
        print(f"{args.output}: Argo Workflow of the {flow} flow (run directory {run_dir} on volume {settings.runs_claim})")
    else:
        print(text)
    return 0


def _staged(args: argparse.Namespace, cfg: Any, run_dir: Path, settings: Any) -> tuple[Any, Any]:
    """When staging (``submit`` by default, ``export --stage``): the config pointing into
    ``RUN_DIR/inputs`` and the uploaded artifact of the files it names (see
    :mod:`lamflow.flows.engines.dflow.staging`); else as given."""
    if not args.stage:
        return cfg, None
    from lamflow.flows.engines.dflow.engine import dflow_mode
    from lamflow.flows.engines.dflow.staging import stage_config, upload_inputs

    if not settings.s3.get("endpoint"):
        opt_out = "--no-stage" if args.command == "submit" else "no --stage"
        raise InputError("--stage", "uploads the inputs to Argo's artifact repository: set LAMFLOW_S3_ENDPOINT, "
                         "LAMFLOW_S3_ACCESS_KEY, LAMFLOW_S3_SECRET_KEY and LAMFLOW_S3_BUCKET_NAME, or give "
                         f"{opt_out} when the config's paths are already the pods' paths")
    cfg, files = stage_config(cfg, run_dir)
    if not files:
        return cfg, None
    settings.apply()
    try:
        with dflow_mode("default"):
            artifact = upload_inputs(files)
    except Exception as exc:  # unreachable endpoint, wrong keys, no bucket: before anything is submitted
        raise InputError("--stage", f"could not upload the inputs to {settings.s3['endpoint']} "
                         f"({type(exc).__name__}: {str(exc)[:200]})") from None
    print(f"staged {len(files)} input(s) as {run_dir}/inputs: " + ", ".join(files), file=sys.stderr)
    return cfg, artifact


def cmd_submit(args: argparse.Namespace) -> int:
    from lamflow.flows.engines.dflow.engine import RUNS_MOUNT, submit
    from lamflow.flows.pipelines import load_any

    pipeline, cfg = load_any(Path(args.config))
    flow = pipeline.name
    run_dir = Path(args.workdir or f"{RUNS_MOUNT}/{cfg.name}")
    settings = _argo_settings(args)
    cfg, staged = _staged(args, cfg, run_dir, settings)
    workflow_id = submit(flow, cfg, run_dir, settings, staged)
    print(f"submitted {workflow_id}; watch it in the Argo UI; after a failure: lamflow resume {workflow_id}")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from lamflow.flows.engines.dflow.engine import pod_error, resume

    quiet_libraries(args.debug)
    if args.workdir:  # debug mode drives the run directory from here: one run at a time
        with run_lock(Path(args.workdir)):
            run = resume(args.workflow_id, Path(args.workdir), None, args.from_iteration)
    else:
        run = resume(args.workflow_id, None, _argo_settings(args), args.from_iteration)
    print(f"workflow {run.workflow_id} (resumed from {args.workflow_id}): {run.status}")
    if run.status in ("Succeeded", "Running", "Pending"):
        return 0
    error = pod_error(run) if args.workdir else None  # on Argo: `lamflow status` names the failed pods
    raise StepFailed(error or f"see `lamflow status {run.workflow_id}`")


def cmd_config(args: argparse.Namespace) -> int:
    """The schema of a pipeline's config, or a config checked as a run would check it (preflight:
    files, structures, the teacher, the DeePMD-kit inputs) without running anything."""
    from lamflow.flows.pipelines import PIPELINES, load_any

    if args.schema:
        print(json.dumps(PIPELINES[args.pipeline].config.model_json_schema(), indent=2))
        return 0
    if args.reference:
        from lamflow.flows.report.reference import render

        print(render(), end="")
        return 0
    if args.from_dpgen2:
        return _from_dpgen2(Path(args.from_dpgen2), Path(args.output) if args.output else None)
    if not args.check:
        raise InputError("config", "give --schema, --reference, --check FILE or --from-dpgen2 FILE")
    pipeline, cfg = load_any(Path(args.check))
    pipeline.preflight(cfg)
    print(f"{args.check}: valid {pipeline.name} config")
    return 0


def _from_dpgen2(source: Path, output: Path | None) -> int:
    """A dpgen2 distillation input as a lamflow distill config (to ``output``, else stdout), with
    what did not translate as comments in it and lines on stderr."""
    import yaml

    from lamflow.flows.core.config import read_mapping
    from lamflow.flows.pipelines.distill.from_dpgen2 import translate

    out_dir = (output.parent if output else Path.cwd()).resolve()
    if not out_dir.is_dir():
        raise InputError(f"-o {output}", f"folder not found: {out_dir}")
    t = translate(read_mapping(source), source.resolve(), out_dir)
    header = [f"# lamflow distill config, from the dpgen2 input {source} (lamflow config --from-dpgen2)"]
    header += ["# not translated as it was:"] + [f"#   - {n}" for n in t.notes] if t.notes else []
    text = "\n".join(header) + "\n" + yaml.safe_dump(t.config, sort_keys=False)
    if output:
        output.write_text(text)
    else:
        print(text, end="")
    for n in t.notes:
        print(f"note: {n}", file=sys.stderr)
    if output:
        print(f"wrote {output}; check it with: lamflow config --check {output}", file=sys.stderr)
    return 0


def cmd_dataset_check(args: argparse.Namespace) -> int:
    """Every problem of the datasets, one line each; exit 2 when any is an error (the data would
    spoil a training), 0 with warnings only."""
    from lamflow.steps.check_data import CheckDataParams, run

    from lamflow.flows.core.errors import one_line

    try:
        params = CheckDataParams(paths=args.paths, type_map=args.type_map, fmt=args.fmt)
    except ValidationError as exc:
        raise InputError("dataset check", one_line(exc, model=CheckDataParams)) from None
    result = run(params)
    if args.json:
        print(json.dumps({**result.model_dump(mode="json"), "ok": not result.errors}, indent=2))
    else:
        for d in result.datasets:
            print(f"{d.path}: {d.formula}, {d.n_frames} frames")
        for problem in result.problems:
            print(problem.line(), file=sys.stderr if problem.severity == "error" else sys.stdout)
        print(f"{len(result.datasets)} systems, {sum(d.n_frames for d in result.datasets)} frames: "
              f"{len(result.errors)} errors, {len(result.warnings)} warnings")
    return EXIT_BAD_INPUT if result.errors else 0


def cmd_package(args: argparse.Namespace) -> int:
    from lamflow.flows.deploy.package import package, package_version

    from lamflow.flows.core.artifact_store import ENV_URL, ArtifactStore

    out = Path(args.output) if args.output else Path(args.run_dir) / "package"
    store = ArtifactStore.from_env() if args.upload else None
    if args.upload and store is None:  # before any work: say where it would have gone
        raise InputError("--upload", f"set {ENV_URL} (e.g. s3://bucket/prefix) to say where to upload")
    if not args.student and ((Path(args.run_dir) / "versions.json").is_file() or args.version is not None
                             or args.head):
        v = package_version(Path(args.run_dir), out, args.version, args.head)
        print(f"{out}: {v.model} ({', '.join(v.type_map)}; version {v.version}, branch {v.head}; "
              f"{'compressed' if v.compressed else 'not compressed'} ({v.compression})), model-card.json, README.md, "
              "in.lammps, md_ase.py")
        key = f"packages/{v.name}-v{v.version}-{v.head}"
    else:
        card = package(Path(args.run_dir), out)
        rmse = "-" if card.rmse_f_vs_teacher is None else f"{card.rmse_f_vs_teacher:.4f} eV/Å"
        print(f"{out}: {card.model} ({', '.join(card.type_map)}; iteration {card.iteration}, {card.status}; "
              f"force RMSE vs teacher {rmse}), model-card.json, README.md, in.lammps, md_ase.py")
        key = f"packages/{card.name}-student-iter{card.iteration:03d}"
    if store is not None:
        print(f"uploaded to {store.upload(out, key)}")
    return 0


def cmd_prefect_up(args: argparse.Namespace) -> int:
    from lamflow.flows.engines.prefect.server import LocalPrefect

    local = LocalPrefect(project=Path(args.project).resolve(), home=Path(args.home).resolve(), port=args.port)
    # a `kill`/`timeout` stops the server and worker too, as Ctrl-C does
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    print(f"starting Prefect server on {local.ui_url} (state: {local.home}) ...", flush=True)
    local.up()
    print(f"""Prefect UI:   {local.ui_url}
deployments:  distill/local, lam/local, version/local, step/local (pool 'local', worker running here)
              distill/k8s-gpu, lam/k8s-gpu, version/k8s-gpu, step/k8s-gpu (pool 'k8s-gpu': start its worker
              in the cluster)
in another shell:
  export PREFECT_API_URL={local.api_url}
  prefect deployment run 'distill/local' -p config=$PWD/examples/cu-emt/config.yaml
Ctrl-C stops the server and the worker (logs in {local.home}).""", flush=True)
    try:
        while all(p.poll() is None for p in local.processes):
            time.sleep(1)
        print("lamflow: a Prefect process exited; see the logs above", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        local.down()


def cmd_prefect_retry(args: argparse.Namespace) -> int:
    from prefect.client.orchestration import get_client

    from lamflow.flows.engines.prefect.server import retry_flow_run

    with get_client(sync_client=True) as client:
        retry_flow_run(client, args.flow_run_id)
    print(f"flow run {args.flow_run_id} scheduled again: finished steps will be read back, the rest run")
    return 0


def cmd_prefect_job(args: argparse.Namespace) -> int:
    from lamflow.flows.engines.prefect.k8s import deployment_job_variables, render_job

    variables = deployment_job_variables(Path(args.prefect_yaml), args.deployment)
    variables.update(_parse_sets(args.set or []))
    print(yaml.safe_dump(render_job(variables, flow_run_name=args.deployment.replace("/", "-")), sort_keys=False))
    return 0


STAGE_HELP = ("upload every file the config names to Argo's artifact repository (LAMFLOW_S3_*) and point the "
              "config at RUN_DIR/inputs, where the workflow's first step puts them: no path of this machine "
              "in the manifest")


def build_parser() -> argparse.ArgumentParser:
    from lamflow.steps.registry import STEPS

    from lamflow.flows.engines import ENGINES
    from lamflow.flows.pipelines import PIPELINES

    parser = argparse.ArgumentParser(
        prog="lamflow", description=__doc__.splitlines()[0],
        epilog="exit codes: 0 done (distill/lam: converged), 3 distill/lam stopped at max_iterations without "
               "converging, 2 bad input (one line naming the field or file), 1 a step failed, 130/143 stopped "
               "by SIGINT/SIGTERM (the same command resumes)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks")
    sub = parser.add_subparsers(dest="command", required=True)

    steps_help = "\n".join(f"  {name:<14} {spec.doc}" for name, spec in sorted(STEPS.items()))
    p = sub.add_parser("step", help="run one step (how a container on Kubernetes calls it)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog=f"steps:\n{steps_help}\n\nevery step's parameters, with type, default and meaning: "
                              "docs/input.md (or `lamflow config --reference`)\n"
                              "e.g. lamflow step label --set structures=[cu.extxyz] --set type_map=[Cu] "
                              "--set output=labels")
    p.add_argument("name", choices=sorted(STEPS), metavar="NAME", help="the step (below)")
    p.add_argument("--params", help="YAML/JSON file with the step's parameters")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="set/override a parameter")
    p.add_argument("--result", help="also write the result JSON here")
    p.add_argument("--threads", type=int, help="cores for the step and its dp/LAMMPS processes")
    p.set_defaults(func=cmd_step)

    for pipeline in PIPELINES.values():
        p = sub.add_parser(pipeline.name, help=pipeline.doc)
        p.add_argument("config", help=f"{pipeline.name} config (YAML)")
        p.add_argument("--workdir", help="run directory (default: config's workdir, else runs/<name>)")
        p.add_argument("--engine", choices=list(ENGINES), default="prefect",
                       help="; ".join(f"{e.name}: {e.doc}" for e in ENGINES.values()))
        if pipeline.name == "distill":
            p.add_argument("--max-iterations", type=int, help="override max_iterations")
        p.set_defaults(func=cmd_run)

    def argo_flags(q):
        q.add_argument("--engine", choices=["argo"], default="argo", help="Argo Workflows, through dflow")
        q.add_argument("--host", help="Argo server URL (or LAMFLOW_ARGO_HOST)")
        q.add_argument("--token", help="Argo token (or LAMFLOW_ARGO_TOKEN)")
        q.add_argument("--namespace", help="Kubernetes namespace (or LAMFLOW_ARGO_NAMESPACE)")
        q.add_argument("--runs-claim", help="ReadWriteMany PVC holding run directories (or LAMFLOW_RUNS_CLAIM; default lamflow-runs)")
        q.add_argument("--image-pull-secret", action="append",
                       help="docker-registry Secret for private images (repeatable; or LAMFLOW_IMAGE_PULL_SECRETS=a,b)")
        q.add_argument("--parallelism", type=int,
                       help="pods of the workflow running at once (or LAMFLOW_ARGO_PARALLELISM; default: no limit)")
        q.add_argument("--ssh-secret", help="Secret holding the SSH key of steps run as batch jobs "
                                            "(resources.*.executor, SSHContext; or LAMFLOW_ARGO_SSH_SECRET)")

    p = sub.add_parser("export", help="write the Argo Workflow manifest of a distill or pipeline config")
    p.add_argument("config")
    p.add_argument("-o", "--output", help="file to write (default: stdout)")
    p.add_argument("--workdir", help="run directory in the pods (default: /runs/<name>)")
    p.add_argument("--stage", action="store_true", help=STAGE_HELP)
    argo_flags(p)
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("submit", help="submit a distill or pipeline config to an Argo server")
    p.add_argument("config")
    p.add_argument("--workdir", help="run directory in the pods (default: /runs/<name>)")
    p.add_argument("--no-stage", dest="stage", action="store_false",
                   help="do not stage: the config's paths are already the pods' paths (a config on the shared "
                        "volume). By default, submit stages: " + STAGE_HELP)
    argo_flags(p)
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("resume", help="resubmit a failed dflow/Argo workflow, reusing its finished steps")
    p.add_argument("workflow_id")
    p.add_argument("--workdir", help="the run directory of a local (debug-mode) workflow; omit for Argo")
    p.add_argument("--from-iteration", type=int, metavar="N",
                   help="reuse only the steps before iteration N; the later ones are read back from their "
                        "records in the run directory, and run again where output and record are gone")
    argo_flags(p)
    p.set_defaults(func=cmd_resume)

    p = sub.add_parser("status", help="where a run stands: iterations, finished, running or interrupted steps, "
                                      "failed MD tasks (from its run directory, any engine), or a dflow/Argo "
                                      "workflow's step pods")
    p.add_argument("run_dir", metavar="RUN_DIR|WORKFLOW_ID", help="run directory, or a dflow/Argo workflow's id")
    p.add_argument("--workdir", help="with a workflow id: the run directory of a local (debug-mode) workflow; "
                                     "omit for Argo")
    argo_flags(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("report", help="a run's summary in the terminal and as a self-contained HTML page")
    p.add_argument("run_dir", help="run directory (of `lamflow distill`, `lamflow lam` or `lamflow version`)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("versions", help="the model-version history of a `lamflow version` run: parents, datasets, "
                                        "scores on the standard datasets")
    p.add_argument("run_dir", help="run directory (of `lamflow version`)")
    p.add_argument("--json", action="store_true", help="versions.json as it is")
    p.set_defaults(func=cmd_versions)

    p = sub.add_parser("config", help="print the config schema, or check a config")
    p.add_argument("--schema", action="store_true", help="JSON schema of a pipeline's config")
    p.add_argument("--pipeline", choices=list(PIPELINES), default="distill", help="the pipeline of --schema")
    p.add_argument("--check", metavar="FILE", help="validate FILE and the files it names")
    p.add_argument("--reference", action="store_true",
                   help="every key of every config and step, with type, default and meaning (docs/input.md), as Markdown")
    p.add_argument("--from-dpgen2", metavar="INPUT",
                   help="translate a dpgen2 distillation input (input.json: dp-dist, fp deepmd) into a distill config")
    p.add_argument("-o", "--output", help="with --from-dpgen2: the config to write (default: stdout)")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("package", help="the delivered student (or a model version) as a folder for production: "
                                       "model, model card, LAMMPS input, ASE script")
    p.add_argument("run_dir", help="run directory (of `lamflow distill`, `lamflow lam` or `lamflow version`)")
    p.add_argument("-o", "--output", help="the folder to write (new or empty; default: RUN_DIR/package)")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--version", type=int, help="a `lamflow version` run: the version to package (default: "
                                                   "current)")
    which.add_argument("--student", action="store_true", help="the distilled student (the default for `lamflow "
                                                              "distill` and `lamflow lam` runs)")
    p.add_argument("--head", help="a `lamflow version` run: the branch to freeze (default: the version's newest)")
    p.add_argument("--upload", action="store_true", help="also upload the folder to the artifact store "
                                                         "($LAMFLOW_ARTIFACTS/packages/...)")
    p.set_defaults(func=cmd_package)

    p = sub.add_parser("dataset", help="check labelled datasets before training on them")
    dsub = p.add_subparsers(dest="dataset_command", required=True)
    q = dsub.add_parser("check", help="errors (exit 2: NaN, missing labels, unknown elements, overlapping atoms, "
                                      "bad cells) and warnings (outliers, duplicates, suspicious units) of labelled "
                                      "data: deepmd/npy folders and any format dpdata reads")
    q.add_argument("paths", nargs="+", metavar="PATH", help="a deepmd/npy system, a folder of them, or a DFT output")
    q.add_argument("--type-map", nargs="+", metavar="ELEMENT", help="the run's elements: others are errors")
    q.add_argument("--fmt", help="dpdata format of every PATH (default: guessed per path)")
    q.add_argument("--json", action="store_true", help="the result as JSON on stdout")
    q.set_defaults(func=cmd_dataset_check)

    p = sub.add_parser("prefect", help="a local Prefect server with lamflow's deployments; k8s job preview")
    psub = p.add_subparsers(dest="prefect_command", required=True)
    q = psub.add_parser("up", help="start server + pools + local worker, deploy prefect.yaml (Ctrl-C stops)")
    q.add_argument("--port", type=int, default=4200)
    q.add_argument("--home", default=".prefect", help="PREFECT_HOME: the SQLite database and logs")
    q.add_argument("--project", default=".", help="folder with prefect.yaml (the lamflow checkout)")
    q.set_defaults(func=cmd_prefect_up)
    q = psub.add_parser("retry", help="retry a failed flow run, as the UI's Retry button does (uses PREFECT_API_URL)")
    q.add_argument("flow_run_id")
    q.set_defaults(func=cmd_prefect_retry)
    q = psub.add_parser("job", help="print the Kubernetes Job a deployment's flow run would create")
    q.add_argument("deployment", help="e.g. step/k8s-gpu")
    q.add_argument("--prefect-yaml", default="prefect.yaml")
    q.add_argument("--set", action="append", metavar="VAR=VALUE", help="override a job variable (gpu_count=2)")
    q.set_defaults(func=cmd_prefect_job)

    p = sub.add_parser("templates", help="list the DeePMD-kit templates, or print one")
    p.add_argument("name", nargs="?")
    p.set_defaults(func=cmd_templates)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.debug else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", force=True)
    quiet_libraries(args.debug)  # every command: an error must stay one line, not follow library chatter
    # `prefect up` has its own handling: it stops a server and a worker
    signals = contextlib.nullcontext() if args.func is cmd_prefect_up else stopping.handled()
    try:
        with signals:
            return args.func(args)
    except InputError as exc:
        if args.debug:
            raise
        print(f"lamflow: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StepFailed as exc:
        if args.debug:
            raise
        print(f"lamflow: failed: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except OSError as exc:
        if args.debug or exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        print(f"lamflow: failed: {exc.strerror} writing {exc.filename}; free space, then run the same command "
              "again: every finished step is kept", file=sys.stderr)
        return EXIT_FAILED
    except (KeyboardInterrupt, StepInterrupted):
        from lamflow.steps.runtime import stop_children

        stop_children()  # Ctrl-C before the handler was in place, or a step's own interruption
        signum = stopping.stopped_by()
        print(f"lamflow: stopped ({signal.Signals(signum).name}); run the same command again to go on",
              file=sys.stderr, flush=True)
        return 128 + signum


if __name__ == "__main__":
    sys.exit(main())
