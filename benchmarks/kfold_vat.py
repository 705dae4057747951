"""The k-fold choice of the semi-supervised fine-tune's settings on one cell's own labels.

A 100-label cell may choose its settings only with its 100 labels (issue 28): this script splits
those labels into folds (class-balanced: two images of each digit held out per fold for five
folds), trains on the other folds' labels plus the cell's unlabelled images, and scores the
held-out labels, for every setting of a grid given up front, at once: each (setting, fold) is
one member of an ensemble trained as one batched network (torch.bmm over the members), so a GPU
runs a grid of 120 fine-tunes in the time of a few. The winner is fixed by the rule below before
anything runs; the test split and the 10,000 validation images are never read (the input file
holds only the cell's labelled images and its unlabelled pool: `prepare`).

    python -m benchmarks.kfold_vat prepare --out cell.pt [--stack stack.pt]   # needs the project
    python -m benchmarks.kfold_vat run cell.pt grid.json --out DIR            # needs torch alone
    python -m benchmarks.kfold_vat plot DIR/results.json ... --out curves.png

The rule: among the groups marked `choose`, the setting with the lowest held-out error at the
last step, averaged over its folds and its inits (pretrained and scratch get one setting, as the
pipeline gives them one); a tie goes to the lower held-out cross-entropy.

What each member trains is layerwise's fine-tune with batch_norm, written for a batch of members:
dense blocks Linear -> batch norm -> ReLU; scratch weights He-normal, zero biases; pretrained
blocks the stack's encoders with their batch norm set to keep the pretrained function
(layerwise.nn.transfer.keep_pretrained_function_); Adam with linear_decay; each step the member's
labelled images (all of them, up to 100) and a batch of unlabelled ones, in one pass (one set of
batch statistics), with the virtual-adversarial cost (layerwise.nn.unlabelled: a probe of VAT_XI, clean prediction a constant target, only the clean
pass moves batch norm's statistics) plus `entropy` times the clean predictions' entropy.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

XI = 1e-2          # layerwise.nn.unlabelled.VAT_XI
BN_EPS, BN_MOMENTUM = 1e-5, 0.1  # torch.nn.BatchNorm1d's defaults
FOLDS = 5
CALIBRATION_IMAGES = 2048  # layerwise.train.finetune.CALIBRATION_IMAGES


# ---------------------------------------------------------------- prepare (needs the project)
def prepare(out: Path, stack: Path | None, n_labels: int, seed: int, split_seed: int, val_size: int) -> None:
    """The cell's labelled images and labels, its fold of each, and its unlabelled pool (the
    training images it has no label for), as the pipeline draws them; the validation and test
    images are left out of the file altogether."""
    import os

    from layerwise.datasets.mnist import load_mnist
    from layerwise.datasets.splits import label_subset

    splits = load_mnist(Path(os.environ.get("MNIST_ROOT", "data")), None, val_size, split_seed)
    subset = label_subset(splits.y_train, n_labels, seed)
    others = torch.ones(len(splits.y_train), dtype=torch.bool)
    others[subset] = False
    labels = splits.y_train[subset]
    folds = torch.empty(n_labels, dtype=torch.long)
    for cls in labels.unique():  # class-balanced folds, drawn with the cell's seed
        members = (labels == cls).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=torch.Generator().manual_seed(seed))]
        folds[members] = torch.arange(len(members)) % FOLDS
    as_bytes = lambda x: (x * 255).round().to(torch.uint8) if x.dtype != torch.uint8 else x  # noqa: E731
    payload = {"x": as_bytes(splits.x_train[:len(splits.y_train)][subset]), "y": labels, "fold": folds,
               "unlabelled": as_bytes(splits.x_train[:len(splits.y_train)][others]),
               "cell": {"labels": n_labels, "seed": seed, "split_seed": split_seed, "val_size": val_size}}
    if stack is not None:
        payload["stack"] = torch.load(stack, weights_only=True)  # [{"0.weight": ..., "0.bias": ...}, ...]
    torch.save(payload, out)
    print(f"wrote {out}: {n_labels} labelled images in {FOLDS} folds, {int(others.sum())} unlabelled")


# ---------------------------------------------------------------- the batched members
class Members:
    """M dense ReLU classifiers with batch norm, as batched tensors: weight [M, in, out]."""

    def __init__(self, m: int, widths: list[int], n_classes: int, inits: list[str], stack, device, generator,
                 batch_norm: bool = True):
        self.batch_norm = batch_norm
        self.weights, self.biases, self.gammas, self.betas, self.means, self.vars = [], [], [], [], [], []
        for layer, (n_in, n_out) in enumerate(zip(widths[:-1], widths[1:])):
            w = torch.empty(m, n_in, n_out)
            b = torch.zeros(m, 1, n_out)
            for i, init in enumerate(inits):
                if init == "pretrained":
                    w[i] = stack[layer]["0.weight"].t()
                    b[i, 0] = stack[layer]["0.bias"]
                else:  # scratch_classifier: He-normal (fan in) for ReLU, zero bias
                    w[i] = torch.randn(n_in, n_out, generator=generator) * math.sqrt(2.0 / n_in)
            self.weights.append(w.to(device).requires_grad_())
            self.biases.append(b.to(device).requires_grad_())
            self.gammas.append(torch.ones(m, 1, n_out, device=device, requires_grad=True))
            self.betas.append(torch.zeros(m, 1, n_out, device=device, requires_grad=True))
            self.means.append(torch.zeros(m, 1, n_out, device=device))
            self.vars.append(torch.ones(m, 1, n_out, device=device))
        bound = 1 / math.sqrt(widths[-1])  # nn.Linear's default init for the output layer
        self.out_w = ((torch.rand(m, widths[-1], n_classes, generator=generator) * 2 - 1) * bound).to(device)
        self.out_b = ((torch.rand(m, 1, n_classes, generator=generator) * 2 - 1) * bound).to(device)
        self.out_w.requires_grad_()
        self.out_b.requires_grad_()
        self.momentum = BN_MOMENTUM

    def parameters(self) -> list[torch.Tensor]:
        norms = [*self.gammas, *self.betas] if self.batch_norm else []
        return [*self.weights, *self.biases, *norms, self.out_w, self.out_b]

    def forward(self, x: torch.Tensor, train: bool = True, update: bool = True, stats: list | None = None,
                record: list | None = None) -> torch.Tensor:
        """train: batch statistics (moving the running ones where update), or with `stats` those
        given (a clean pass's, recorded in `record`); else the running statistics."""
        h = x
        for i, (w, b, g, be) in enumerate(zip(self.weights, self.biases, self.gammas, self.betas)):
            z = torch.baddbmm(b, h, w)
            if not self.batch_norm:
                h = torch.relu(z)
                continue
            if stats is not None:
                mean, var = stats[i]
            elif train:
                mean, var = z.mean(1, keepdim=True), z.var(1, unbiased=False, keepdim=True)
                if record is not None:
                    record.append((mean.detach(), var.detach()))
                if update:
                    with torch.no_grad():
                        n = z.shape[1]
                        self.means[i].lerp_(mean, self.momentum)
                        self.vars[i].lerp_(var * n / max(n - 1, 1), self.momentum)
            else:
                mean, var = self.means[i], self.vars[i]
            h = torch.relu((z - mean) * torch.rsqrt(var + BN_EPS) * g + be)
        return torch.baddbmm(self.out_b, h, self.out_w)

    @torch.no_grad()
    def keep_pretrained_function(self, x: torch.Tensor, pretrained: torch.Tensor) -> None:
        """keep_pretrained_function_ for the members whose init is pretrained (mask [M])."""
        if not self.batch_norm:
            return
        h = x
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = torch.baddbmm(b, h, w)
            mean, var = z.mean(1, keepdim=True), z.var(1, unbiased=False, keepdim=True)
            keep = pretrained.view(-1, 1, 1)
            self.gammas[i].copy_(torch.where(keep, (var + BN_EPS).sqrt(), self.gammas[i]))
            self.betas[i].copy_(torch.where(keep, mean, self.betas[i]))
            self.means[i].copy_(torch.where(keep, mean, self.means[i]))
            self.vars[i].copy_(torch.where(keep, var, self.vars[i]))
            h = torch.relu((z - mean) * torch.rsqrt(var + BN_EPS) * self.gammas[i] + self.betas[i])


def _unit(d: torch.Tensor) -> torch.Tensor:
    return d / d.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def _kl(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL(target || softmax(logits)) per member (averaged over its images): [M]."""
    log_q = F.log_softmax(logits.float(), dim=-1)
    return (target.exp() * (target - log_q)).sum(-1).mean(-1)


def run_group(cell: dict, group: dict, device: torch.device, seed: int, log) -> list[dict]:
    """Every (setting, fold) of a group as one batched training; the held-out error curve of each."""
    settings = [dict(zip(group["grid"], values)) for values in itertools.product(*group["grid"].values())]
    members = [(s, fold) for s in settings for fold in group.get("folds", range(FOLDS))]
    m, steps, u_batch = len(members), group["steps"], group["unlabelled_batch"]
    generator = torch.Generator().manual_seed(seed)
    widths = [cell["x"].shape[1], *group["sizes"]]
    inits = [s["init"] for s, _ in members]
    net = Members(m, widths, int(cell["y"].max()) + 1, inits, cell.get("stack"), device, generator,
                  group.get("batch_norm", True))
    to_unit = lambda x: x.to(device, torch.float32) / 255  # noqa: E731
    x, y, folds = to_unit(cell["x"]), cell["y"].to(device), cell["fold"].to(device)
    pool = cell["unlabelled"]
    train_idx = torch.stack([(folds != fold).nonzero().flatten() for _, fold in members])   # [M, n_train]
    held_idx = torch.stack([(folds == fold).nonzero().flatten() for _, fold in members])    # [M, n_held]
    x_train, y_train, x_held, y_held = x[train_idx], y[train_idx], x[held_idx], y[held_idx]
    eps = torch.tensor([s["epsilon"] for s, _ in members], device=device).view(m, 1, 1)
    ent = torch.tensor([s["entropy"] for s, _ in members], device=device)
    weight = torch.tensor([s.get("weight", 1.0) for s, _ in members], device=device)  # 0: labels alone
    pretrained = torch.tensor([s["init"] == "pretrained" for s, _ in members], device=device)
    calibration = torch.randperm(len(pool), generator=torch.Generator().manual_seed(cell["cell"]["seed"]))
    net.keep_pretrained_function(to_unit(pool[calibration[:CALIBRATION_IMAGES]]).expand(m, -1, -1), pretrained)
    pool = pool.to(device)
    opt = torch.optim.Adam(net.parameters(), lr=group["lr"], fused=device.type == "cuda")
    begin, beta1 = group["decay_start"] * steps, group.get("decay_beta1")
    draws = torch.Generator(device=device).manual_seed(seed + 1)
    curves = [[] for _ in members]
    started = time.perf_counter()

    def score(step: int) -> None:
        with torch.no_grad():
            logits = net.forward(x_held, train=False)
            if group.get("debug"):  # the same images normalised with a joint batch's own statistics
                batch = to_unit(pool[:256]).expand(m, -1, -1)
                joint = net.forward(torch.cat([x_held, batch], dim=1), update=False)[:, :x_held.shape[1]]
                print("  train-mode held-out error", [round(v, 2) for v in
                      (joint.argmax(-1) != y_held).float().mean(-1).tolist()],
                      "labelled error", [round(v, 2) for v in (net.forward(x_train, train=False).argmax(-1)
                                                               != y_train).float().mean(-1).tolist()], flush=True)
            wrong = (logits.argmax(-1) != y_held).float().mean(-1)
            nll = F.cross_entropy(logits.transpose(1, 2), y_held, reduction="none").mean(-1)
        for i in range(m):
            curves[i].append({"step": step, "error": wrong[i].item(), "nll": nll[i].item()})

    n_train = x_train.shape[1]
    for step in range(1, steps + 1):
        xu = to_unit(pool[torch.randint(len(pool), (u_batch,), device=device, generator=draws)]).expand(m, -1, -1)
        # labelled and unlabelled images in one pass: one set of batch statistics for both (with two,
        # the net fits the labels under the labelled batch's statistics and flattens the rest)
        stats: list = []
        logits = net.forward(torch.cat([x_train, xu], dim=1), record=stats)
        ce = F.cross_entropy(logits[:, :n_train].transpose(1, 2), y_train, reduction="none").mean(-1)  # [M]
        clean = F.log_softmax(logits[:, n_train:].float(), dim=-1)
        target = clean.detach()
        d = _unit(torch.randn(m, u_batch, xu.shape[-1], device=device, generator=draws))
        for _ in range(group.get("power_iterations", 1)):
            probe = (XI * d).requires_grad_()
            (grad,) = torch.autograd.grad(_kl(net.forward(xu + probe, stats=stats), target).sum(), probe)
            d = _unit(grad)
        vat = _kl(net.forward(xu + eps * d, stats=stats), target)
        entropy = -(clean.exp() * clean).sum(-1).mean(-1)
        loss = (ce + weight * (vat + ent * entropy)).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step >= begin:  # linear_decay_: the rate falls linearly to 0, beta1 as given
            for group_ in opt.param_groups:
                group_["lr"] = group["lr"] * max(0.0, (steps - step) / (steps - begin))
                if beta1 is not None:
                    group_["betas"] = (beta1, group_["betas"][1])
        if step % group["eval_every"] == 0 or step == steps:
            score(step)
            mean_error = sum(c[-1]["error"] for c in curves) / m
            log(f"[{group['name']}] step {step}/{steps}  held-out error (mean of {m} members) "
                f"{100 * mean_error:.2f} %  {time.perf_counter() - started:.0f} s")
    return [{"group": group["name"], "setting": s, "fold": fold, "curve": curves[i],
             "seconds": time.perf_counter() - started} for i, (s, fold) in enumerate(members)]


def summarise(results: list[dict], groups: list[dict]) -> dict:
    """Mean held-out error and cross-entropy at the last step per (group, setting without init), and
    the rule's choice among the `choose` groups."""
    table: dict = {}
    for r in results:
        setting = {k: v for k, v in r["setting"].items() if k != "init"}
        key = (r["group"], json.dumps(setting, sort_keys=True))
        row = table.setdefault(key, {"group": r["group"], "setting": setting, "errors": [], "nlls": [], "by_init": {}})
        last = r["curve"][-1]
        row["errors"].append(last["error"])
        row["nlls"].append(last["nll"])
        row["by_init"].setdefault(r["setting"]["init"], []).append(last["error"])
    rows = []
    for row in table.values():
        rows.append({"group": row["group"], "setting": row["setting"],
                     "error": sum(row["errors"]) / len(row["errors"]), "nll": sum(row["nlls"]) / len(row["nlls"]),
                     "error_by_init": {k: sum(v) / len(v) for k, v in row["by_init"].items()}})
    chosen_groups = {g["name"] for g in groups if g.get("choose")}
    candidates = [r for r in rows if r["group"] in chosen_groups]
    choice = min(candidates, key=lambda r: (round(r["error"], 9), r["nll"])) if candidates else None
    return {"rows": sorted(rows, key=lambda r: (r["group"], r["error"], r["nll"])), "choice": choice}


def run(cell_path: Path, grid_path: Path, out: Path, seed: int) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_flush_denormal(True)  # sparse ReLU codes: denormals slow the CPU down badly
    torch.backends.cuda.matmul.allow_tf32 = True  # the GPU's fast fp32 path: a choice, not a measurement
    torch.backends.cudnn.allow_tf32 = True
    cell = torch.load(cell_path, weights_only=True)
    groups = json.loads(grid_path.read_text())["groups"]
    out.mkdir(parents=True, exist_ok=True)
    name = torch.cuda.get_device_name() if device.type == "cuda" else "cpu"
    print(f"device {name}; cell {cell['cell']}; {len(cell['y'])} labels, {len(cell['unlabelled'])} unlabelled",
          flush=True)
    results = []
    for group in groups:
        results += run_group(cell, group, device, seed, lambda line: print(line, flush=True))
        summary = summarise(results, groups)  # written after every group: a timeout keeps what finished
        (out / "results.json").write_text(json.dumps({"device": name, "cell": cell["cell"], "groups": groups,
                                                      "members": results, "summary": summary}))
    for row in summary["rows"]:
        print(f"{row['group']:>10}  {json.dumps(row['setting'], sort_keys=True):<60} error {100 * row['error']:5.2f} %"
              f"  nll {row['nll']:.3f}  by init {({k: round(100 * v, 2) for k, v in row['error_by_init'].items()})}")
    print("choice:", json.dumps(summary["choice"]))


def plot(results: list[Path], out: Path) -> None:
    """Held-out error against steps, averaged over the folds, one panel per group of each results
    file, one line per setting (init included)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for path in results:
        data = json.loads(path.read_text())
        for group in dict.fromkeys(m["group"] for m in data["members"]):
            panels.append((f"{path.stem}: {group}", [m for m in data["members"] if m["group"] == group]))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (title, members) in zip(axes[0], panels):
        by_setting: dict = {}
        for m in members:
            by_setting.setdefault(json.dumps(m["setting"], sort_keys=True), []).append(m["curve"])
        for setting, curves in sorted(by_setting.items()):
            steps = [p["step"] for p in curves[0]]
            mean = [100 * sum(c[i]["error"] for c in curves) / len(curves) for i in range(len(steps))]
            label = ", ".join(f"{k} {v}" for k, v in json.loads(setting).items())
            ax.plot(steps, mean, label=label, linewidth=1)
        ax.axhline(2.0, color="black", linestyle=":", linewidth=1)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("step")
        ax.set_ylabel("held-out error %, mean over folds")
        ax.set_ylim(0, 100)
        ax.legend(fontsize=5)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--stack", type=Path, help="the pretrained encoders' state dicts (a list, bottom first)")
    p.add_argument("--labels", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--val-size", type=int, default=10000)
    r = sub.add_parser("run")
    r.add_argument("cell", type=Path)
    r.add_argument("grid", type=Path)
    r.add_argument("--out", type=Path, required=True)
    r.add_argument("--seed", type=int, default=0)
    f = sub.add_parser("plot")
    f.add_argument("results", type=Path, nargs="+")
    f.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.command == "plot":
        plot(args.results, args.out)
    elif args.command == "prepare":
        prepare(args.out, args.stack, args.labels, args.seed, args.split_seed, args.val_size)
    else:
        run(args.cell, args.grid, args.out, args.seed)


if __name__ == "__main__":
    sys.exit(main())
