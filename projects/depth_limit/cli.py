"""``geomlab depth-limit``: residual networks in the depth limit (the thesis "Weights regularity for residual neural
networks in the depth limit", 2024).

Commands: ``fit`` (the depth-limit ResNet, p-variation / Omega / lr logged every step), ``resnet-cifar10`` (He et
al.'s CIFAR ResNets with depth scaling), ``landscape render|plot``, ``paths norm|weights``, ``curve-fit``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, List, Optional

import typer

from shared import options as opt


from shared.app import make_app

app = make_app("Residual networks in the depth limit (thesis 2024): train the depth-limit ResNet with p-variation, "
               "Omega and lr logged every step; loss landscapes, weight paths over layers, Omega curve fits, "
               "depth-scaled CIFAR ResNets.")
landscape_app = make_app("Loss landscape on a 2-D grid around a trained model: render (resumable, MPI) and plot.")
paths_app = make_app("Weights as paths over the layers: norms with a confidence band, p-variation table, entries.")
app.add_typer(landscape_app, name="landscape")
app.add_typer(paths_app, name="paths")

# -- options -----------------------------------------------------------------------------------------------------
Depth = Annotated[int, typer.Option("--L", help="Depth L: fit, the number of residual blocks; resnet-cifar10, the "
                                   "layers 6n + 2 (56, 104 or 224 for n = 9, 17, 37 blocks per stage).")]
Dim = Annotated[int, typer.Option(help="Hidden dimension d (each block is a d x d matrix).")]
Alpha = Annotated[float, typer.Option(help="Depth-scaling exponent: delta_L = L^-alpha, beta = 1 - alpha "
                                          "(resnet-cifar10: delta = (blocks per stage)^-alpha and lr = "
                                          "L^(alpha - beta - 0.05)).")]
Gamma = Annotated[float, typer.Option(help="Init scale exponent: m = L^-(1/gamma + beta).")]
Activation = Annotated[str, typer.Option(help="tanh, relu, elu, gelu or sigmoid.")]
UpdateRule = Annotated[str, typer.Option("--update-rule", "--augmentation", help="Residual update rule: skip, "
                                         "none, inc_skip, linear_skip (see README for the exact formulas; the "
                                         "thesis' code called it augmentation).")]
InitConvention = Annotated[str, typer.Option(help="code: constant/ntrunc scale m/2, ntrunc std sqrt(m/2) (the "
                                                  "original code); readme: scale m/d^2, ntrunc std = bound.")]
PLoss = Annotated[float, typer.Option(help="p of the regression loss mean |y - yhat|_p^p.")]
LossConvention = Annotated[str, typer.Option(help="code: no 1/p factor (the original code); readme: times 1/p.")]
PVar = Annotated[float, typer.Option("--p-var", "--pvar", help="p of the p-variation (fit: the logged p, p/2 and "
                                    "3p/4-variations, >= 2; paths norm: the --pvar-only table, >= 1).")]
Res = Annotated[float, typer.Option(help="Grid spacing of the landscape: both directions are scaled by this (the "
                                         "original: 0.05); plot takes the render's value (it scales the axes).")]
PVarMethod = Annotated[str, typer.Option(help="p-variation algorithm: auto, dense, tree, reference.")]
LogPVar = Annotated[bool, typer.Option(help="Log the three p-variations every step.")]
DynamicLr = Annotated[bool, typer.Option(help="lr = C lr0 / |W|_{p-var}^2 after every step (C = 10 for relu, 2 "
                                              "otherwise), as the original.")]
StoreGrad = Annotated[bool, typer.Option(help="Log Omega ('avg_grad_norm') every step.")]
OmegaConvention = Annotated[str, typer.Option(help="code: (1/B) sum |d mean-loss / d yhat_i|^2 = the original's "
                                                   "1/B^3 sum |grad l_i|^2; readme: (1/B) sum |grad l_i|^2.")]
NumSamples = Annotated[int, typer.Option(help="sin/constant: number of points generated (90% train).")]
SynthC = Annotated[float, typer.Option("--c", help="sin/constant: the constant c (the original's default 0.01).")]
EvalEvery = Annotated[int, typer.Option(help="Evaluate the test split every this many epochs (0: after the last).")]
#: The data options of a training command beyond the ones its project's data builder takes (off by default). The
#: builders seed --train-fraction with --seed (the thesis' code) and set their own shuffling.
EXTRA_DATA = tuple(n for n in opt.EXTRA_DATA if n not in ("split_seed", "shuffle", "train_fraction")) + ("noise", "noise_seed")
DATA_EXTRA = tuple(o for o in opt.DATA if o.name in EXTRA_DATA)


def _echo(msg: str) -> None:
    typer.echo(msg)


# -- fit ---------------------------------------------------------------------------------------------------------
@app.command("fit")
@opt.options(opt.DATASET, opt.DATA_PATH, opt.BATCH_SIZE, opt.TRAIN_FRACTION, opt.SHUFFLE, opt.VERIFY_CHECKSUMS,
             opt.DOWNLOAD, DATA_EXTRA, opt.LR, opt.EPOCHS, opt.SEED, opt.DEVICE, opt.PRECISION, opt.CHANNELS_LAST,
             opt.RESUME_FROM, opt.RESUME_OVERRIDE, opt.FRESH, opt.SYSTEM_METRICS, opt.RUN_OUTPUT,
             defaults={"dataset": "sin", "batch_size": 0, "train_fraction": None, "shuffle": False, "lr": 1e-3,
                       "seed": 1234})
def fit_cmd(
    *,
    num_samples: NumSamples = 100000,
    c: SynthC = 0.01,
    o: opt.Values,
    L: Depth = 10,
    dim: Dim = 1,
    alpha: Alpha = 0.5,
    gamma: Gamma = 0.5,
    activation: Activation = "tanh",
    update_rule: UpdateRule = "skip",
    init: opt.Init = "constant",
    init_convention: InitConvention = "code",
    p_loss: PLoss = 2.0,
    loss_convention: LossConvention = "code",
    p_var: PVar = 2.0,
    pvar_method: PVarMethod = "auto",
    log_pvar: LogPVar = True,
    dynamic_lr: DynamicLr = False,
    store_grad: StoreGrad = False,
    omega_convention: OmegaConvention = "code",
    eval_every: EvalEvery = 0,
) -> None:
    """Train the depth-limit ResNet with plain SGD; logs every step's p-variations, loss, Omega and lr to MLflow and
    the trained weights (weights/resnet_L.pth) as an artifact."""
    from projects.depth_limit.fitting import FitOptions, fit_data_config, run_fit

    opts = FitOptions(L=L, dim=dim, alpha=alpha, gamma=gamma, activation=activation, augmentation=update_rule,
                      init=init, init_convention=init_convention, p_loss=p_loss, loss_convention=loss_convention,
                      p_var=p_var, pvar_method=pvar_method, log_pvar=log_pvar, dynamic_lr=dynamic_lr,
                      store_grad=store_grad, omega_convention=omega_convention)
    opts.validate()
    dcfg = fit_data_config(o.dataset, data_path=o.data_path, batch_size=o.batch_size,
                           training_data_percentage=o.train_fraction, num_samples=num_samples, c=c, seed=o.seed,
                           shuffle=o.shuffle, verify_checksums=o.verify_checksums, download=o.download)
    dcfg = opt.data_config(o, base=dcfg, only=EXTRA_DATA)
    res = run_fit(opts, dcfg, lr=o.lr, epochs=o.epochs, seed=o.seed, eval_every=eval_every, device=o.device,
                  out_dir=o.out_dir, resume_from=o.resume_from, run_name=o.run_name,
                  **{k: o[k] for k in ("precision", "channels_last", "fresh", "resume_override") if k in o})
    last = {k: v for k, v in res.last_step.items() if k.endswith("variation") or k in ("avg_grad_norm", "lr_step")}
    final = {k: v for k, v in res.final.items() if k in ("train_loss", "test_loss", "test_acc", "test_p_loss")}
    typer.echo(f"run {res.run_id}: " + ", ".join(f"{k}={v:.5g}" for k, v in {**final, **last}.items()))
    if res.weights_path:
        typer.echo(f"weights: {res.weights_path} (artifact weights/{res.weights_path.name})")


# -- resnet-cifar10 ----------------------------------------------------------------------------------------------
@app.command("resnet-cifar10")
@opt.options(opt.DATASET, opt.DATA_PATH, opt.BATCH_SIZE, opt.TRAIN_FRACTION, opt.VERIFY_CHECKSUMS, DATA_EXTRA,
             opt.EPOCHS, opt.LR, opt.SEED, opt.DEVICE, opt.PRECISION, opt.CHANNELS_LAST, opt.RESUME_FROM,
             opt.RESUME_OVERRIDE, opt.FRESH, opt.SYSTEM_METRICS, opt.RUN_OUTPUT,
             defaults={"dataset": "cifar10", "epochs": 16, "lr": None, "seed": 1231})
def resnet_cifar10_cmd(
    L: Depth,
    *,
    o: opt.Values,
    alpha: Alpha = 0.75,
    block_init: Annotated[str, typer.Option(help="default: the block convs keep PyTorch's init (what the original "
                                                 "code did); kaiming: Kaiming-normal, what its init loop "
                                                 "meant.")] = "default",
) -> None:
    """Train a depth-scaled CIFAR ResNet (batch 128, SGD without momentum, random crops on training images only);
    logs Omega every step and the test top-1, per-sample top-2 and per-class accuracy. --lr overrides the
    learning-rate rule."""
    from projects.depth_limit.fitting import run_resnet_cifar10

    out, test, eta = run_resnet_cifar10(L, dataset=o.dataset, data_path=o.data_path, epochs=o.epochs,
                                        batch_size=o.batch_size, alpha=alpha, lr=o.lr, seed=o.seed,
                                        block_init=block_init, train_fraction=o.train_fraction,
                                        verify_checksums=o.verify_checksums, device=o.device, out_dir=o.out_dir,
                                        resume_from=o.resume_from, run_name=o.run_name,
                                        data_options={k: o[k] for k in EXTRA_DATA},
                                        **{k: o[k] for k in ("precision", "channels_last", "fresh", "resume_override")
                                           if k in o})
    typer.echo(f"run {out.run_id}: lr={eta:.4g} top-1 {100 * test.get('test_top1', float('nan')):.2f}% "
               f"top-2 {100 * test.get('test_top2', float('nan')):.2f}%")
    for k, v in test.items():
        if k.startswith("test_acc_class_"):
            typer.echo(f"  accuracy for class {k[len('test_acc_class_'):]:10s} {100 * v:.1f} %")


# -- landscape ---------------------------------------------------------------------------------------------------
@landscape_app.command("render")
def landscape_render_cmd(
    source: Annotated[str, typer.Argument(help="Snapshot path, MLflow URI (runs:/<id>/snapshots/epoch_NNN.pt) or "
                                               "a fit's run id (its last snapshot).")],
    steps: Annotated[int, typer.Option(help="Grid points per axis (the original: 100).")] = 100,
    res: Res = 0.05,
    seed: opt.Seed = 1234,
    samples: Annotated[int, typer.Option(help="Training samples the loss is averaged over (17 ~ the original's 1/3000 "
                                              "of CIFAR-10; 0: the whole training split).")] = 17,
    sample_seed: Annotated[int, typer.Option(help="Seed choosing the samples.")] = 0,
    cell_size: Annotated[int, typer.Option(help="Cells of cell-size x cell-size points are checkpointed.")] = 10,
    batch_points: Annotated[int, typer.Option(help="Grid points evaluated per forward pass.")] = 64,
    dtype: Annotated[str, typer.Option(help="float32 (as the original's model) or float64.")] = "float32",
    dataset: opt.Dataset = None,
    data_path: opt.DataPath = None,
    out_dir: opt.OutDir = None,
    fresh: opt.Fresh = False,
    plot: Annotated[bool, typer.Option(help="Also write the surface and contour figures.")] = True,
    run_name: opt.RunName = None,
) -> None:
    """Render the loss surface around a trained model into --out-dir (cells/, surface.npy, figures; --fresh deletes
    finished cells and starts over). Interrupted renders
    resume where they stopped; under mpiexec the ranks share the cells."""
    from projects.depth_limit.render import RenderSettings, render_landscape

    settings = RenderSettings(steps=steps, res=res, seed=seed, cell_size=cell_size, batch_points=batch_points,
                              samples=samples, sample_seed=sample_seed, dtype=dtype)
    result = render_landscape(source, out_dir, settings, dataset=dataset,
                              data_path=data_path, fresh=fresh, plot=plot, run_name=run_name)
    if "surface" in result:
        typer.echo(f"surface: {result['surface']} (min {result['min']:.5g}, max {result['max']:.5g}, centre "
                   f"{result['centre']:.5g}); run {result.get('run_id')}")


@landscape_app.command("plot")
def landscape_plot_cmd(
    surface: Annotated[str, typer.Argument(help="surface.npy of a render (path or MLflow URI).")],
    res: Res = 0.05,
    levels: Annotated[int, typer.Option(help="Contour levels.")] = 50,
    prefix: Annotated[Optional[str], typer.Option("--prefix", "--out", help="Figure prefix (default: next to a local "
                                                  "surface).")] = None,
) -> None:
    """3-D surface and contour PNGs of a rendered surface."""
    from projects.depth_limit.render import landscape_dir, load_surface, save_landscape_figures
    from shared.errors import check

    check(levels >= 1, f"--levels must be >= 1, got {levels}")
    check(res > 0, f"--res must be > 0, got {res}")
    s = load_surface(surface)
    prefix = Path(prefix) if prefix else (Path(surface).with_suffix("") if Path(surface).exists()
                                    else landscape_dir(surface) / "landscape")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for f in save_landscape_figures(s, res, prefix, levels):
        typer.echo(f"figure: {f}")


# -- paths -------------------------------------------------------------------------------------------------------
Sources = Annotated[List[str], typer.Argument(help="MLflow run ids / runs:/ URIs of fits, exported weight files "
                                                   "(resnet_L.pth) or folders of them (one folder per repetition).")]
Beta = Annotated[float, typer.Option(help="Scale the weights by L^beta.")]
Ext = Annotated[str, typer.Option(help="Extension of the weight files in folders.")]


@paths_app.command("norm")
def paths_norm_cmd(
    sources: Sources,
    beta: Beta = 0.5,
    p_var: PVar = 1.0,
    pvar_only: Annotated[bool, typer.Option(help="Print the p-variation table (max over runs per L) instead of "
                                                 "plotting.")] = False,
    ci: Annotated[bool, typer.Option(help="Draw the 95% band mean +- z sd / sqrt(runs).")] = False,
    z: Annotated[float, typer.Option(help="z of the band.")] = 1.96,
    ext: Ext = "pth",
    out_dir: opt.OutDir = None,
    run_name: opt.RunName = None,
) -> None:
    """Mean over runs of |L^beta W_k|_F against k/L for every L, or (--pvar-only) the p-variation of the paths."""
    from projects.depth_limit.analyses import paths_run

    res = paths_run("norm", sources, beta=beta, p=p_var, pvar_only=pvar_only, ci=ci, z=z, entries=None, ext=ext,
                    out_dir=out_dir, run_name=run_name, echo=_echo)
    _report_paths(res)


def _report_paths(res: dict) -> None:
    for f in res["figures"]:
        typer.echo(f"figure: {f}")
    typer.echo(f"depths {res['depths']}; run {res['run_id']}")


@paths_app.command("weights")
def paths_weights_cmd(
    sources: Sources,
    beta: Beta = 0.5,
    entries: Annotated[Optional[str], typer.Option(help="Entries row,col separated by ';' (default: the original's "
                                                        "0,0;1,1;2,2;7,3;8,5;9,6, which need dim >= 10).")] = None,
    ext: Ext = "pth",
    out_dir: opt.OutDir = None,
    run_name: opt.RunName = None,
) -> None:
    """Chosen entries L^beta W_k[i, j] against k/L, one figure per entry."""
    from projects.depth_limit.analyses import paths_run

    res = paths_run("weights", sources, beta=beta, p=1.0, pvar_only=False, ci=False, z=1.96, entries=entries, ext=ext,
                    out_dir=out_dir, run_name=run_name, echo=_echo)
    _report_paths(res)


# -- curve-fit ---------------------------------------------------------------------------------------------------
@app.command("curve-fit")
def curve_fit_cmd(
    run: opt.Run = None,
    event_path: Annotated[Optional[str], typer.Option(help="TensorBoard event file or folder (old runs).")] = None,
    tag: Annotated[str, typer.Option(help="Metric / scalar tag.")] = "avg_grad_norm",
    filter_period: Annotated[int, typer.Option(help="Drop every point whose index t (1-based) is divisible by this "
                                                    "(0: keep all).")] = 0,
    window_size: Annotated[int, typer.Option(help="Drop each chunk's max and min, chunks of about this many points "
                                                  "(0: no removal).")] = 5,
    scaling_x: Annotated[float, typer.Option(help="x = t * scaling-x.")] = 1.0,
    infer_shift: Annotated[bool, typer.Option(help="Fit C/(t+T0)^rho instead of C/(t+1)^rho.")] = False,
    out_dir: opt.OutDir = None,
    run_name: opt.RunName = None,
) -> None:
    """Fit Omega(t) = C/(t+1)^rho or C/(t+T0)^rho; prints the parameters, SD and std error; writes a figure."""
    from projects.depth_limit.analyses import curve_fit_run

    fit, res = curve_fit_run(run=run, event_path=event_path, tag=tag, filter_period=filter_period,
                             window_size=window_size, scaling_x=scaling_x, infer_shift=infer_shift,
                             out_dir=out_dir,
                             run_name=run_name)
    names = ", ".join(fit.params)
    typer.echo(f"Estimated parameter values ({names}): " + " ".join(f"{v:.6g}" for v in fit.params.values()))
    typer.echo("SD of the parameters: " + " ".join(f"{v:.6g}" for v in fit.sd.values()))
    typer.echo("Estimated parameters std error: " + " ".join(f"{v:.6g}" for v in fit.std_error.values()))
    typer.echo(f"{fit.n_points} points fitted; figure {res.get('figure')}; run {res['run_id']}")


# -- study (issue 13): the paper's experiment end to end, see study.py ------------------------------------------
def _register_study() -> None:
    from shared.study import register_study

    from . import study

    register_study(app, "depth_limit", study.PRESETS, study.run, study.__doc__.split("\n\n")[0])


_register_study()
