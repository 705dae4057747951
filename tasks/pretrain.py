"""One greedy pretraining stage: train an autoencoder on the previous codes (or reuse the identical
stage trained before), freeze it, encode every split once."""
from __future__ import annotations

import time
from dataclasses import dataclass

from prefect import task
from prefect.cache_policies import NO_CACHE

from layerwise.config import LayerConfig, PipelineConfig, flatten
from layerwise.machine.cpu import configure_cpu
from layerwise.nn.transfer import freeze
from layerwise.paths import work_root
from layerwise.store.cache import Store, stage_key
from layerwise.store.checkpoint import load_encoder, save_stage
from layerwise.train.autoencoder import train_stage
from layerwise.train.evaluate import Splits, encode_splits
from layerwise.train.stack import Stage, pretrain_stack
from tasks import tracking
from tasks.context import RunContext
from tasks.logs import epoch_progress, run_logger

LINK_TAG = "layerwise.pretrain_run_id"


def stage_name(index: int) -> str:
    return f"pretrain-{index}"


def _regularisers(cfg: LayerConfig) -> str:
    """The stage's objective in a few words, for run titles (l1=0.1 mask0.5 ...)."""
    words = [f"{key}={getattr(cfg, key):g}" for key in ("l1", "l2", "contractive") if getattr(cfg, key)]
    if cfg.denoising:
        words.append(f"{cfg.denoising.kind}{cfg.denoising.level:g}")
    if cfg.tied:
        words.append("tied")
    return " ".join(words) or "plain"


def stage_store() -> Store:
    return Store(work_root() / "stages", warn=run_logger().warning)


@dataclass(frozen=True)
class StackFiles:
    """A pretrained stack as later tasks take it, possibly in other processes: its stage files
    (bottom first) and their store keys (what its cells and its unroll are keyed by)."""
    weights: tuple[str, ...] = ()
    keys: tuple[str, ...] = ()


@dataclass
class StoredStage(Stage):
    """A pipeline's stage: the core's Stage plus where its weights are stored and its MLflow runs."""
    weights: str = ""      # the stage file in the stage store (cells and the unroll load it)
    key: str = ""          # its store key
    run_id: str = ""       # this run's stage run
    trained_by: str = ""   # the run that trained the weights: run_id, or an earlier run's (reused)


@task(name="pretrain", task_run_name="pretrain-{index}", cache_policy=NO_CACHE)
def pretrain_layer(run: RunContext, layer: LayerConfig, inputs: Splits, seed: int, index: int,
                   cache_key: str) -> StoredStage:
    """One stage of the core's greedy loop (layerwise.train.stack.pretrain_stack calls it with each
    layer's inputs): reused from the stage store when an identical stage was trained before (by
    any run, maybe tracked in another store: see tasks.context.reuse_link), else trained by the core's
    train_stage; either way tracked as a child run and its splits encoded once."""
    configure_cpu()
    stage = stage_name(index)
    resolved = {"layer": layer.model_dump(), "index": index, "seed": seed, "pipeline": run.pipeline}
    store = stage_store()
    # stored on the CPU; computes on the run's device (its inputs are there, or in host memory
    # where they did not fit: layerwise.machine.device.place)
    found = store.load(cache_key, lambda entry: freeze(load_encoder(entry.file(f"{stage}.pt"))[0])
                       .to(run.torch_device))
    cached, encoder = found or (None, None)
    shape = f"{layer.channels}c{layer.kernel}p{layer.pool}" if layer.kind == "conv" else str(layer.size)
    title = f"{stage} {layer.input}→{shape} {layer.activation} {_regularisers(layer)}"
    model = result = None
    with run.child_run(title, stage, {"layerwise.stage_key": cache_key}, cached and cached.meta, LINK_TAG) as child:
        # what it trains on: every image of the run, labelled or not (the unlabelled pool included)
        child.params({**flatten(resolved), "train_images": len(inputs["train"]), "val_images": len(inputs["val"])})
        if cached:
            weights = cached.file(f"{stage}.pt")
            trained_by = cached.meta["run_id"]
            run_logger().info(f"[{stage}] reused: identical stage trained by MLflow run {trained_by} "
                              f"(key {cache_key}); no autoencoder trained")
            if child.foreign:
                child.artifact(weights)
                run_logger().info(f"[{stage}] run {trained_by} is not in this tracking store (it was tracked in "
                                  f"{cached.meta.get('tracking_uri')}): its weights are logged to this run")
            child.metrics(cached.meta["final_metrics"], step=layer.epochs)
        else:
            with epoch_progress(child.mlf, child.id) as progress:
                model, result = train_stage(layer, inputs, seed, index, progress, run.torch_device)
            local = save_stage(run.workdir / stage / f"{stage}.pt", model, resolved)
            child.artifact(local)
            weights = store.put(cache_key, {local.name: local}, {
                "run_id": child.id, "pipeline": run.pipeline, "stage": stage, "tracking_uri": tracking.tracking_uri(),
                "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S"), "seconds": result.seconds,
                "final_metrics": result.history[-1].metrics}).file(local.name)
            encoder = freeze(model.encoder)
            trained_by = child.id
        codes = encode_splits(encoder, inputs, layer.precision)
    return StoredStage(index, encoder, codes, model, result, weights=str(weights), key=cache_key, run_id=child.id,
                       trained_by=trained_by)


def pretrain_stack_tracked(cfg: PipelineConfig, run: RunContext, inputs: Splits, fingerprint: str
                           ) -> tuple[StackFiles, Splits]:
    """The core's greedy loop (layerwise.train.stack.pretrain_stack) with pretrain_layer as its
    stage: each stage a task, reused from the store or trained, tracked as a child run. Returns the
    stack as later tasks take it and the top layer's codes."""
    prefix = f"pretrain-{cfg.variant}" if cfg.variant else "pretrain"
    stage_run = run.inside(cfg.variant) if cfg.variant else run

    def stage(layer, codes, seed, index, callback):  # the task computes on run.torch_device
        key = stage_key(cfg.pretrain_dict(), index, fingerprint)
        return pretrain_layer.with_options(task_run_name=f"{prefix}-{index}")(stage_run, layer, codes, seed, index,
                                                                             key)

    stack = pretrain_stack(cfg.layers, inputs, cfg.seed, stage=stage, keep_codes=False)
    return StackFiles(tuple(s.weights for s in stack.stages), tuple(s.key for s in stack.stages)), stack.codes
