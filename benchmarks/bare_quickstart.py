"""The quickstart pipeline's work as the shortest plain PyTorch script: the baseline of `make bench`'s
end-to-end line (benchmarks/e2e.py runs it and `layerwise run quickstart` as whole processes).

    python -m benchmarks.bare_quickstart [--data-root DIR] [--out result.json] [--device cuda]

Same data split, stack 784-1000-1000-500 (sigmoid codes, bce reconstruction + L1 on the codes,
Adam), same epochs, batches, optimizers and seeds, a validation pass after every epoch, then the
stacked encoders plus a random 10-way output layer fine-tuned on every training label (SGD with
momentum, cosine schedule, dropout), the epoch with the best validation accuracy kept, test
accuracy at the end. No Prefect, no MLflow, no stage store, no files written (but --out), no MD5
check of the data. It imports only torch and torchvision: the settings are quickstart's from
pipelines.yaml written out below (benchmarks/e2e.py checks them against load_pipeline('quickstart')
before it times anything), and the seeds and the order of random draws are the project's, so the
test error should match the pipeline's.
"""
from __future__ import annotations

import time

STARTED = time.perf_counter()

import argparse  # noqa: E402
import copy  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402
from torchvision.datasets import MNIST  # noqa: E402

IMPORTED = time.perf_counter()


def fused(device: torch.device):
    """PyTorch's one-kernel optimizer update where it has one (as the project's make_optimizer)."""
    return True if device.type in ("cpu", "cuda") else None


class BCEWithLogitsSum(torch.autograd.Function):
    """F.binary_cross_entropy_with_logits(z, x, reduction='sum') without log1p, which is not
    vectorised on the CPUs measured (the project's layerwise.nn.losses does the same; written out
    here because this script imports only torch): same value to rounding, the same gradient."""

    @staticmethod
    def forward(ctx, z, x):
        ctx.save_for_backward(z, x)
        return ((1 - x) * z - (z.clamp(max=0) - torch.log(1 + torch.exp((-z.abs()).clamp(min=-20))))).sum()

    @staticmethod
    def backward(ctx, grad):
        z, x = ctx.saved_tensors
        return (torch.sigmoid(z) - x) * grad, None


# quickstart in pipelines.yaml (the sparse_stack definition and quickstart's finetune block)
SEED = 0
DATA = {"train_size": None, "val_size": 10000, "split_seed": 0}
LAYERS = [{"input": 784, "size": 1000, "l1": 0.03, "epochs": 3, "lr": 0.001, "batch_size": 256},
          {"input": 1000, "size": 1000, "l1": 0.03, "epochs": 3, "lr": 0.001, "batch_size": 256},
          {"input": 1000, "size": 500, "l1": 0.03, "epochs": 3, "lr": 0.001, "batch_size": 256}]
LAYER_COMMON = {"activation": "sigmoid", "loss": "bce", "optimizer": "adam", "l2": 0.0, "contractive": 0.0,
                "weight_decay": 0.0, "tied": False, "denoising": None}
FINETUNE = {"init": "pretrained", "labels": "all", "seed": 0, "epochs": 15, "optimizer": "sgd", "lr": 0.3,
            "momentum": 0.9, "weight_decay": 0.0, "batch_size": 128, "schedule": "cosine", "dropout": 0.2,
            "input_dropout": 0.0, "hidden_lr_scale": 1.0, "head_epochs": 0, "min_steps": 0, "keep": "best_val"}
EVAL_BATCH = 8192  # the project's evaluation / encoding batch
N_CLASSES = 10


def load_split(root: Path, train_size: int | None, val_size: int, split_seed: int):
    """The project's split (layerwise.datasets.mnist.load_mnist): a seeded permutation of the official 60,000,
    the first val_size positions validation, the rest training, each sorted."""
    train, test = MNIST(str(root), train=True, download=False), MNIST(str(root), train=False, download=False)
    x, y = train.data.reshape(len(train.data), -1).float().div_(255.0), train.targets.long()
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(split_seed))
    pool = order[: train_size or len(x)]
    val_index, train_index = pool[:val_size].sort().values, pool[val_size:].sort().values
    x_test = test.data.reshape(len(test.data), -1).float().div_(255.0)
    return (x[train_index], y[train_index]), (x[val_index], y[val_index]), (x_test, test.targets.long())


@torch.inference_mode()
def encode(encoder: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return torch.cat([encoder(x[i:i + EVAL_BATCH]) for i in range(0, len(x), EVAL_BATCH)])


def pretrain_layer(layer: dict, index: int, x: torch.Tensor, x_val: torch.Tensor) -> tuple[nn.Module, dict]:
    """One greedy stage: an autoencoder on the codes below, validated after every epoch."""
    seed = SEED * 100 + index  # the stage's own seed (init and batch order)
    torch.manual_seed(seed)
    encoder = nn.Sequential(nn.Linear(layer["input"], layer["size"]), nn.Sigmoid()).to(x.device)
    decoder = nn.Linear(layer["size"], layer["input"]).to(x.device)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    params = list(encoder.parameters()) + list(decoder.parameters())
    opt = torch.optim.Adam(params, lr=layer["lr"], fused=fused(x.device))
    l1, batch = layer["l1"], layer["batch_size"]
    metrics = {}
    for epoch in range(1, layer["epochs"] + 1):
        t0 = time.perf_counter()
        encoder.train()
        decoder.train()
        total = torch.zeros((), device=x.device)
        for idx in torch.randperm(len(x), generator=gen).split(batch):
            xb = x[idx.to(x.device)]
            code = encoder(xb)
            recon = BCEWithLogitsSum.apply(decoder(code), xb) / len(xb)
            loss = recon + l1 * code.abs().sum(dim=1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += recon.detach() * len(idx)
        encoder.eval()
        decoder.eval()
        val_recon = code_l1 = active = 0.0
        with torch.inference_mode():  # the validation pass: reconstruction loss and code statistics
            for start in range(0, len(x_val), EVAL_BATCH):
                xb = x_val[start:start + EVAL_BATCH]
                code = encoder(xb)
                val_recon += BCEWithLogitsSum.apply(decoder(code), xb).item()
                code_l1 += code.abs().sum().item()
                active += (code.abs() > 0.1).sum().item()
        metrics = {"recon_loss": total.item() / len(x), "val_recon_loss": val_recon / len(x_val),
                   "code_l1": code_l1 / (len(x_val) * layer["size"]),
                   "code_active_frac": active / (len(x_val) * layer["size"])}
        print(f"[pretrain-{index}] epoch {epoch}/{layer['epochs']}  recon_loss {metrics['recon_loss']:.4g}  "
              f"val_recon_loss {metrics['val_recon_loss']:.4g}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    for p in encoder.parameters():
        p.requires_grad_(False)
    return encoder.eval(), metrics


class Classifier(nn.Module):
    """The stacked encoders (trainable copies) and a seeded 10-way output layer; inverted dropout
    after each hidden block with masks from the training generator."""

    def __init__(self, encoders: list[nn.Module], dropout: float, seed: int):
        super().__init__()
        self.hidden = nn.ModuleList(copy.deepcopy(e) for e in encoders)
        for p in self.hidden.parameters():
            p.requires_grad_(True)
        self.output = nn.Linear(self.hidden[-1][0].out_features, N_CLASSES)
        init = torch.Generator().manual_seed(seed)
        nn.init.kaiming_uniform_(self.output.weight, a=math.sqrt(5), generator=init)
        bound = 1 / math.sqrt(self.output.in_features)
        nn.init.uniform_(self.output.bias, -bound, bound, generator=init)
        self.dropout, self.noise = dropout, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.hidden:
            x = block(x)
            if self.training and self.dropout:
                keep = torch.rand(x.shape, generator=self.noise, dtype=x.dtype) >= self.dropout
                x = x * keep.to(x.device) / (1 - self.dropout)
        return self.output(x)


@torch.inference_mode()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    predicted = torch.cat([model(x[i:i + EVAL_BATCH]).argmax(dim=1) for i in range(0, len(x), EVAL_BATCH)])
    return (predicted == y).float().mean().item()


def finetune(encoders: list[nn.Module], train, val, ft: dict) -> tuple[nn.Module, int, float]:
    """Backprop through the whole net on every training label; keeps the best validation epoch."""
    (x, y), (x_val, y_val) = train, val
    model = Classifier(encoders, ft["dropout"], ft["seed"]).to(x.device)
    gen = torch.Generator().manual_seed(ft["seed"])
    model.noise = gen
    opt = torch.optim.SGD([{"params": list(model.hidden.parameters()), "lr": ft["lr"] * ft["hidden_lr_scale"]},
                           {"params": list(model.output.parameters()), "lr": ft["lr"]}],
                          lr=ft["lr"], momentum=ft["momentum"], weight_decay=ft["weight_decay"], fused=fused(x.device))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=ft["epochs"])
    best_acc, best_state, best_epoch = -1.0, None, 0
    for epoch in range(1, ft["epochs"] + 1):
        t0 = time.perf_counter()
        model.train()
        total = torch.zeros((), device=x.device)
        for idx in torch.randperm(len(x), generator=gen).split(ft["batch_size"]):
            idx = idx.to(x.device)
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        sched.step()
        val_acc = accuracy(model, x_val, y_val)  # the validation pass, every epoch
        if val_acc > best_acc:
            best_acc, best_state, best_epoch = val_acc, copy.deepcopy(model.state_dict()), epoch
        print(f"[finetune] epoch {epoch}/{ft['epochs']}  train_loss {total.item() / len(x):.4g}  "
              f"val_accuracy {val_acc:.4g}  ({time.perf_counter() - t0:.1f} s)", flush=True)
    model.load_state_dict(best_state)
    return model, best_epoch, best_acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", default=os.environ.get("MNIST_ROOT") or "data",
                        help="folder holding MNIST/raw (default: $MNIST_ROOT, else ./data)")
    parser.add_argument("--train-size", type=int, default=DATA["train_size"], help="as --set data.train_size")
    parser.add_argument("--pretrain-epochs", type=int, default=None, help="as --set layers.N.epochs, every layer")
    parser.add_argument("--finetune-epochs", type=int, default=FINETUNE["epochs"], help="as --set finetune.epochs")
    parser.add_argument("--out", default=None, help="write the result here as JSON")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    args = parser.parse_args()
    result = run(args)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


def run(args) -> dict:
    """The whole work on args.device (the data moved there once); the result's timings and metrics."""
    device = torch.device(args.device)
    t0 = time.perf_counter()
    torch.set_flush_denormal(True)  # as the project's configure_cpu: saturated sigmoid codes make denormals
    train, val, test = load_split(Path(args.data_root), args.train_size, DATA["val_size"], DATA["split_seed"])
    train, val, test = [tuple(t.to(device) for t in part) for part in (train, val, test)]
    loaded = time.perf_counter()
    splits = {"train": train[0], "val": val[0], "test": test[0]}
    encoders, recon = [], {}
    for index, layer in enumerate(LAYERS, start=1):
        layer = {**layer, "epochs": args.pretrain_epochs or layer["epochs"]}
        encoder, metrics = pretrain_layer(layer, index, splits["train"], splits["val"])
        recon[f"pretrain-{index}"] = metrics
        encoders.append(encoder)
        splits = {name: encode(encoder, codes) for name, codes in splits.items()}  # every split, once
    pretrained = time.perf_counter()
    ft = {**FINETUNE, "epochs": args.finetune_epochs}
    model, best_epoch, best_val = finetune(encoders, train, val, ft)
    test_accuracy = accuracy(model, *test)
    done = time.perf_counter()
    result = {"test_accuracy": test_accuracy, "test_error": 100.0 * (1.0 - test_accuracy), "best_epoch": best_epoch,
              "best_val_accuracy": best_val, "final_recon": recon, "import_seconds": IMPORTED - STARTED,
              "data_seconds": loaded - t0, "pretrain_seconds": pretrained - loaded, "finetune_seconds": done - pretrained,
              "work_seconds": done - t0, "process_seconds": done - STARTED,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(f"=== bare quickstart: test error {result['test_error']:.2f}% (accuracy {100 * test_accuracy:.2f}%, "
          f"{len(train[1])} labels, kept epoch {best_epoch}) on {device}, wall {done - STARTED:.0f} s", flush=True)
    return result


if __name__ == "__main__":
    main()
