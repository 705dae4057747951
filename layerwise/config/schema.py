"""The pipeline schema: pydantic models of pipelines.yaml, its constants, and layer resolution.

Validating a PipelineConfig resolves it: every layer's input width, a conv layer's input shape and
code size, and `loss: auto` are filled in by resolve_layers (for a source whose images are not read
yet, by bound_to once the run has read them). The ablation grid a config expands to lives in grid.py
(which imports this module, never the reverse), reading and --set overrides in loading.py, the error
wording in errors.py.
Cron and timezone strings are judged next to `layerwise serve` (flows/schedules.py): the core
imports no Prefect.
"""
from __future__ import annotations

import copy
import json
import re
from typing import Annotated, Any, Literal, Optional, Union

from pydantic import BaseModel, Field, ValidationError, create_model, field_validator, model_validator

from layerwise.config.base import SEED_MAX, Seed, Strict  # noqa: F401 - importable from here
from layerwise.config.errors import describe_errors
from layerwise.config.sweep import FIXED_PREFIXES, SweepConfig

MNIST_INPUT = 784
MNIST_SHAPE = (1, 28, 28)
MNIST_CLASSES = 10
MNIST_TRAIN_IMAGES = 60_000
MNIST_TEST_IMAGES = 10_000

# Pipeline and variant names become paths and identifiers: an MLflow experiment, a folder under the
# run's workdir, Prefect run names, the registered model NAME-classifier (which refuses '/' and ':').
# Only these characters are safe in all of them; a name of dots alone ('.', '..') would walk the tree.
NAME_PATTERN = re.compile(r"[A-Za-z0-9._-]+")
DEVICE_SPEC = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
NAME_RULE = "letters A-Z a-z, digits 0-9, '.', '_' and '-' only, and not dots alone"



def name_problem(name: Any) -> Optional[str]:
    """Why NAME cannot name a pipeline or variant (None if it can)."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name) or not name.strip("."):
        return f"name {name!r} is not allowed: {NAME_RULE}"
    return None


MNIST_CLASS_NAMES = ["0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six",
                     "7 - seven", "8 - eight", "9 - nine"]  # torchvision's MNIST.classes
Source = Literal["mnist", "torchvision", "folder", "arrays"]
FOLDER_ONLY = ("channels", "image_size")


def val_count(val_size: Union[int, float], pool: int) -> int:
    """data.val_size is a count, or a fraction of the labelled images drawn (pool)."""
    return round(val_size * pool) if isinstance(val_size, float) else val_size


class DataFacts(Strict):
    """What the source holds, resolved from the data itself (statically for source: mnist) when a
    run is checked; never written by hand. Layers, class counts and label checks follow it."""
    shape: list[int] = Field(..., min_length=3, max_length=3, description="C, H, W of every image")
    classes: list[str] = Field(..., min_length=2)
    labelled: int = Field(..., ge=2, description="labelled training images (test images apart)")
    unlabelled: int = Field(0, ge=0, description="images without labels: pretraining only")
    test: int = Field(..., ge=1)


MNIST_FACTS = DataFacts(shape=list(MNIST_SHAPE), classes=MNIST_CLASS_NAMES, labelled=MNIST_TRAIN_IMAGES,
                        unlabelled=0, test=MNIST_TEST_IMAGES)
ValSize = Union[Annotated[int, Field(ge=0)], Annotated[float, Field(gt=0, lt=1)]]


class DataConfig(Strict):
    source: Source = Field("mnist", description="mnist: the official files under <data root>/MNIST/raw; "
                                                "torchvision: a dataset by name; folder: images on disk; "
                                                "arrays: an .npz file")
    name: Optional[str] = Field(None, description="torchvision: the dataset's class name, e.g. FashionMNIST, CIFAR10")
    split: Optional[str] = Field(None, description="torchvision EMNIST: byclass, bymerge, balanced, letters, "
                                                  "digits or mnist")
    path: Optional[str] = Field(None, description="folder or arrays: the folder or .npz file, absolute or "
                                                 "relative to the pipelines file's folder")
    channels: Optional[Literal[1, 3]] = Field(None, description="folder: 1 (grey) or 3 (RGB); default: as the "
                                                                "first image")
    image_size: Optional[list[int]] = Field(None, min_length=2, max_length=2,
                                            description="folder: [H, W] every image is resized to")
    test_fraction: float = Field(0.2, gt=0, lt=1, description="folder or arrays without test images: the share "
                                                              "of labelled images held out (class-balanced)")
    train_size: Optional[int] = Field(
        None, ge=2, description="labelled images drawn from the training images (validation included); null = all")
    val_size: ValSize = Field(10_000, description="held out of the labelled images for model selection: a count, "
                                                  "or a fraction of them; 0 = none (then finetune.keep: last)")
    split_seed: Seed = Field(0, description="seed of the train/validation split (kept apart from the "
                                           "fine-tune seed so one pretrained stack serves every seed)")
    found: Optional[DataFacts] = Field(None, description="resolved from the data when the run is checked "
                                                         "(leave it out)")

    @model_validator(mode="after")
    def _source_keys(self):
        needs = {"torchvision": ["name"], "folder": ["path"], "arrays": ["path"]}.get(self.source, [])
        for key in needs:
            if getattr(self, key) is None:
                raise ValueError(f"data.source {self.source} needs data.{key}")
        allowed = {"torchvision": ("name", "split"), "folder": ("path",) + FOLDER_ONLY, "arrays": ("path",)}
        for key in ("name", "split", "path") + FOLDER_ONLY:
            if getattr(self, key) is not None and key not in allowed.get(self.source, ()):
                raise ValueError(f"data.{key} is not used by data.source {self.source}")
        if self.image_size is not None and min(self.image_size) < 1:
            raise ValueError(f"data.image_size {self.image_size} must be positive [H, W]")
        if self.source == "mnist" and self.found is None:
            self.__dict__["found"] = MNIST_FACTS.model_copy()  # known without reading the files
        if self.found is not None:
            pool = self.pool
            if self.train_size is not None and self.train_size > self.found.labelled:
                raise ValueError(f"data.train_size ({self.train_size}) is more than the {self.found.labelled} "
                                 f"labelled training images")
            if self.val_count >= pool:
                raise ValueError(f"val_size ({self.val_size}) must be smaller than train_size ({pool})")
        return self

    def describe(self) -> str:
        """The data for humans: 'the official MNIST files', 'torchvision FashionMNIST', 'folder x'."""
        if self.source == "mnist":
            return "the official MNIST files"
        if self.source == "torchvision":
            return f"torchvision {self.name}" + (f" ({self.split})" if self.split else "")
        return f"{self.source} {self.path}"

    @property
    def is_mnist(self) -> bool:
        """MNIST's own images, whichever door (published MNIST results apply)."""
        return self.source == "mnist" or (self.source == "torchvision" and self.name == "MNIST")

    @property
    def pool(self) -> int:
        """Labelled images drawn (validation included)."""
        return min(self.train_size or self.found.labelled, self.found.labelled)

    @property
    def val_count(self) -> int:
        return val_count(self.val_size, self.pool)

    @property
    def n_train(self) -> int:
        """Labelled training images left once the validation split is held out."""
        return self.pool - self.val_count

    @property
    def n_classes(self) -> int:
        return len(self.found.classes)

    @property
    def width(self) -> int:
        """Inputs per image: C x H x W."""
        c, h, w = self.found.shape
        return c * h * w


Activation = Literal["sigmoid", "relu", "tanh", "linear"]
Precision = Literal["fp32", "bf16"]
Compile = Union[bool, Literal["auto"]]
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


class Steps(Strict):
    """Epochs of minibatch gradient steps and the optimizer that takes them: what every training here
    shares (a layer's autoencoder, the classifier, the unrolled stack; train/optim.py builds the
    optimizer from it). A training may default optimizer and batch_size otherwise."""
    epochs: int = Field(..., ge=1)
    optimizer: Optimizer = "sgd"
    lr: float = Field(..., gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    batch_size: int = Field(128, ge=1)
    precision: Optional[Precision] = Field(None, description="resolved from the pipeline's precision")


class LayerShape(Strict):
    """What a layer's autoencoder is: its kind, widths, activation, loss and code penalties."""
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


class LayerConfig(Steps, LayerShape):
    """One greedy stage: the autoencoder (LayerShape's keys, first) and how it trains (Steps')."""
    optimizer: Optimizer = "adam"
    batch_size: int = Field(256, ge=1)
    compile: Optional[Compile] = Field(None, description="resolved from the pipeline's compile")


class Optimization(Steps):
    """An end-to-end training's steps and their learning-rate schedule (the classifier, the unroll)."""
    schedule: Literal["constant", "cosine", "linear_decay"] = Field(
        "cosine", description="constant; cosine (annealed to 0 over the epochs); linear_decay (constant, then "
                              "falling linearly to 0 over the last steps after decay_start, step by step)")
    decay_start: float = Field(0.5, ge=0, lt=1, description="linear_decay: the share of the steps after which "
                                                            "the learning rate falls (Miyato et al. 2018: 0.5)")
    decay_beta1: Optional[float] = Field(None, ge=0, lt=1, description="linear_decay with adam: Adam's beta1 "
                                                                       "while the rate falls (Miyato et al.: 0.5)")


class TrainingConfig(Optimization):
    """How the classifier is trained (the knobs an init may need its own values of)."""
    dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the hidden layers while fine-tuning")
    input_dropout: float = Field(0.0, ge=0, lt=1, description="dropout on the input pixels while fine-tuning")
    hidden_lr_scale: float = Field(1.0, gt=0, description="the hidden layers learn at lr * this; < 1 keeps "
                                                           "pretrained features from being washed out")
    max_norm: float = Field(0.0, ge=0, description="after each step, every unit's incoming weight vector "
                                                   "(hidden and output) is scaled back to at most this L2 "
                                                   "norm (Srivastava et al. 2014's max-norm); 0: off")
    head_epochs: int = Field(0, ge=0, description="epochs training only the output layer before all layers")
    batch_norm: bool = Field(False, description="batch normalisation between each hidden layer's weights and its "
                                                "activation (dense layers); a pretrained layer's is set up to "
                                                "leave the pretrained function unchanged at the start")
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


UnlabelledObjective = Literal["pseudo_label", "reconstruction", "consistency", "virtual_adversarial"]
UNLABELLED_WEIGHTS = {"pseudo_label": 3.0, "reconstruction": 1.0, "consistency": 10.0, "virtual_adversarial": 1.0}


class UnlabelledConfig(Strict):
    """finetune.unlabelled: an objective on the training images whose labels the fine-tune does
    not have, added to the labelled loss (layerwise/unlabelled.py)."""
    objective: UnlabelledObjective = Field(..., description="pseudo_label (Lee 2013), reconstruction (the "
                                                            "pretrained decoders kept, each layer's denoising "
                                                            "loss continued), consistency (two noisy passes) or "
                                                            "virtual_adversarial (the prediction made insensitive "
                                                            "to its most sensitive input direction)")
    weight: Optional[float] = Field(None, gt=0, description="the final weight; default: pseudo_label 3 (Lee's "
                                                            "alpha_f), reconstruction 1, consistency 10, "
                                                            "virtual_adversarial 1 (Miyato's alpha)")
    ramp: list[float] = Field([0.1, 0.6], min_length=2, max_length=2,
                              description="the weight rises linearly from 0 at this share of the fine-tune's steps "
                                          "to its final value at that share (Lee's T1, T2 as shares of the run)")
    batch_size: int = Field(256, ge=1, description="unlabelled images per step")
    noise: float = Field(0.2, ge=0, lt=1, description="masking noise on unlabelled inputs (reconstruction: each "
                                                      "layer's input; consistency: each of the two passes)")
    epsilon: float = Field(1.0, gt=0, description="virtual_adversarial only: the L2 norm of the perturbation "
                                                  "(pixels in [0, 1]; chosen on MNIST validation at 100 labels)")
    entropy: float = Field(0.0, ge=0, description="virtual_adversarial only: weight of the entropy of the "
                                                  "unlabelled predictions, added to the objective (Miyato's "
                                                  "VAT+EntMin: confident predictions away from the labels)")
    power_iterations: int = Field(1, ge=1, description="virtual_adversarial only: power iterations that find "
                                                        "the most sensitive direction (Miyato et al.: 1)")

    @model_validator(mode="after")
    def _ramp_and_entropy_fit(self):
        if not 0 <= self.ramp[0] <= self.ramp[1] <= 1:
            raise ValueError(f"ramp {self.ramp} must be two shares 0 <= start <= end <= 1")
        for key in ("entropy", "power_iterations"):
            if key in self.model_fields_set and self.objective != "virtual_adversarial":
                raise ValueError(f"{key} is a virtual_adversarial setting, not one of {self.objective}")
        return self

    def weight_in_force(self) -> float:
        return self.weight if self.weight is not None else UNLABELLED_WEIGHTS[self.objective]


class FinetuneConfig(TrainingConfig):
    init: Literal["pretrained", "scratch"] = "pretrained"
    unlabelled: Optional[UnlabelledConfig] = Field(
        None, description="what the fine-tune does with the unlabelled training images (none: nothing)")
    labels: Union[int, Literal["all"], None] = Field(None, description="labelled images, class-balanced; 'all' = every training image")
    label_fraction: Optional[float] = Field(None, gt=0, le=1, description="alternative to labels: a fraction of the training images")
    seed: Seed = Field(0, description="draws the labelled subset, the output layer and the batch order")
    scratch: Optional[TrainingOverrides] = Field(
        None, description="training settings that replace the ones above when init is scratch: random "
                          "init wants its own optimizer and learning rate")

    def in_force(self) -> "FinetuneConfig":
        """The settings this init trains with: for a scratch control, finetune.scratch's values
        applied; the block itself cleared, so nothing is left to resolve. grid.cells gives every
        cell so: the core takes it as it is."""
        if self.scratch is None:
            return self
        applied = self.scratch.model_dump(exclude_none=True) if self.init == "scratch" else {}
        return self.model_copy(update={**applied, "scratch": None})

    @model_validator(mode="after")
    def _one_label_spec(self):
        if self.labels is not None and self.label_fraction is not None:
            raise ValueError("give either labels or label_fraction, not both")
        u = self.unlabelled
        if u and u.objective == "consistency" and u.noise == 0 and self.dropout == 0 and self.input_dropout == 0:
            raise ValueError("unlabelled.objective consistency needs noise (unlabelled.noise, dropout or "
                             "input_dropout): two identical passes agree by construction")
        for ft in (self, self.in_force()):
            if (ft.batch_norm and u and u.objective == "virtual_adversarial"
                    and (ft.dropout or ft.input_dropout)):
                raise ValueError("batch_norm with the virtual_adversarial objective takes no dropout: the "
                                 "labelled and unlabelled images share one pass, whose unlabelled half is "
                                 "the clean prediction (set dropout and input_dropout to 0)")
        return self


LabelSpec = Union[int, Literal["all"]]


class AblationConfig(Strict):
    """A grid of fine-tunes over one pretrained stack: label counts x seeds x inits."""
    labels: list[LabelSpec] = Field(default_factory=list, description="label counts (or 'all')")
    label_fractions: list[float] = Field(default_factory=list, description="fractions in (0, 1]")
    seeds: list[Seed] = Field(default_factory=lambda: [0], min_length=1)
    inits: list[str] = Field(default_factory=lambda: ["pretrained", "scratch"], min_length=1,
                             description="pretrained, scratch, or either + an unlabelled objective "
                                         "(pretrained+pseudo_label, scratch+reconstruction, ...)")
    workers: int = Field(2, ge=1, description="cells fine-tuned at once")
    threads_per_worker: Optional[int] = Field(None, ge=1, description="torch threads per cell; "
                                                                      "default: cores // workers")
    runner: Literal["threads", "dask"] = "threads"
    address: Optional[str] = Field(None, description="Dask scheduler address; none = a local cluster")
    variants: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="name -> layer keys set on every layer (e.g. {contractive: 0.1, l1: 0}): "
                                          "one pretrained stack per variant, each fine-tuned on the whole grid")

    @field_validator("inits")
    @classmethod
    def _inits_are_methods(cls, value: list[str]):
        objectives = UnlabelledObjective.__args__
        for init in value:
            base, _, objective = init.partition("+")
            if base not in ("pretrained", "scratch") or (objective and objective not in objectives):
                raise ValueError(f"{init!r} is not an init: pretrained or scratch, optionally +"
                                 f"{'|'.join(objectives)} (e.g. pretrained+pseudo_label)")
        if len(set(value)) != len(value):
            raise ValueError(f"{value} repeats an init")
        return value

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
    """When `layerwise serve` runs the pipeline as a Prefect deployment.

    cron and timezone are only typed here: Prefect's own schedule model judges the strings, in
    flows/schedules.py (check_schedules), which `layerwise validate`, `list`, `run` and `serve` call."""
    cron: str = Field(..., description="cron string, e.g. '0 2 * * *' (02:00 every day)")
    timezone: str = Field("UTC", description="IANA zone the cron is read in, e.g. Europe/Berlin")
    parameters: dict[str, Any] = Field(default_factory=dict,
                                       description="dotted.key: value overrides for scheduled runs, like --set")
    concurrency_limit: int = Field(1, ge=1, description="runs of this pipeline at once (1: never overlap)")

    def overrides(self) -> list[str]:
        """The parameters as --set strings (values as JSON, which YAML reads back unchanged)."""
        return [f"{key}={json.dumps(value)}" for key, value in self.parameters.items()]


class UnrollConfig(Optimization):
    """Fine-tune the pretrained stack as one deep autoencoder (encoders, then the decoders in reverse)
    on reconstruction, and compare it with PCA to the same code size."""
    optimizer: Optimizer = "adam"
    l2: float = Field(0.0, ge=0, description="squared-L2 penalty on the middle code (keeps it near 0)")
    compile: Optional[Compile] = Field(None, description="resolved from the pipeline's compile")
    grid_digits: int = Field(10, ge=1, le=50, description="test digits in the originals / PCA / autoencoder grid")
    decode_grid: int = Field(15, ge=2, le=40, description="2-d codes only: n x n regular grid of codes decoded")


class RetrievalConfig(Strict):
    """Nearest-neighbour search, test queries against the training images, in code and pixel space."""
    k: int = Field(10, ge=1, le=100, description="precision@k: the share of the k nearest with the query's label")
    queries: Optional[int] = Field(None, ge=1, description="test images used as queries; null = all 10,000")
    figure_queries: int = Field(6, ge=1, le=20, description="queries shown with their hits in the figure")


def resolve_layers(layers: list[LayerConfig], input_shape: tuple[int, ...] = MNIST_SHAPE,
                   input_name: str = "the MNIST image size") -> None:
    """Fill in, in place, what each layer leaves to its place in the stack: input (the previous
    code's width), a conv layer's input_shape and size (channels x pooled height x pooled width),
    and loss: auto (bce while the input lies in [0, 1], i.e. pixels or sigmoid codes, else mse).
    input_shape is the data's ([C, H, W]: pixels scaled to [0, 1]). A ValueError names the layer key."""
    shape, in_unit_range = input_shape, True  # pixels are scaled to [0, 1]
    for i, layer in enumerate(layers):
        width = _width(shape)
        if layer.input is not None and layer.input != width:
            where = input_name if i == 0 else f"layers.{i - 1}.size"
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


def _width(shape: tuple[int, ...]) -> int:
    width = 1
    for extent in shape:
        width *= extent
    return width


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
    sweep: Optional[SweepConfig] = Field(None, description="a search over this pipeline's knobs on validation: "
                                                           "`layerwise sweep NAME` (`run` ignores it)")
    variant: Optional[str] = Field(None, description="set on the cells of an ablation with variants: the "
                                                     "variant whose layers this config holds")
    device: str = Field("auto", description="auto (CUDA when available, else Apple MPS, else the CPU), cpu, cuda, "
                                            "cuda:N or mps; in no store key: stages are shared between devices")
    precision: Precision = Field("fp32", description="fp32, or bf16: forward passes in bfloat16 under autocast "
                                                     "(weights, optimizer and losses fp32); part of the store keys")
    tf32: bool = Field(False, description="CUDA only: TF32 matmuls (faster; not bit-identical to fp32)")
    compile: Compile = Field("auto", description="torch.compile the autoencoder and unroll training steps (the "
                                                 "elementwise math fused; rounding differs in the last bits): "
                                                 "true, false, or auto = the trainings of at least 20,000 "
                                                 "full batches, where the compile time pays back; falls back "
                                                 "to uncompiled with a warning where no compiler works; in no "
                                                 "store key")
    register_scratch: bool = Field(False, description="register a scratch control's classifier too (by default "
                                                      "only pretrained ones are registered)")
    system_metrics: float = Field(10.0, ge=0, description="seconds between samples of the machine's CPU, memory "
                                                          "(and GPU) use on the parent run (MLflow's system "
                                                          "metrics; one at its start and end too); 0 = off")

    @field_validator("device")
    @classmethod
    def _device_is_one(cls, value: str):
        if not DEVICE_SPEC.fullmatch(value):
            raise ValueError(f"{value!r} is not a device: auto, cpu, cuda, cuda:N or mps")
        return value

    @field_validator("variant")
    @classmethod
    def _variant_is_a_name(cls, value: Optional[str]):
        if value is not None and name_problem(value):  # the cells' folder is workdir / variant
            raise ValueError(f"variant {name_problem(value)} (it names a folder and runs)")
        return value

    @model_validator(mode="after")
    def _resolve(self):
        if self.data.found is not None:  # else a source whose images are not read yet: check_run binds it
            self._resolve_layers()
        for part in [*self.layers, self.finetune, self.unroll]:  # every training takes the pipeline's
            if part is not None and part.precision is None:
                part.precision = self.precision
        for part in [*self.layers, self.unroll]:
            if part is not None and part.compile is None:
                part.compile = self.compile
        if self.finetune is not None and self.finetune.scratch is not None and self.finetune.scratch.precision is None:
            self.finetune.scratch.precision = self.precision
        if (self.finetune is None) == (self.unroll is None):
            raise ValueError("give finetune (train a classifier on labels) or unroll (fine-tune the stack as one "
                             "deep autoencoder), one of the two")
        if self.ablation and self.finetune is None:
            raise ValueError("ablation fine-tunes classifiers: it needs finetune, not unroll")
        if self.sweep:
            self._check_sweep()
        if self.unroll and self.layers[-1].kind == "conv":
            raise ValueError("unroll needs a dense code layer last")
        if self.ablation:
            for name, changes in self.ablation.variants.items():
                for i, layer in enumerate(self.layers):
                    try:
                        LayerConfig.model_validate({**layer.model_dump(), **changes})
                    except ValidationError as exc:
                        raise ValueError(f"ablation.variants.{name} on layers.{i}: "
                                         f"{describe_errors(exc.errors(), LayerConfig)}") from None
        if self.finetune is not None and self.data.val_size == 0 and self.finetune.keep != "last":
            raise ValueError("data.val_size is 0: there is no validation split to pick the best epoch by; "
                             "set finetune.keep: last")
        if self.data.found is not None:
            self._check_label_counts()
        return self

    def _resolve_layers(self) -> None:
        resolve_layers(self.layers, tuple(self.data.found.shape),
                       "the images' C x H x W ({}x{}x{})".format(*self.data.found.shape))

    def _check_label_counts(self) -> None:
        if self.finetune is None:
            return
        n_train, n_classes = self.data.n_train, self.data.n_classes
        counts = [("finetune.labels", self.finetune.labels)]
        if self.ablation:
            counts += [(f"ablation.labels.{i}", n) for i, n in enumerate(self.ablation.labels)]
        for key, count in counts:
            if isinstance(count, int) and not n_classes <= count <= n_train:
                raise ValueError(f"{key} is {count} but must lie between {n_classes} (one per class) and "
                                 f"{n_train} (the training images left after data.val_size={self.data.val_size})")

    def _check_sweep(self) -> None:
        if self.ablation:
            raise ValueError("sweep searches one fine-tune or unroll, judged on validation: not an ablation grid")
        objective = self.sweep.objective_for(self.unroll is not None)
        if (objective == "val_sq_error") != (self.unroll is not None):
            raise ValueError(f"sweep.objective {objective} does not fit a pipeline that "
                             f"{'unrolls (use val_sq_error)' if self.unroll else 'fine-tunes a classifier (use val_accuracy)'}")
        # the trials run with sweep.search_set: a pipeline shipped without validation gets it back there
        if objective == "val_accuracy" and self.sweep.search_set.get("data.val_size", self.data.val_size) == 0:
            raise ValueError("sweep.objective val_accuracy needs validation images: data.val_size is 0 "
                             "(give the trials some with sweep.search_set: {data.val_size: N})")
        for key in self.sweep.space:
            if key.split(".")[0] in FIXED_PREFIXES:
                raise ValueError(f"sweep.space.{key}: {key.split('.')[0]} is the same for every trial (the data "
                                 f"every trial is judged on, or a part no trial runs); search other keys")

    def bound_to(self, facts: DataFacts) -> "PipelineConfig":
        """A copy of this (validated) config for the data the run found: data.found set, the layers
        resolved against its image shape, the data block's sizes and the label counts checked
        against its labelled images and classes. Only what the data decides is looked at again:
        the rest was validated when the config was read. A ValueError names the key."""
        try:
            data = DataConfig.model_validate({**self.data.model_dump(exclude={"found"}), "found": facts.model_dump()})
        except ValidationError as exc:  # named as the pipeline's validation names them: data.KEY
            raise ValueError(describe_errors([{**err, "loc": ("data", *err["loc"])} for err in exc.errors()],
                                             PipelineConfig)) from None
        bound = self.model_copy(deep=True, update={"data": data})
        bound._resolve_layers()
        bound._check_label_counts()
        return bound

    @property
    def sizes(self) -> list[int]:
        return [self.data.width] + [layer.size for layer in self.layers]

    def shape_text(self) -> str:
        """The stack's shape for humans: 784-1000-500, with conv layers as 16c5p2 (? before the
        images of a folder or arrays have been read)."""
        width = str(self.data.width) if self.data.found else "?"
        parts = [width] + [f"{layer.channels}c{layer.kernel}p{layer.pool}" if layer.kind == "conv"
                                      else str(layer.size) for layer in self.layers]
        return "-".join(parts)

    def n_labels(self) -> Optional[int]:
        """How many labelled images fine-tuning uses (None for a fraction or 'all' of data not read yet)."""
        ft = self.finetune
        if self.data.found is None:
            return ft.labels if isinstance(ft.labels, int) else None
        n_train = self.data.n_train
        if ft.label_fraction is not None:
            return max(self.data.n_classes, round(ft.label_fraction * n_train))
        if ft.labels is None or ft.labels == "all":
            return n_train
        return ft.labels

    def pretrain_dict(self) -> dict:
        """What determines the pretrained stack (and nothing that does not)."""
        return {"seed": self.seed, "data": self.data.model_dump(),
                "layers": [layer.model_dump(exclude={"compile"}) for layer in self.layers]}
