"""Test-time averaging against the whole-clip cut, on validation folds only (gpu_long_schedule.sh).

    python scripts/compare_tta.py SWEEP WORK

Takes the best finished trial of the ``hparams_search`` sweep in SWEEP whose runs are on this
machine and scores each of its fold runs on its validation fold (the fold before its test fold;
``allow_train_fold=true``, as selecting on it is its purpose) twice with ``eval.py``: its own
cut (the long-schedule recipe's: the whole clip) and five 200-frame cuts averaged
(``eval_crops=5``). Prints a Markdown table; eval.py's outputs go under WORK.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

CUTS = {"own cut": [], "5 cuts of 200 frames": ["eval_crop=[56,200]", "eval_crops=5"]}


def main(sweep: Path, work: Path) -> int:
    runs: dict[str, list[tuple[Path, dict]]] = {}
    for metrics in sorted(sweep.glob("trials/*/fold*/metrics.json")):
        runs.setdefault(metrics.parent.parent.name, []).append(
            (metrics.parent, json.loads(metrics.read_text()))
        )
    scored = {
        trial: sum(m["best"]["acc"] for _, m in fold_runs) / len(fold_runs)
        for trial, fold_runs in runs.items()
        if all("acc" in (m.get("best") or {}) for _, m in fold_runs)
    }
    if not scored:
        print(f"{sweep}: no finished trial on this machine", file=sys.stderr)
        return 1
    trial = max(scored, key=scored.__getitem__)
    mean = scored[trial]
    print(f"Trial {int(trial)} (mean validation acc {mean:.4f}); fold runs on their validation folds:\n")
    print("| run | validation fold | " + " | ".join(f"{name} acc" for name in CUTS) + " |")
    print("|---|---:|" + "---:|" * len(CUTS))
    for run, metrics in runs[trial]:
        fold = metrics["splits"]["val"][0]
        accs = []
        for name, extra in CUTS.items():
            out = work / f"{trial}_{run.name}_{name.replace(' ', '_')}"
            command = [
                sys.executable,
                "eval.py",
                f"ckpt_path={run / 'checkpoints' / 'last.ckpt'}",
                f"data.fold={fold}",
                "allow_train_fold=true",
                "trainer.enable_progress_bar=false",
                *extra,
            ]
            subprocess.run(
                command, env={**os.environ, "ESC50_OUTPUTS": str(out)}, check=True, capture_output=True
            )
            accs.append(json.loads(next(out.rglob("metrics.json")).read_text())["test"]["acc"])
        print(f"| {run.name} | {fold} | " + " | ".join(f"{a:.4f}" for a in accs) + " |", flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    sys.exit(main(Path(sys.argv[1]), Path(sys.argv[2])))
