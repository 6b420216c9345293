"""cone_geometry's step of `make demo`: a LeNet8 teacher on digits, one student per teacher snapshot, their nesting
statistics (exact rotation) and the poster's figures, all as MLflow runs nested under the demo run."""
from __future__ import annotations

from pathlib import Path


def run_demo(out_dir: Path) -> None:
    from projects.cone_geometry.runner import (collect_documents, distill_all, make_data_config, make_train_config,
                                               plot_documents, train_runs)

    import torch

    out_dir = Path(out_dir)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # these networks are tiny: one thread is fastest (and robust on a busy machine)
    try:
        data = dict(dataset="digits", batch_size=32)
        (teacher,) = train_runs("LeNet8", make_data_config(**data),
                                make_train_config(epochs=4, optimizer="adam", lr=3e-3, snapshot_every=2),
                                out_dir=str(out_dir / "teacher"), run_name="demo-LeNet8-teacher", progress=False)
        parent, students, docs = distill_all(teacher.run_id, out_dir=str(out_dir / "students"),
                                             run_name="demo-distill-all", arch=None, data_options=data,
                                             train_cfg=make_train_config(epochs=2, optimizer="adam", lr=3e-3),
                                             progress=False)
        summary = plot_documents(collect_documents(docs), out_dir=str(out_dir / "figures"), run_name="demo-plots")
    finally:
        torch.set_num_threads(threads)
    evo = summary["LeNet8_digits"]["evolution"]
    print(f"  teacher test accuracy {teacher.result.final['test_acc']:.3f}; {len(students)} students distilled from "
          f"teacher epochs {', '.join(evo['epochs'])} (accuracy "
          + ", ".join(f"{s.test_acc:.2f}" for s in students) + ")")
    frac = evo["net_mean"][-1]
    print(f"  nesting of the last student: OUT_PARTIAL_IN {frac[0]:.2f}, OUT_FULL_IN {frac[1]:.2f}, IN_PARTIAL_OUT "
          f"{frac[2]:.2f}, IN_FULL_OUT {frac[3]:.2f}; figures in {out_dir / 'figures'}")
