"""The ablation grid: what one pipeline expands to.

A pipeline with `ablation:` runs label counts (or fractions) x seeds x inits fine-tunes ("cells"),
over one pretrained stack per variant (its layer keys set on every layer). Each cell is itself a
PipelineConfig, with `ablation` cleared, `finetune` set to the cell's labels, seed and init, and
`variant` naming the stack it starts from, and its fine-tune settings in force (finetune.scratch
applied to a scratch cell): what the core trains with, as it is.
"""
from __future__ import annotations

from layerwise.config.schema import LayerConfig, PipelineConfig, UnlabelledConfig


def cells(cfg: PipelineConfig) -> list[PipelineConfig]:
    """The fine-tunes cfg runs: the ablation grid, or the one `finetune:` describes; each with its
    fine-tune settings in force (FinetuneConfig.in_force), as the core takes them."""
    if not cfg.ablation:
        return [cfg.model_copy(update={"finetune": cfg.finetune.in_force()}) if cfg.finetune else cfg]
    grid = cfg.ablation
    specs = [{"labels": n, "label_fraction": None} for n in grid.labels]
    specs += [{"labels": None, "label_fraction": f} for f in grid.label_fractions]
    stacks = {name: variant_stack(cfg, name) for name in grid.variants} or {None: cfg}
    # the scratch control has no stack: one set of its cells serves every variant
    methods = [(init, variant, stack) for init in grid.inits
               for variant, stack in (stacks.items() if init.startswith("pretrained") else [(None, cfg)])]
    return [stack.model_copy(update={"ablation": None, "variant": variant, "finetune": cfg.finetune.model_copy(
                update={**spec, "seed": seed, **init_settings(cfg, init)}).in_force()})
            for spec in specs for seed in grid.seeds for init, variant, stack in methods]


def init_settings(cfg: PipelineConfig, init: str) -> dict:
    """An ablation init as fine-tune keys: 'pretrained' / 'scratch' use no unlabelled objective (the
    plain greedy rows); 'pretrained+pseudo_label' adds that objective, with finetune.unlabelled's
    settings where it names the same objective, else the objective's defaults."""
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


def needs_stack(cfg: PipelineConfig) -> bool:
    """Whether cfg pretrains a stack: it unrolls one, or some cell fine-tunes from one."""
    return cfg.unroll is not None or any(cell.finetune.init == "pretrained" for cell in cells(cfg))
