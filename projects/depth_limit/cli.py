"""``geomlab depth-limit``: residual networks in the depth limit (seed 003).

Commands: ``fit`` (the depth-limit ResNet, p-variation / Omega / lr logged every step), ``resnet-cifar10`` (He et
al.'s CIFAR ResNets with depth scaling), ``landscape render|plot``, ``paths norm|weights``, ``curve-fit``.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from shared import options as opt


from shared.app import make_app

app = make_app("Residual networks in the depth limit (seed 003): train the depth-limit ResNet with p-variation, "
               "Omega and lr logged every step; loss landscapes, weight paths over layers, Omega curve fits, "
               "depth-scaled CIFAR ResNets.")
landscape_app = make_app("Loss landscape on a 2-D grid around a trained model: render (resumable, MPI) and plot.")
paths_app = make_app("Weights as paths over the layers: norms with a confidence band, p-variation table, entries.")
app.add_typer(landscape_app, name="landscape")
app.add_typer(paths_app, name="paths")

# -- options -----------------------------------------------------------------------------------------------------
Depth = Annotated[int, typer.Option("--L", help="Number of residual blocks L.")]
Dim = Annotated[int, typer.Option(help="Hidden dimension d (each block is a d x d matrix).")]
Alpha = Annotated[float, typer.Option(help="Scaling exponent: delta_L = L^-alpha; beta = 1 - alpha.")]
Gamma = Annotated[float, typer.Option(help="Init scale exponent: m = L^-(1/gamma + beta).")]
Activation = Annotated[str, typer.Option(help="tanh, relu, elu, gelu or sigmoid.")]
AugmentationRule = Annotated[str, typer.Option("--augmentation", help="Update rule: skip, none, inc_skip, linear_skip "
                                               "(see README for the exact formulas).")]
Init = Annotated[str, typer.Option(help="constant, ntrunc, lin_dec, lin_inc, quad, lin_dec_sym, lin_inc_sym.")]
InitConvention = Annotated[str, typer.Option(help="code: constant/ntrunc scale m/2, ntrunc std sqrt(m/2) (the "
                                                  "original code); readme: scale m/d^2, ntrunc std = bound.")]
PLoss = Annotated[float, typer.Option(help="p of the regression loss mean |y - yhat|_p^p.")]
LossConvention = Annotated[str, typer.Option(help="code: no 1/p factor (the original code); readme: times 1/p.")]
PVar = Annotated[float, typer.Option(help="p of the logged p, p/2 and 3p/4-variations (>= 2).")]
PVarMethod = Annotated[str, typer.Option(help="p-variation algorithm: auto, dense, tree, reference.")]
LogPVar = Annotated[bool, typer.Option(help="Log the three p-variations every step.")]
DynamicLr = Annotated[bool, typer.Option(help="lr = C lr0 / |W|_{p-var}^2 after every step (C = 10 for relu, 2 "
                                              "otherwise), as the original.")]
StoreGrad = Annotated[bool, typer.Option(help="Log Omega ('avg_grad_norm') every step.")]
OmegaConvention = Annotated[str, typer.Option(help="code: (1/B) sum |d mean-loss / d yhat_i|^2 = the original's "
                                                   "1/B^3 sum |grad l_i|^2; readme: (1/B) sum |grad l_i|^2.")]
FullBatch = Annotated[int, typer.Option("--batch-size", help="Training batch size; 0 = the whole training split "
                                        "(full-batch gradient descent, the original's default).")]
TrainPct = Annotated[Optional[float], typer.Option(help="Fraction of the training set used (mnist/cifar10: 0.2 "
                                                        "by default, as the original; other sets: 1).")]
NumSamples = Annotated[int, typer.Option(help="sin/constant: number of points generated (90% train).")]
SynthC = Annotated[float, typer.Option("--c", help="sin/constant: the constant c (the original's default 0.01).")]
NoShuffle = Annotated[bool, typer.Option(help="Reshuffle the training set every epoch (the original did not).")]
EvalEvery = Annotated[int, typer.Option(help="Evaluate the test split every this many epochs (0: after the last).")]
Out = Annotated[Optional[str], typer.Option("--out", help="Output folder.")]


def _echo(msg: str) -> None:
    typer.echo(msg)


# -- fit ---------------------------------------------------------------------------------------------------------
@app.command("fit")
def fit_cmd(
    dataset: opt.Dataset = "sin",
    data_path: opt.DataPath = "./data",
    batch_size: FullBatch = 0,
    training_data_percentage: TrainPct = None,
    num_samples: NumSamples = 100000,
    c: SynthC = 0.01,
    shuffle: NoShuffle = False,
    verify_checksums: opt.VerifyChecksums = True,
    L: Depth = 10,
    dim: Dim = 1,
    alpha: Alpha = 0.5,
    gamma: Gamma = 0.5,
    activation: Activation = "tanh",
    augmentation: AugmentationRule = "skip",
    init: Init = "constant",
    init_convention: InitConvention = "code",
    p_loss: PLoss = 2.0,
    loss_convention: LossConvention = "code",
    p_var: PVar = 2.0,
    pvar_method: PVarMethod = "auto",
    log_pvar: LogPVar = True,
    dynamic_lr: DynamicLr = False,
    store_grad: StoreGrad = False,
    omega_convention: OmegaConvention = "code",
    lr: opt.Lr = 1e-3,
    epochs: opt.Epochs = 10,
    seed: opt.Seed = 1234,
    eval_every: EvalEvery = 0,
    device: opt.Device = "auto",
    out_dir: opt.OutDir = None,
    resume_from: opt.ResumeFrom = None,
    run_name: opt.RunName = None,
) -> None:
    """Train the depth-limit ResNet with plain SGD; logs every step's p-variations, loss, Omega and lr to MLflow and
    the trained weights (weights/resnet_L.pth) as an artifact."""
    from projects.depth_limit.runner import FitOptions, fit_data_config, run_fit

    opts = FitOptions(L=L, dim=dim, alpha=alpha, gamma=gamma, activation=activation, augmentation=augmentation,
                      init=init, init_convention=init_convention, p_loss=p_loss, loss_convention=loss_convention,
                      p_var=p_var, pvar_method=pvar_method, log_pvar=log_pvar, dynamic_lr=dynamic_lr,
                      store_grad=store_grad, omega_convention=omega_convention)
    opts.validate()
    dcfg = fit_data_config(dataset, data_path=data_path, batch_size=batch_size,
                           training_data_percentage=training_data_percentage, num_samples=num_samples, c=c,
                           seed=seed, shuffle=shuffle, verify_checksums=verify_checksums)
    res = run_fit(opts, dcfg, lr=lr, epochs=epochs, seed=seed, eval_every=eval_every, device=device,
                  out_dir=out_dir, resume_from=resume_from, run_name=run_name)
    last = {k: v for k, v in res.last_step.items() if k.endswith("variation") or k in ("avg_grad_norm", "lr_step")}
    final = {k: v for k, v in res.final.items() if k in ("train_loss", "test_loss", "test_acc", "test_p_loss")}
    typer.echo(f"run {res.run_id}: " + ", ".join(f"{k}={v:.5g}" for k, v in {**final, **last}.items()))
    if res.weights_path:
        typer.echo(f"weights: {res.weights_path} (artifact weights/{res.weights_path.name})")


# -- resnet-cifar10 ----------------------------------------------------------------------------------------------
@app.command("resnet-cifar10")
def resnet_cifar10_cmd(
    L: Annotated[int, typer.Option("--L", help="Depth: 56, 104 or 224 (6n + 2 with n = 9, 17, 37 blocks per stage).")],
    dataset: Annotated[str, typer.Option(help="Image classification set (cifar10 as the original; digits for a "
                                              "quick check).")] = "cifar10",
    data_path: opt.DataPath = "./data",
    epochs: opt.Epochs = 16,
    batch_size: opt.BatchSize = 128,
    alpha: Annotated[float, typer.Option(help="delta = (blocks per stage)^-alpha and lr = L^(alpha - beta - 0.05), "
                                              "beta = 1 - alpha.")] = 0.75,
    lr: Annotated[Optional[float], typer.Option(help="Override the learning-rate rule.")] = None,
    seed: opt.Seed = 1231,
    block_init: Annotated[str, typer.Option(help="default: the block convs keep PyTorch's init (what the original "
                                                 "code did); kaiming: Kaiming-normal, what its init loop meant.")] = "default",
    train_fraction: Annotated[float, typer.Option(help="Train on this seeded fraction of the training set.")] = 1.0,
    verify_checksums: opt.VerifyChecksums = True,
    device: opt.Device = "auto",
    out_dir: opt.OutDir = None,
    resume_from: opt.ResumeFrom = None,
    run_name: opt.RunName = None,
) -> None:
    """Train a depth-scaled CIFAR ResNet (batch 128, SGD without momentum, random crops on training images only);
    logs Omega every step and the test top-1, per-sample top-2 and per-class accuracy."""
    from projects.depth_limit.runner import run_resnet_cifar10

    out, test, eta = run_resnet_cifar10(L, dataset=dataset, data_path=data_path, epochs=epochs, batch_size=batch_size,
                                        alpha=alpha, lr=lr, seed=seed, block_init=block_init,
                                        train_fraction=train_fraction, verify_checksums=verify_checksums,
                                        device=device, out_dir=out_dir, resume_from=resume_from, run_name=run_name)
    typer.echo(f"run {out.run_id}: lr={eta:.4g} top-1 {100 * test.get('test_top1', float('nan')):.2f}% "
               f"top-2 {100 * test.get('test_top2', float('nan')):.2f}%")
    for k, v in test.items():
        if k.startswith("test_acc_class_"):
            typer.echo(f"  accuracy for class {k[len('test_acc_class_'):]:10s} {100 * v:.1f} %")


# -- landscape ---------------------------------------------------------------------------------------------------
def _default_out(kind: str, source: str) -> str:
    stem = re.sub(r"[^0-9A-Za-z_.-]+", "_", source.strip("/"))[-60:]
    return str(Path("outputs") / "depth_limit" / kind / stem)


@landscape_app.command("render")
def landscape_render_cmd(
    source: Annotated[str, typer.Argument(help="Snapshot path, MLflow URI (runs:/<id>/snapshots/epoch_NNN.pt) or "
                                               "a fit's run id (its last snapshot).")],
    steps: Annotated[int, typer.Option(help="Grid points per axis (the original: 100).")] = 100,
    res: Annotated[float, typer.Option(help="Grid spacing: both directions are scaled by this (the original: 0.05).")] = 0.05,
    seed: Annotated[int, typer.Option(help="Seed of the two random directions.")] = 1234,
    samples: Annotated[int, typer.Option(help="Training samples the loss is averaged over (17 ~ the original's 1/3000 "
                                              "of CIFAR-10; 0: the whole training split).")] = 17,
    sample_seed: Annotated[int, typer.Option(help="Seed choosing the samples.")] = 0,
    cell_size: Annotated[int, typer.Option(help="Cells of cell-size x cell-size points are checkpointed.")] = 10,
    batch_points: Annotated[int, typer.Option(help="Grid points evaluated per forward pass.")] = 64,
    dtype: Annotated[str, typer.Option(help="float32 (as the original's model) or float64.")] = "float32",
    dataset: Annotated[Optional[str], typer.Option(help="Data set (default: the one the snapshot was trained on).")] = None,
    data_path: Annotated[Optional[str], typer.Option(help="Root folder of the data (default: the snapshot's).")] = None,
    out: Out = None,
    fresh: Annotated[bool, typer.Option(help="Delete finished cells in --out and start over.")] = False,
    plot: Annotated[bool, typer.Option(help="Also write the surface and contour figures.")] = True,
    run_name: opt.RunName = None,
) -> None:
    """Render the loss surface around a trained model into --out (cells/, surface.npy, figures). Interrupted renders
    resume where they stopped; under mpiexec the ranks share the cells."""
    from projects.depth_limit.runner import RenderSettings, render_landscape

    settings = RenderSettings(steps=steps, res=res, seed=seed, cell_size=cell_size, batch_points=batch_points,
                              samples=samples, sample_seed=sample_seed, dtype=dtype)
    result = render_landscape(source, out or _default_out("landscape", source), settings, dataset=dataset,
                              data_path=data_path, fresh=fresh, plot=plot, run_name=run_name, echo=_echo)
    if "surface" in result:
        typer.echo(f"surface: {result['surface']} (min {result['min']:.5g}, max {result['max']:.5g}, centre "
                   f"{result['centre']:.5g}); run {result.get('run_id')}")


@landscape_app.command("plot")
def landscape_plot_cmd(
    surface: Annotated[str, typer.Argument(help="surface.npy of a render (path or MLflow URI).")],
    res: Annotated[float, typer.Option(help="The render's --res (scales the axes).")] = 0.05,
    levels: Annotated[int, typer.Option(help="Contour levels.")] = 50,
    out: Annotated[Optional[str], typer.Option("--out", help="Figure prefix (default: next to a local surface).")] = None,
) -> None:
    """3-D surface and contour PNGs of a rendered surface."""
    from projects.depth_limit.plots import plot_landscape
    from projects.depth_limit.runner import load_surface
    from shared.errors import check

    check(levels >= 1, f"--levels must be >= 1, got {levels}")
    check(res > 0, f"--res must be > 0, got {res}")
    s = load_surface(surface)
    prefix = Path(out) if out else (Path(surface).with_suffix("") if Path(surface).exists()
                                    else Path(_default_out("landscape", surface)) / "landscape")
    prefix.parent.mkdir(parents=True, exist_ok=True)
    for f in plot_landscape(s, res, prefix, levels):
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
    p_var: Annotated[float, typer.Option("--p-var", "--pvar", help="p of the --pvar-only table (>= 1).")] = 1.0,
    pvar_only: Annotated[bool, typer.Option(help="Print the p-variation table (max over runs per L) instead of "
                                                 "plotting.")] = False,
    ci: Annotated[bool, typer.Option(help="Draw the 95% band mean +- z sd / sqrt(runs).")] = False,
    z: Annotated[float, typer.Option(help="z of the band.")] = 1.96,
    ext: Ext = "pth",
    out: Out = None,
    run_name: opt.RunName = None,
) -> None:
    """Mean over runs of |L^beta W_k|_F against k/L for every L, or (--pvar-only) the p-variation of the paths."""
    from projects.depth_limit.runner import paths_run

    res = paths_run("norm", sources, beta=beta, p=p_var, pvar_only=pvar_only, ci=ci, z=z, entries=None, ext=ext,
                    out_dir=out or _default_out("paths", "norm"), run_name=run_name, echo=_echo)
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
    out: Out = None,
    run_name: opt.RunName = None,
) -> None:
    """Chosen entries L^beta W_k[i, j] against k/L, one figure per entry."""
    from projects.depth_limit.runner import paths_run

    res = paths_run("weights", sources, beta=beta, p=1.0, pvar_only=False, ci=False, z=1.96, entries=entries, ext=ext,
                    out_dir=out or _default_out("paths", "weights"), run_name=run_name, echo=_echo)
    for f in res["figures"]:
        typer.echo(f"figure: {f}")
    typer.echo(f"depths {res['depths']}; run {res['run_id']}")


# -- curve-fit ---------------------------------------------------------------------------------------------------
@app.command("curve-fit")
def curve_fit_cmd(
    run: Annotated[Optional[str], typer.Option(help="MLflow run whose metric history is fitted.")] = None,
    event_path: Annotated[Optional[str], typer.Option(help="TensorBoard event file or folder (old runs).")] = None,
    tag: Annotated[str, typer.Option(help="Metric / scalar tag.")] = "avg_grad_norm",
    filter_period: Annotated[int, typer.Option(help="Drop every point whose index t (1-based) is divisible by this "
                                                    "(0: keep all).")] = 0,
    window_size: Annotated[int, typer.Option(help="Drop each chunk's max and min, chunks of about this many points "
                                                  "(0: no removal).")] = 5,
    scaling_x: Annotated[float, typer.Option(help="x = t * scaling-x.")] = 1.0,
    infer_shift: Annotated[bool, typer.Option(help="Fit C/(t+T0)^rho instead of C/(t+1)^rho.")] = False,
    out: Out = None,
    run_name: opt.RunName = None,
) -> None:
    """Fit Omega(t) = C/(t+1)^rho or C/(t+T0)^rho; prints the parameters, SD and std error; writes a figure."""
    from projects.depth_limit.runner import curve_fit_run

    fit, res = curve_fit_run(run=run, event_path=event_path, tag=tag, filter_period=filter_period,
                             window_size=window_size, scaling_x=scaling_x, infer_shift=infer_shift,
                             out_dir=out or _default_out("curve_fit", run or event_path or "input"), run_name=run_name)
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
