"""The ablation grid: what one pipeline expands to.

A pipeline with `ablation:` runs label counts (or fractions) x seeds x inits fine-tunes ("cells"),
over one pretrained stack per variant (its layer keys set on every layer). Each cell is itself a
PipelineConfig, with `ablation` cleared, `finetune` set to the cell's labels, seed and init, and
`variant` naming the stack it starts from. PipelineConfig.cells() / stacks() / variant_stack() /
method() / cell_name() call these functions.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from layerwise.config.schema import LayerConfig

if TYPE_CHECKING:
    from layerwise.config.schema import PipelineConfig


def cells(cfg: PipelineConfig) -> list[PipelineConfig]:
    """The fine-tunes cfg runs: the ablation grid, or the one `finetune:` describes."""
    if not cfg.ablation:
        return [cfg]
    grid = cfg.ablation
    specs = [{"labels": n, "label_fraction": None} for n in grid.labels]
    specs += [{"labels": None, "label_fraction": f} for f in grid.label_fractions]
    stacks = {name: variant_stack(cfg, name) for name in grid.variants} or {None: cfg}
    # the scratch control has no stack: one set of its cells serves every variant
    methods = [(init, variant, stack) for init in grid.inits
               for variant, stack in (stacks.items() if init.startswith("pretrained") else [(None, cfg)])]
    return [stack.model_copy(update={"ablation": None, "variant": variant, "finetune": cfg.finetune.model_copy(
                update={**spec, "seed": seed, **init_settings(cfg, init)})})
            for spec in specs for seed in grid.seeds for init, variant, stack in methods]


def init_settings(cfg: PipelineConfig, init: str) -> dict:
    """An ablation init as fine-tune keys: 'pretrained' / 'scratch' use no unlabelled objective (the
    plain greedy rows); 'pretrained+pseudo_label' adds that objective, with finetune.unlabelled's
    settings where it names the same objective, else the objective's defaults."""
    from layerwise.config.schema import UnlabelledConfig

    base, _, objective = init.partition("+")
    if not objective:
        return {"init": base, "unlabelled": None}
    given = cfg.finetune.unlabelled
    same = given is not None and given.objective == objective
    return {"init": base, "unlabelled": given if same else UnlabelledConfig(objective=objective)}


def variant_stack(cfg: PipelineConfig, name: str) -> PipelineConfig:
    """cfg with ablation variant NAME's keys set on every layer."""
    changes = cfg.ablation.variants[name]
    layers = [LayerConfig.model_validate({**layer.model_dump(), **changes}) for layer in cfg.layers]
    return cfg.model_copy(update={"layers": layers, "variant": name})


def stacks(cfg: PipelineConfig) -> list[PipelineConfig]:
    """The pretrained stacks cfg needs: one per ablation variant, else its own."""
    if cfg.ablation and cfg.ablation.variants:
        return [variant_stack(cfg, name) for name in cfg.ablation.variants]
    return [cfg]


def method(cell: PipelineConfig) -> str:
    """What a fine-tune starts from (scratch, pretrained, or the variant's name) and, after a '+',
    the unlabelled objective it adds."""
    start = cell.variant if cell.finetune.init == "pretrained" and cell.variant else cell.finetune.init
    return start + (f"+{cell.finetune.unlabelled.objective}" if cell.finetune.unlabelled else "")


def cell_name(cell: PipelineConfig) -> str:
    """How a fine-tune is named in logs and Prefect: method-labels-seed."""
    return f"{method(cell)}-{cell.n_labels()}-seed{cell.finetune.seed}"
