"""What an adversary recovers, beside ε: the attack table (attack × privacy setting).

Horizontal runs on Flower's simulation engine (an MLP trained long on 180 digits held
by 2 clients, so the model memorizes), one per setting: no protection (the baseline,
measured in the same run), DP-SGD at ε = 8 and ε = 1, and CKKS. Each is audited with
membership inference on its final model (calibrated, reference-model attack) and with
gradient inversion of the worst-case update (one example, one step) under its own
privacy and encryption. Vertical label inference is replayed on a split of digits
without and with the label owner's gradient noise. "vs baseline" is the attack's
advantage over chance relative to the unprotected run's (1: no protection; 0: chance).

    python benchmarks/audit.py [--rounds 10] [--out FILE.json]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

from fedpriv import load_config, run
from fedpriv.attacks.label_inference import audit as label_audit
from fedpriv.attacks.runs import audit_run
from fedpriv.report import final_epsilon
from fedpriv.results import write_atomic

SETTINGS: dict[str, list[str]] = {
    "none": [],
    "dp_sgd ε=8": ["privacy=dp_sgd", "privacy.target_epsilon=8"],
    "dp_sgd ε=1": ["privacy=dp_sgd", "privacy.target_epsilon=1"],
    "ckks": ["crypto=ckks"],
}
NOISE = {"none": 0.0, "gradient_noise=0.003": 0.003, "gradient_noise=0.01": 0.01}


def horizontal(rounds: int, out: Path) -> list[dict[str, Any]]:
    # 10 % of digits for training (180 images, 2 clients), trained long: it memorizes.
    common = ["data=digits", "data.test_fraction=0.9", "model=mlp", "num_clients=2",
              f"rounds={rounds}", "train.local_epochs=10", "train.lr=0.1",
              "train.momentum=0.9"]  # fmt: skip
    rows = []
    for number, (name, overrides) in enumerate(SETTINGS.items()):
        result = run(load_config([*common, *overrides, f"output_dir={out / str(number)}"]))
        membership = audit_run(result.run_dir, "membership")
        inversion = audit_run(result.run_dir, "gradient_inversion")
        rows.append({
            "setting": name, "accuracy": result.final["accuracy"],
            "epsilon": final_epsilon(result),
            "membership_auc": membership["calibrated"]["auc"] if membership["possible"] else None,
            "membership_tpr_1pct": (
                membership["calibrated"]["tpr_at_1pct_fpr"] if membership["possible"] else None
            ),
            "loss_threshold_auc": (
                membership["loss_threshold"]["auc"] if membership["possible"] else None
            ),
            "inversion_mse": inversion.get("mse"),
            "mse_of_mean_guess": inversion.get("mse_of_mean_guess"),
            "inversion_label_correct": inversion.get("label_correct"),
            "inversion_possible": inversion["possible"],
        })  # fmt: skip
    return rows


def vertical() -> list[dict[str, Any]]:
    rows = []
    for name, sigma in NOISE.items():
        config = load_config(["family=vertical", "data=digits", "vertical.split=halves",
                              f"vertical.gradient_noise={sigma}"])  # fmt: skip
        found = label_audit(config)
        rows.append({"setting": name, "accuracy": found.test_accuracy,
                     "label_accuracy": found.inference.accuracy, "chance": found.inference.chance,
                     "noise_ratio": found.noise_ratio})  # fmt: skip
    return rows


def advantage(value: float | None, chance: float, baseline: float | None) -> str:
    """The attack's advantage over chance as a fraction of the baseline's, floored at 0
    (no better than chance); "-" when the baseline itself is within 0.05 of chance."""
    if value is None or baseline is None or abs(baseline - chance) < 0.05 * max(abs(chance), 1):
        return "-"
    return f"{max(0.0, (value - chance) / (baseline - chance)):.2f}"


def table(rows: list[dict[str, Any]], labels: list[dict[str, Any]]) -> list[list[str]]:
    """attack, setting, ε, model accuracy, success, vs baseline (the first row's)."""
    base, out = rows[0], []
    for r in rows:
        eps = "∞" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        auc = r["membership_auc"]
        success = (
            "impossible (ciphertexts)" if auc is None
            else f"AUC {auc:.3f}, TPR@1%FPR {r['membership_tpr_1pct']:.3f}"
        )  # fmt: skip
        ratio = "0.00" if auc is None else advantage(auc, 0.5, base["membership_auc"])
        out.append(["membership (calibrated)", r["setting"], eps, f"{r['accuracy']:.3f}",
                    success, ratio])  # fmt: skip
    for r in rows:
        eps = "∞" if r["epsilon"] is None else f"{r['epsilon']:.2f}"
        if not r["inversion_possible"]:
            success, ratio = "impossible (ciphertexts)", "0.00"
        else:
            label = "✓" if r["inversion_label_correct"] else "✗"
            success = (
                f"MSE {r['inversion_mse']:.3g} (mean guess {r['mse_of_mean_guess']:.3g}), "
                f"label {label}"
            )
            ratio = advantage(r["inversion_mse"], r["mse_of_mean_guess"], base["inversion_mse"])
        out.append(["gradient inversion", r["setting"], eps, f"{r['accuracy']:.3f}", success,
                    ratio])  # fmt: skip
    for r in labels:
        success = f"label accuracy {r['label_accuracy']:.3f} (chance {r['chance']:.3f})"
        ratio = advantage(r["label_accuracy"], r["chance"], labels[0]["label_accuracy"])
        out.append(["vertical label inference", r["setting"], "-", f"{r['accuracy']:.3f}",
                    success, ratio])  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", help="write the measurements as JSON")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = horizontal(args.rounds, Path(tmp))
    labels = vertical()
    print("| attack | setting | ε | model accuracy | success | vs baseline |")
    print("|---|---|---|---|---|---|")
    for line in table(rows, labels):
        print("| " + " | ".join(line) + " |")
    if args.out:
        write_atomic(Path(args.out), json.dumps({"horizontal": rows, "vertical": labels}, indent=2))


if __name__ == "__main__":
    main()
