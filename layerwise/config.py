"""Typed pipeline configuration: pipelines.yaml -> validated, resolved PipelineConfig.

Every problem with a config (broken YAML, unknown key, wrong type, inconsistent sizes) is raised
as a ConfigError whose message names the file, the pipeline and the dotted key, so the CLI can
print it and exit 2 before any data is read or any MLflow run exists.
"""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator

from layerwise.paths import DEFAULT_CONFIG

MNIST_INPUT = 784
MNIST_SHAPE = (1, 28, 28)
MNIST_CLASSES = 10
MNIST_TRAIN_IMAGES = 60_000
MNIST_TEST_IMAGES = 10_000

# Pipeline and variant names become paths and identifiers: an MLflow experiment, a folder under the
# run's workdir, Prefect run names, the registered model NAME-classifier (which refuses '/' and ':').
# Only these characters are safe in all of them; a name of dots alone ('.', '..') would walk the tree.
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
NAME_RULE = "letters A-Z a-z, digits 0-9, '.', '_' and '-' only, and not dots alone"

# Seeds go to torch.manual_seed / torch.Generator.manual_seed, pretraining stages after
# seed * 100 + stage index: keeping seeds within 0..2**31-1 keeps that arithmetic far inside what
# torch (64-bit) and numpy (32-bit) generators accept, so a seed never fails at run time.
SEED_MAX = 2**31 - 1
Seed = Annotated[int, Field(ge=0, le=SEED_MAX)]

# What a config may cost to read. pipelines.yaml is ~10 KB and expands to ~2,000 values; these limits
# leave 25-50x room and refuse, before any Python object is built, what would otherwise take minutes
# and gigabytes: a 50 MB file (pure-Python PyYAML composes ~0.5 MB/s, at ~100 bytes of memory per
# byte), or a "billion laughs" of aliases nested in aliases (684 bytes expanding 9^9-fold: the expanded
# values are deep-copied, JSON-dumped and parsed again). 256 KiB keeps the parse itself well under 1 s.
MAX_CONFIG_BYTES = 256 << 10      # the file, checked before parsing
MAX_EXPANDED_NODES = 100_000      # YAML values once every alias is expanded
MAX_EXPANDED_CHARS = 4 << 20      # their scalar characters (one long string aliased many times)
MAX_OVERRIDE_BYTES = 64 << 10     # one --set value (schedule.parameters come in the same way)


def name_problem(name: Any) -> Optional[str]:
    """Why NAME cannot name a pipeline or variant (None if it can)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or not name.strip("."):
        return f"name {name!r} is not allowed: {NAME_RULE}"
    return None


class ConfigError(ValueError):
    """A pipelines.yaml problem; the message is meant for the user as is."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(Strict):
    train_size: Optional[int] = Field(
        None, ge=20, le=MNIST_TRAIN_IMAGES,
        description="images drawn from the 60,000 training images (validation included); null = all")
    val_size: int = Field(10_000, ge=10, description="held out of the training images for model selection")
    split_seed: Seed = Field(0, description="seed of the train/validation split (kept apart from the "
                                           "fine-tune seed so one pretrained stack serves every seed)")

    @model_validator(mode="after")
    def _val_fits(self):
        pool = self.train_size or MNIST_TRAIN_IMAGES
        if self.val_size >= pool:
            raise ValueError(f"val_size ({self.val_size}) must be smaller than train_size ({pool})")
        return self

    @property
    def n_train(self) -> int:
        """Training images left once the validation split is held out."""
        return (self.train_size or MNIST_TRAIN_IMAGES) - self.val_size


Activation = Literal["sigmoid", "relu", "tanh", "linear"]
Optimizer = Literal["sgd", "adam"]


class Denoising(Strict):
    kind: Literal["mask", "gaussian"] = "mask"
    level: float = Field(..., gt=0, description="mask: fraction of inputs zeroed; gaussian: noise std")
    rescale: bool = Field(False, description="mask only: scale the kept inputs by 1/(1 - level), so the "
                                             "encoder trains on inputs as large on average as the clean "
                                             "ones it will encode (as inverted dropout does)")

    @model_validator(mode="after")
    def _mask_below_one(self):
        if self.kind == "mask" and self.level >= 1:
            raise ValueError(f"level is the fraction zeroed by masking and must be below 1, got {self.level}")
        return self


class LayerConfig(Strict):
    kind: Literal["dense", "conv"] = Field("dense", description="dense: Linear; conv: convolution + max-pooling "
                                                                "down, unpooling + transposed convolution up")
    input: Optional[int] = Field(None, ge=1, description="input width; defaults to the previous layer's size")
    size: Optional[int] = Field(None, ge=1, description="code width (dense: required; conv: resolved as "
                                                        "channels x pooled height x pooled width)")
    channels: Optional[int] = Field(None, ge=1, description="conv: feature maps")
    kernel: Optional[int] = Field(None, ge=1, description="conv: kernel size (odd; default 5, 'same' padding)")
    pool: Optional[int] = Field(None, ge=1, description="conv: max-pooling window and stride (default 2)")
    input_shape: Optional[list[int]] = Field(None, description="conv: resolved [channels, height, width] of the input")
    activation: Activation = "sigmoid"
    loss: Literal["auto", "bce", "mse"] = Field(
        "auto", description="reconstruction loss; auto = bce when the layer's input lies in [0, 1]")
    l1: float = Field(0.0, ge=0, description="weight of the L1 penalty on the code (sum over units, mean over batch)")
    l2: float = Field(0.0, ge=0, description="weight of the squared-L2 penalty on the code (keeps it near 0)")
    contractive: float = Field(0.0, ge=0, description="weight of ||dcode/dinput||_F^2 (contractive autoencoder)")
    tied: bool = Field(False, description="decoder = the encoder's weight transposed (half the weights)")
    denoising: Optional[Denoising] = Field(None, description="corrupt the input, reconstruct the clean one")
    epochs: int = Field(..., ge=1)
    optimizer: Optimizer = "adam"
    lr: float = Field(..., gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(256, ge=1)

    @model_validator(mode="after")
    def _kind_keys(self):
        conv_only = [key for key in ("channels", "kernel", "pool", "input_shape") if getattr(self, key) is not None]
        if self.kind == "dense":
            if self.size is None:
                raise ValueError("a dense layer needs size")
            if conv_only:
                raise ValueError(f"{', '.join(conv_only)}: only conv layers take these (set kind: conv)")
        else:
            if self.channels is None:
                raise ValueError("a conv layer needs channels")
            if self.contractive:
                raise ValueError("contractive is implemented for dense layers (closed-form Jacobian)")
            if self.kernel is None:
                self.kernel = 5
            if self.kernel % 2 == 0:
                raise ValueError(f"kernel must be odd ('same' padding), got {self.kernel}")
            if self.pool is None:
                self.pool = 2
        return self

    def code_shape(self, input_shape: tuple[int, ...]) -> tuple[int, ...]:
        """The code's shape for an input of input_shape (conv: [C, H, W]; dense: [width])."""
        if self.kind == "dense":
            return (self.size,)
        _, height, width = input_shape
        return (self.channels, height // self.pool, width // self.pool)


class Optimization(Strict):
    """Epochs of minibatch gradient steps: the settings every end-to-end training shares."""
    epochs: int = Field(..., ge=1)
    optimizer: Optimizer = "sgd"
    lr: float = Field(..., gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(128, ge=1)
    schedule: Literal["constant", "cosine"] = "cosine"


class TrainingConfig(Optimization):
    """How the classifier is trained (the knobs an init may need its own values of)."""
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the hidden layers while fine-tuning")
    input_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the input pixels while fine-tuning")
    hidden_lr_scale: float = Field(1.0, gt=0, description="the hidden layers learn at lr * this; < 1 keeps "
                                                           "pretrained features from being washed out")
    head_epochs: int = Field(0, ge=0, description="epochs training only the output layer before all layers")
    min_steps: int = Field(0, ge=0, description="at least this many optimizer steps: small labelled sets "
                                                "get more epochs")
    keep: Literal["best_val", "last"] = Field(
        "best_val", description="best_val: the epoch with the best validation accuracy; last: the final "
                                "weights (no model selection, for honest few-label cells)")

    def epochs_for(self, n_examples: int) -> int:
        steps_per_epoch = -(-n_examples // self.batch_size)
        return max(self.epochs, -(-self.min_steps // steps_per_epoch))


def _partial(model: type[BaseModel], name: str) -> type[BaseModel]:
    """The same fields and constraints, each optional with default None (an override block)."""
    fields = {}
    for key, info in model.model_fields.items():
        optional = copy.copy(info)
        optional.default = None
        fields[key] = (Optional[info.annotation], optional)
    return create_model(name, __base__=Strict, **fields)


TrainingOverrides = _partial(TrainingConfig, "TrainingOverrides")


class FinetuneConfig(TrainingConfig):
    init: Literal["pretrained", "scratch"] = "pretrained"
    labels: Union[int, Literal["all"], None] = Field(None, description="labelled images, class-balanced; 'all' = every training image")
    label_fraction: Optional[float] = Field(None, gt=0, le=1, description="alternative to labels: a fraction of the training images")
    seed: Seed = Field(0, description="draws the labelled subset, the output layer and the batch order")
    scratch: Optional[TrainingOverrides] = Field(
        None, description="training settings that replace the ones above when init is scratch: random "
                          "init wants its own optimizer and learning rate")

    def in_force(self) -> "FinetuneConfig":
        """The settings this init trains with (scratch overrides applied)."""
        if self.init != "scratch" or self.scratch is None:
            return self
        return self.model_copy(update=self.scratch.model_dump(exclude_none=True))

    @model_validator(mode="after")
    def _one_label_spec(self):
        if self.labels is not None and self.label_fraction is not None:
            raise ValueError("give either labels or label_fraction, not both")
        return self


LabelSpec = Union[int, Literal["all"]]


class AblationConfig(Strict):
    """A grid of fine-tunes over one pretrained stack: label counts x seeds x inits."""
    labels: list[LabelSpec] = Field(default_factory=list, description="label counts (or 'all')")
    label_fractions: list[float] = Field(default_factory=list, description="fractions in (0, 1]")
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    inits: list[Literal["pretrained", "scratch"]] = Field(default_factory=lambda: ["pretrained", "scratch"],
                                                          min_length=1)
    workers: int = Field(2, ge=1, description="cells fine-tuned at once")
    threads_per_worker: Optional[int] = Field(None, ge=1, description="torch threads per cell; "
                                                                      "default: cores // workers")
    runner: Literal["threads", "dask"] = "threads"
    address: Optional[str] = Field(None, description="Dask scheduler address; none = a local cluster")
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="name -> layer keys set on every layer (e.g. {contractive: 0.1, l1: 0}): "
                                          "one pretrained stack per variant, each fine-tuned on the whole grid")

    @field_validator("variants")
    @classmethod
    def _variant_names(cls, value: dict):
        for name in value:  # a variant's name is a folder and a tag, as a pipeline's is
            if name in ("pretrained", "scratch"):
                raise ValueError(f"variant name {name!r} must be a word other than pretrained/scratch")
            if name_problem(name):
                raise ValueError(f"variant {name_problem(name)} (it names a folder and runs)")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        if not self.labels and not self.label_fractions:
            raise ValueError("give labels and/or label_fractions")
        for fraction in self.label_fractions:
            if not 0 < fraction <= 1:
                raise ValueError(f"label_fractions must lie in (0, 1], got {fraction}")
        if self.address and self.runner != "dask":
            raise ValueError("address is the Dask scheduler's: set runner: dask")
        return self


class ScheduleConfig(Strict):
    """When `layerwise serve` runs the pipeline as a Prefect deployment."""
    cron: str = Field(..., description="cron string, e.g. '0 2 * * *' (02:00 every day)")
    timezone: str = Field("UTC", description="IANA zone the cron is read in, e.g. Europe/Berlin")
    parameters: dict[str, Any] = Field(default_factory=dict,
                                       description="dotted.key: value overrides for scheduled runs, like --set")
    concurrency_limit: int = Field(1, ge=1, description="runs of this pipeline at once (1: never overlap)")

    @field_validator("cron", "timezone")
    @classmethod
    def _prefect_accepts(cls, value: str, info):
        # Prefect's own schedule model is the judge of cron and timezone strings
        from prefect.client.schemas.schedules import CronSchedule

        try:
            CronSchedule(**{"cron": "0 0 * * *", info.field_name: value})
        except ValidationError as exc:
            raise ValueError("; ".join(e["msg"].removeprefix("Value error, ") for e in exc.errors())) from None
        return value

    def overrides(self) -> list[str]:
        """The parameters as --set strings (values as JSON, which YAML reads back unchanged)."""
        return [f"{key}={json.dumps(value)}" for key, value in self.parameters.items()]


class UnrollConfig(Optimization):
    """Fine-tune the pretrained stack as one deep autoencoder (encoders, then the decoders in reverse)
    on reconstruction, and compare it with PCA to the same code size."""
    optimizer: Optimizer = "adam"
    l2: float = Field(0.0, ge=0, description="squared-L2 penalty on the middle code (keeps it near 0)")
    grid_digits: int = Field(10, ge=1, le=50, description="test digits in the originals / PCA / autoencoder grid")
    decode_grid: int = Field(15, ge=2, le=40, description="2-d codes only: n x n regular grid of codes decoded")


class RetrievalConfig(Strict):
    """Nearest-neighbour search, test queries against the training images, in code and pixel space."""
    k: int = Field(10, ge=1, le=100, description="precision@k: the share of the k nearest with the query's label")
    queries: Optional[int] = Field(None, ge=1, description="test images used as queries; null = all 10,000")
    figure_queries: int = Field(6, ge=1, le=20, description="queries shown with their hits in the figure")


class PipelineConfig(Strict):
    description: str = ""
    seed: Seed = Field(0, description="seed of pretraining (weights init and batch order)")
    data: DataConfig = Field(default_factory=DataConfig)
    layers: list[LayerConfig] = Field(..., min_length=1)
    finetune: Optional[FinetuneConfig] = None
    unroll: Optional[UnrollConfig] = None
    ablation: Optional[AblationConfig] = None
    retrieval: Optional[RetrievalConfig] = None
    schedule: Optional[ScheduleConfig] = None
    variant: Optional[str] = Field(None, description="set on the cells of an ablation with variants: the "
                                                     "variant whose layers this config holds")

    @field_validator("variant")
    @classmethod
    def _variant_is_a_name(cls, value: Optional[str]):
        if value is not None and name_problem(value):  # the cells' folder is workdir / variant
            raise ValueError(f"variant {name_problem(value)} (it names a folder and runs)")
        return value

    @model_validator(mode="after")
    def _resolve(self):
        shape, in_unit_range = MNIST_SHAPE, True  # pixels are scaled to [0, 1]
        for i, layer in enumerate(self.layers):
            width = _width(shape)
            if layer.input is not None and layer.input != width:
                where = "the MNIST image size" if i == 0 else f"layers.{i - 1}.size"
                raise ValueError(f"layers.{i}.input is {layer.input} but {where} is {width}")
            layer.input = width
            if layer.kind == "conv":
                if len(shape) != 3:
                    raise ValueError(f"layers.{i} is a conv layer on the flat codes of dense layers.{i - 1}: "
                                     f"conv layers come first")
                code = layer.code_shape(shape)
                if min(code[1:]) < 1:
                    raise ValueError(f"layers.{i}.pool {layer.pool} is larger than its {shape[1]}x{shape[2]} input")
                if layer.size is not None and layer.size != _width(code):
                    raise ValueError(f"layers.{i}.size is {layer.size} but a conv layer's code has "
                                     f"{code[0]}x{code[1]}x{code[2]} = {_width(code)} values (leave size out)")
                if layer.input_shape is not None and list(layer.input_shape) != list(shape):
                    raise ValueError(f"layers.{i}.input_shape is {layer.input_shape} but its input is {list(shape)}")
                layer.input_shape, layer.size = list(shape), _width(code)
            if layer.loss == "auto":
                layer.loss = "bce" if in_unit_range else "mse"
            shape, in_unit_range = layer.code_shape(shape), layer.activation == "sigmoid"
        if (self.finetune is None) == (self.unroll is None):
            raise ValueError("give finetune (train a classifier on labels) or unroll (fine-tune the stack as one "
                             "deep autoencoder), one of the two")
        if self.ablation and self.finetune is None:
            raise ValueError("ablation fine-tunes classifiers: it needs finetune, not unroll")
        if self.unroll and self.layers[-1].kind == "conv":
            raise ValueError("unroll needs a dense code layer last")
        if self.ablation:
            for name, changes in self.ablation.variants.items():
                for i, layer in enumerate(self.layers):
                    try:
                        LayerConfig.model_validate({**layer.model_dump(), **changes})
                    except ValidationError as exc:
                        raise ValueError(f"ablation.variants.{name} on layers.{i}: "
                                         f"{_describe_errors(exc.errors(), LayerConfig)}") from None
        if self.finetune is None:
            return self
        n_train = self.data.n_train
        counts = [("finetune.labels", self.finetune.labels)]
        if self.ablation:
            counts += [(f"ablation.labels.{i}", n) for i, n in enumerate(self.ablation.labels)]
        for key, count in counts:
            if isinstance(count, int) and not MNIST_CLASSES <= count <= n_train:
                raise ValueError(f"{key} is {count} but must lie between {MNIST_CLASSES} (one per class) and "
                                 f"{n_train} (the training images left after data.val_size={self.data.val_size})")
        return self

    @property
    def sizes(self) -> list[int]:
        return [MNIST_INPUT] + [layer.size for layer in self.layers]

    def shape_text(self) -> str:
        """The stack's shape for humans: 784-1000-500, with conv layers as 16c5p2."""
        parts = [str(MNIST_INPUT)] + [f"{layer.channels}c{layer.kernel}p{layer.pool}" if layer.kind == "conv"
                                      else str(layer.size) for layer in self.layers]
        return "-".join(parts)

    def cells(self) -> list["PipelineConfig"]:
        """The fine-tunes this pipeline runs: the ablation grid, or the one `finetune:` describes."""
        if not self.ablation:
            return [self]
        grid = self.ablation
        specs = [{"labels": n, "label_fraction": None} for n in grid.labels]
        specs += [{"labels": None, "label_fraction": f} for f in grid.label_fractions]
        stacks = {name: self.variant_stack(name) for name in grid.variants} or {None: self}
        # the scratch control has no stack: one set of its cells serves every variant
        methods = [(init, variant, stack) for init in grid.inits
                   for variant, stack in (stacks.items() if init == "pretrained" else [(None, self)])]
        return [stack.model_copy(update={"ablation": None, "variant": variant, "finetune": self.finetune.model_copy(
                    update={**spec, "seed": seed, "init": init})})
                for spec in specs for seed in grid.seeds for init, variant, stack in methods]

    def variant_stack(self, name: str) -> "PipelineConfig":
        """This pipeline with ablation variant NAME's keys set on every layer."""
        changes = self.ablation.variants[name]
        layers = [LayerConfig.model_validate({**layer.model_dump(), **changes}) for layer in self.layers]
        return self.model_copy(update={"layers": layers, "variant": name})

    def stacks(self) -> list["PipelineConfig"]:
        """The pretrained stacks this pipeline needs: one per ablation variant, else its own."""
        if self.ablation and self.ablation.variants:
            return [self.variant_stack(name) for name in self.ablation.variants]
        return [self]

    def method(self) -> str:
        """What a fine-tune starts from: scratch, pretrained, or the variant's name."""
        return self.variant if self.finetune.init == "pretrained" and self.variant else self.finetune.init

    def cell_name(self) -> str:
        """How a fine-tune is named in logs and Prefect: method-labels-seed."""
        return f"{self.method()}-{self.n_labels()}-seed{self.finetune.seed}"

    def n_labels(self) -> int:
        """How many labelled images fine-tuning uses."""
        ft, n_train = self.finetune, self.data.n_train
        if ft.label_fraction is not None:
            return max(MNIST_CLASSES, round(ft.label_fraction * n_train))
        if ft.labels is None or ft.labels == "all":
            return n_train
        return ft.labels

    def pretrain_dict(self) -> dict:
        """What determines the pretrained stack (and nothing that does not)."""
        return {"seed": self.seed, "data": self.data.model_dump(),
                "layers": [layer.model_dump() for layer in self.layers]}


def _width(shape: tuple[int, ...]) -> int:
    width = 1
    for extent in shape:
        width *= extent
    return width


# ---------------------------------------------------------------------------------------------
# Loading and overrides


def _field_path(loc: tuple) -> tuple:
    """The loc without pydantic's union-member tags ('int', "literal['all']", ...)."""
    return tuple(part for part in loc
                 if isinstance(part, int) or ("[" not in part and part not in _TYPE_TAGS))


_TYPE_TAGS = {"int", "float", "str", "bool", "none", "list", "dict"}


def _describe_errors(errors: list[dict], model: type[BaseModel]) -> str:
    """One phrase per offending key; alternatives of a union are joined with 'or'."""
    grouped: dict[tuple, list[str]] = {}
    for err in errors:
        path = _field_path(err["loc"])
        grouped.setdefault(path, [])
        text = _describe(err, path, model)
        if text not in grouped[path]:
            grouped[path].append(text)
    phrases = []
    for path, texts in grouped.items():
        key = ".".join(str(part) for part in path)
        got = next((f" (got {e['input']!r})" for e in errors if _field_path(e["loc"]) == path
                    and e["type"] not in ("extra_forbidden", "missing") and "input" in e
                    and not isinstance(e["input"], (dict, list)) and e["loc"]), "")
        body = " or ".join(texts) + got
        phrases.append(f"{key}: {body}" if key else body)
    return "; ".join(phrases)


def _describe(err: dict, path: tuple, model: type[BaseModel]) -> str:
    if err["type"] == "extra_forbidden":
        allowed = _allowed_keys(model, path[:-1])
        return "unknown key" + (f" (allowed: {', '.join(allowed)})" if allowed else "")
    if err["type"] == "missing":
        return "required key is missing"
    return err["msg"].removeprefix("Value error, ")


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    """The keys a nested model accepts at loc (list indices skipped)."""
    current: Any = model
    for part in loc:
        if isinstance(part, int):
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation) -> Optional[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def read_pipelines_file(path: Path | str = DEFAULT_CONFIG) -> dict[str, dict]:
    """The raw mapping of pipeline name -> dict, with YAML and shape errors as ConfigError."""
    path = Path(path)
    try:
        with path.open("rb") as file:
            data = file.read(MAX_CONFIG_BYTES + 1)  # never more: a huge file is refused unread
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: the config file is over {MAX_CONFIG_BYTES // 1024} KiB; "
                          f"refusing to parse it (the shipped pipelines.yaml is ~10 KiB)")
    try:
        doc = safe_yaml(data, str(path))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f": line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(str(getattr(exc, "problem", None) or exc).split())  # one line
        raise ConfigError(f"{path}{where}: broken YAML: {problem}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("pipelines"), dict):
        raise ConfigError(f"{path}: expected a top-level 'pipelines:' mapping of name -> pipeline")
    extra = set(doc) - {"pipelines", "definitions"}
    if extra:
        raise ConfigError(f"{path}: unknown top-level key(s) {sorted(extra)} (allowed: pipelines, definitions)")
    for name, body in doc["pipelines"].items():
        if name_problem(name):
            raise ConfigError(f"{path}: pipeline {name_problem(name)} (it names a folder, the MLflow "
                              f"experiment and the registered model NAME-classifier)")
        if not isinstance(body, dict):
            raise ConfigError(f"{path}: pipeline '{name}': expected a mapping, got {type(body).__name__}")
    return doc["pipelines"]


def safe_yaml(text: str | bytes, where: str) -> Any:
    """yaml.safe_load, refusing (ConfigError naming `where`) a document that would expand beyond
    MAX_EXPANDED_NODES values or MAX_EXPANDED_CHARS characters, before any Python object is built."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()  # the node graph: an alias is one more edge, not a copy
        if node is None:
            return None
        _check_expansion(node, where)
        return loader.construct_document(node)
    except RecursionError:
        raise ConfigError(f"{where}: the YAML is nested too deeply") from None
    finally:
        loader.dispose()


def _check_expansion(root: yaml.Node, where: str) -> None:
    """Counts the values and scalar characters the node graph expands to, memoised per node so the
    count is linear in the distinct nodes (a billion laughs is counted in milliseconds)."""
    sizes: dict[int, Optional[tuple[int, int]]] = {}  # id(node) -> (values, characters); None: in progress

    def size(node: yaml.Node) -> tuple[int, int]:
        if id(node) in sizes:
            if sizes[id(node)] is None:
                raise ConfigError(f"{where}: line {node.start_mark.line + 1}: an alias refers to a value "
                                  f"that contains it (it would expand forever)")
            return sizes[id(node)]
        sizes[id(node)] = None
        if isinstance(node, yaml.ScalarNode):
            values, chars = 1, len(node.value)
        else:
            children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
            counts = [size(child) for child in children]
            values, chars = 1 + sum(c[0] for c in counts), sum(c[1] for c in counts)
        if values > MAX_EXPANDED_NODES or chars > MAX_EXPANDED_CHARS:
            raise ConfigError(f"{where}: line {node.start_mark.line + 1}: the YAML holds more than "
                              f"{MAX_EXPANDED_NODES:,} values or {MAX_EXPANDED_CHARS >> 20} MiB of text, each "
                              f"alias (*name) counted as the value it repeats; refusing it")
        sizes[id(node)] = (values, chars)
        return values, chars

    size(root)


def apply_overrides(raw: dict, overrides: list[str], where: str) -> dict:
    """Apply `dotted.key=value` overrides (values parsed as YAML) to a copy of raw."""
    result = copy.deepcopy(raw)
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"{where}: --set expects dotted.key=value, got {item!r}")
        if len(text.encode()) > MAX_OVERRIDE_BYTES:
            raise ConfigError(f"{where}: --set {key}: the value is over {MAX_OVERRIDE_BYTES // 1024} KiB; refusing it")
        try:
            value = safe_yaml(text, f"{where}: --set {key}")
        except yaml.YAMLError:
            raise ConfigError(f"{where}: --set {key}: value {text!r} is not valid YAML") from None
        parts = key.strip().split(".")
        node: Any = result
        for depth, part in enumerate(parts[:-1]):
            node = _step(node, part, ".".join(parts[: depth + 1]), where, create=True)
        _assign(node, parts[-1], value, key, where)
    return result


def _step(node, part, dotted, where, create):
    if isinstance(node, list):
        index = _index(node, part, dotted, where)
        return node[index]
    if not isinstance(node, dict):
        raise ConfigError(f"{where}: --set {dotted}: {type(node).__name__} has no key {part!r}")
    if part not in node or node[part] is None:
        node[part] = {}
    return node[part]


def _assign(node, part, value, dotted, where):
    if isinstance(node, list):
        node[_index(node, part, dotted, where)] = value
    elif isinstance(node, dict):
        node[part] = value
    else:
        raise ConfigError(f"{where}: --set {dotted}: cannot set a key inside a {type(node).__name__}")


def _index(node: list, part: str, dotted: str, where: str) -> int:
    if not part.lstrip("-").isdigit() or not -len(node) <= int(part) < len(node):
        raise ConfigError(f"{where}: --set {dotted}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def validate_pipeline(name: str, raw: dict, source: str = "pipelines.yaml") -> PipelineConfig:
    try:
        cfg = PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: pipeline '{name}': {_describe_errors(exc.errors(), PipelineConfig)}") from None
    if cfg.schedule and cfg.schedule.parameters:
        # a scheduled run must not be the first to find out that its overrides are invalid
        where = f"{source}: pipeline '{name}' schedule.parameters"
        scheduled = {key: value for key, value in raw.items() if key != "schedule"}
        try:
            PipelineConfig.model_validate(apply_overrides(scheduled, cfg.schedule.overrides(), where))
        except ValidationError as exc:
            raise ConfigError(f"{where}: {_describe_errors(exc.errors(), PipelineConfig)}") from None
    return cfg


def load_pipeline(name: str, path: Path | str = DEFAULT_CONFIG, overrides: list[str] = ()) -> PipelineConfig:
    pipelines = read_pipelines_file(path)
    if name not in pipelines:
        raise ConfigError(f"{path}: no pipeline named '{name}' (defined: {', '.join(pipelines) or 'none'})")
    where = f"{path}: pipeline '{name}'"
    return validate_pipeline(name, apply_overrides(pipelines[name], list(overrides), where), str(path))


def load_all(path: Path | str = DEFAULT_CONFIG) -> dict[str, PipelineConfig]:
    """Validate every pipeline in the file; the first bad one raises."""
    return {name: validate_pipeline(name, raw, str(path)) for name, raw in read_pipelines_file(path).items()}


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists -> {'a.b.0.c': value}, the form MLflow params take."""
    if isinstance(tree, BaseModel):
        tree = tree.model_dump()
    if isinstance(tree, dict):
        items = tree.items()
    elif isinstance(tree, list):
        items = enumerate(tree)
    else:
        return {prefix: tree}
    flat: dict[str, Any] = {}
    for key, value in items:
        flat.update(flatten(value, f"{prefix}.{key}" if prefix else str(key)))
    return flat
