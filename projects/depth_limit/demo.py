"""depth_limit's step of `make demo`: depth-limit ResNets on `sin` and `digits` with p-variation logged every step,
a small loss landscape, weight-path figures, the p-variation table and an Omega curve fit (about 30 s on 2 cores)."""
from __future__ import annotations

from pathlib import Path


def _fit(out_dir: Path, dataset: str, num_samples: int, lr: float, epochs: int, **options):
    """A full-batch fit (seed 1234) with p-variation and Omega logged every step."""
    from projects.depth_limit.fitting import FitOptions, fit_data_config, run_fit

    cfg = fit_data_config(dataset, data_path="./data", batch_size=0, training_data_percentage=None,
                          num_samples=num_samples, c=0.01, seed=1234, shuffle=False)
    return run_fit(FitOptions(alpha=0.75, gamma=1.0, init="ntrunc", store_grad=True, **options), cfg, lr=lr,
                   epochs=epochs, seed=1234, out_dir=str(out_dir / f"fit_{dataset}"),
                   run_name=f"demo-depth-limit-{dataset}", progress=False)


def run_demo(out_dir: Path) -> None:
    from projects.depth_limit.analyses import curve_fit_run, paths_run
    from projects.depth_limit.render import RenderSettings, render_landscape

    out_dir = Path(out_dir)
    quiet = lambda msg: None  # noqa: E731

    # 1. regression on the seed's 'sin' set (tiny x, as the original), full-batch GD
    sin = _fit(out_dir, "sin", 2000, lr=9.0, epochs=30, L=32, dim=2)
    print(f"  sin: L=32 dim=2, 30 full-batch steps: train loss {sin.final['train_loss']:.4f}, "
          f"2-variation {sin.last_step['2.000-variation']:.4g} (run {sin.run_id})")

    # 2. classification on digits, full-batch GD with p-variation and Omega every step
    dig = _fit(out_dir, "digits", 1000, lr=10.0, epochs=40, L=24, dim=10, activation="tanh")
    print(f"  digits: L=24 dim=10, 40 full-batch steps: test accuracy {dig.final.get('test_acc', float('nan')):.3f}, "
          f"2-variation {dig.last_step['2.000-variation']:.4g} (run {dig.run_id})")

    # 3. a small loss landscape around the digits model
    ls = render_landscape(dig.run_id, str(out_dir / "landscape"),
                          RenderSettings(steps=15, res=0.05, cell_size=5, batch_points=75, samples=100),
                          run_name="demo-depth-limit-landscape", echo=quiet)
    print(f"  landscape 15x15: loss {ls['min']:.4f} .. {ls['max']:.4f} (centre {ls['centre']:.4f}; run {ls['run_id']})")

    # 4. weight paths of both runs, and the p-variation table
    pn = paths_run("norm", [sin.run_id, dig.run_id], beta=0.25, p=2.0, pvar_only=False, ci=True, z=1.96,
                   entries=None, ext="pth", out_dir=str(out_dir / "paths"), run_name="demo-depth-limit-paths")
    paths_run("weights", [dig.run_id], beta=0.25, p=2.0, pvar_only=False, ci=False, z=1.96, entries="0,0;1,1;2,3",
              ext="pth", out_dir=str(out_dir / "paths"), run_name="demo-depth-limit-entries")
    paths_run("norm", [sin.run_id, dig.run_id], beta=0.25, p=2.0, pvar_only=True, ci=False, z=1.96, entries=None,
              ext="pth", out_dir=str(out_dir / "paths"), run_name="demo-depth-limit-pvar-table",
              echo=lambda t: print("  " + t.replace("\n", "\n  ")))
    print(f"  path figures: {', '.join(Path(f).name for f in pn['figures'])}")

    # 5. Omega(t) curve fit of the digits run
    fit, res = curve_fit_run(run=dig.run_id, event_path=None, tag="avg_grad_norm", filter_period=0, window_size=5,
                             scaling_x=1.0, infer_shift=False, out_dir=str(out_dir / "curve_fit"),
                             run_name="demo-depth-limit-curve-fit")
    print(f"  Omega fit C/(t+1)^rho: C={fit.params['C']:.4g} +- {fit.std_error['C']:.2g}, "
          f"rho={fit.params['rho']:.4g} +- {fit.std_error['rho']:.2g} (run {res['run_id']})")
