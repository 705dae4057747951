"""The networks: one autoencoder per stack layer, and the classifier the encoders become."""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Optional

import torch
from torch import nn

if TYPE_CHECKING:  # annotations only: the networks need torch alone, not the config package
    from layerwise.config import LayerConfig

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh, "linear": nn.Identity}


def encoder_block(n_in: int, n_out: int, activation: str) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), ACTIVATIONS[activation]())


def code_width(encoder: nn.Module) -> int:
    """Width of the flat code an encoder block gives (dense or conv)."""
    return getattr(encoder, "out_features", None) or encoder[0].out_features


class ConvEncoder(nn.Sequential):
    """Convolution ('same' padding) + activation + max-pooling. Takes and gives flat (N, width)
    tensors, so conv blocks chain with dense ones and stage codes keep one layout; [0] is the
    convolution, as [0] is the Linear of a dense block."""

    def __init__(self, input_shape: tuple[int, int, int], channels: int, kernel: int, pool: int, activation: str):
        super().__init__(nn.Conv2d(input_shape[0], channels, kernel, padding=kernel // 2),
                         ACTIVATIONS[activation](), nn.MaxPool2d(pool, return_indices=True))
        self.input_shape = tuple(input_shape)
        self.code_shape = (channels, input_shape[1] // pool, input_shape[2] // pool)
        self.out_features = channels * self.code_shape[1] * self.code_shape[2]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The flat code and the pooling indices (where each max came from)."""
        maps = self[0](x.reshape(-1, *self.input_shape))
        if "norm" in self._modules:  # a classifier's block with batch_norm (with_batch_norm)
            maps = self.norm(maps)
        maps = self[1](maps)
        pooled, indices = self[2](maps)
        return pooled.flatten(1), indices

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.encode(x)[0]


class ConvDecoder(nn.Module):
    """Max-unpooling that puts each code value back where its max came from (the encoder's pooling
    indices; zeros elsewhere), then a transposed convolution back to the input's channels. With
    tied=True the transposed convolution uses the encoder's kernel."""

    def __init__(self, encoder: ConvEncoder, tied: bool = False):
        super().__init__()
        conv = encoder[0]
        self.code_shape, self.input_shape = encoder.code_shape, encoder.input_shape
        self.unpool = nn.MaxUnpool2d(encoder[2].kernel_size)
        self.padding = conv.padding
        if tied:
            self.encoder_conv = [conv]  # a list, so the shared kernel is not registered twice
            self.bias = nn.Parameter(torch.zeros(conv.in_channels))
        else:
            self.deconv = nn.ConvTranspose2d(conv.out_channels, conv.in_channels, conv.kernel_size,
                                             padding=conv.padding)

    def forward(self, code: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        maps = self.unpool(code.reshape(-1, *self.code_shape), indices, output_size=self.input_shape[1:])
        if hasattr(self, "deconv"):
            out = self.deconv(maps)
        else:
            out = nn.functional.conv_transpose2d(maps, self.encoder_conv[0].weight, self.bias, padding=self.padding)
        return out.flatten(1)


class TiedDecoder(nn.Module):
    """Decodes with the encoder's weight transposed: one weight tensor serves both directions
    (half the weights); only the bias is the decoder's own."""

    def __init__(self, encoder_linear: nn.Linear):
        super().__init__()
        self.encoder_linear = [encoder_linear]  # a list, so the shared weight is not registered twice
        self.bias = nn.Parameter(torch.zeros(encoder_linear.in_features))

    @property
    def weight(self) -> torch.Tensor:
        return self.encoder_linear[0].weight.t()

    def forward(self, code: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(code, self.weight, self.bias)


def as_pixels(out: torch.Tensor, loss: str) -> torch.Tensor:
    """A decoder's output as an image: bce decoders give logits, mse decoders values."""
    return torch.sigmoid(out) if loss == "bce" else out


class Reconstructor(nn.Module):
    """What every autoencoder here shares: forward(x) -> (code, decoder output), with the output
    read as logits (loss bce) or values (mse)."""

    def __init__(self, loss: str):
        super().__init__()
        if loss not in ("bce", "mse"):
            raise ValueError(f"loss must be 'bce' or 'mse', got {loss!r}")
        self.loss = loss

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        return as_pixels(self(x)[1], self.loss)


class Autoencoder(Reconstructor):
    """encoder: Linear + activation; decoder: Linear giving logits (bce) or values (mse), or with
    tied=True the encoder's weight transposed."""

    def __init__(self, n_in: int, n_code: int, activation: str, loss: str, tied: bool = False):
        super().__init__(loss)
        self.activation = activation
        self.encoder = encoder_block(n_in, n_code, activation)
        self.decoder = TiedDecoder(self.encoder[0]) if tied else nn.Linear(n_code, n_in)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder(x)
        return code, self.decoder(code)


class ConvAutoencoder(Reconstructor):
    """A conv stage: ConvEncoder down, ConvDecoder (unpooling at the pooling indices) up."""

    def __init__(self, input_shape: tuple[int, int, int], channels: int, kernel: int, pool: int, activation: str,
                 loss: str, tied: bool = False):
        super().__init__(loss)
        self.activation = activation
        self.encoder = ConvEncoder(input_shape, channels, kernel, pool, activation)
        self.decoder = ConvDecoder(self.encoder, tied)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code, indices = self.encoder.encode(x)
        return code, self.decoder(code, indices)


def _check_resolved(layer: LayerConfig, needs_loss: bool) -> None:
    left_open = [key for key, is_open in (("input", layer.input is None),
                                          ("input_shape", layer.kind == "conv" and layer.input_shape is None),
                                          ("loss", needs_loss and layer.loss == "auto")) if is_open]
    if left_open:
        raise ValueError(f"the layer config is not resolved ({', '.join(left_open)} left open): validate it in a "
                         f"PipelineConfig, or call layerwise.config.resolve_layers on the stack's layers")


def build_encoder(layer: LayerConfig) -> nn.Sequential:
    """The encoder block alone of the stage a resolved layer config describes."""
    _check_resolved(layer, needs_loss=False)
    if layer.kind == "conv":
        return ConvEncoder(tuple(layer.input_shape), layer.channels, layer.kernel, layer.pool, layer.activation)
    return encoder_block(layer.input, layer.size, layer.activation)


def build_autoencoder(layer: LayerConfig) -> Reconstructor:
    """The stage a resolved layer config (input, loss and a conv layer's shapes filled in:
    PipelineConfig.layers, or resolve_layers on hand-built ones) describes."""
    _check_resolved(layer, needs_loss=True)
    if layer.kind == "conv":
        return ConvAutoencoder(tuple(layer.input_shape), layer.channels, layer.kernel, layer.pool,
                               layer.activation, layer.loss, layer.tied)
    return Autoencoder(layer.input, layer.size, layer.activation, layer.loss, layer.tied)


def seeded_stage(layer: LayerConfig, seed: int) -> Reconstructor:
    """The stage's autoencoder with initial weights that depend on seed alone (runs reproduce on CPU)."""
    torch.manual_seed(seed)
    return build_autoencoder(layer)


def seeded_autoencoder(n_in: int, n_code: int, activation: str, loss: str, seed: int,
                       tied: bool = False) -> Autoencoder:
    """A dense seeded_stage without a layer config (tests and benchmarks): the same draws."""
    torch.manual_seed(seed)
    return Autoencoder(n_in, n_code, activation, loss, tied)


class DeepAutoencoder(Reconstructor):
    """A dense stack unrolled into one network: the encoders bottom-up, then their decoders
    top-down. Between decoders the reconstruction goes through the activation of the code it
    rebuilds; the lowest decoder gives logits (bce) or values (mse), as in its stage."""

    def __init__(self, stages: list[Autoencoder]):
        super().__init__(stages[0].loss)
        self.encoders = nn.Sequential(*(stage.encoder for stage in stages))
        self.decoders = nn.ModuleList(stage.decoder for stage in reversed(stages))
        self.between = nn.ModuleList(ACTIVATIONS[stage.activation]() for stage in reversed(stages[:-1]))

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.encoders(x)

    def decode(self, code: torch.Tensor) -> torch.Tensor:
        x = code
        for decoder, activation in zip(self.decoders[:-1], self.between):
            x = activation(decoder(x))
        return self.decoders[-1](x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encode(x)
        return code, self.decode(code)

    def decode_to_pixels(self, code: torch.Tensor) -> torch.Tensor:
        return as_pixels(self.decode(code), self.loss)


def with_batch_norm(block: nn.Sequential) -> nn.Sequential:
    """The block with batch normalisation between its weights ([0], still [0]) and its activation:
    a dense block becomes Linear, BatchNorm1d, activation; a conv block normalises its maps
    (BatchNorm2d, as its `norm`) before the activation and the pooling."""
    first = block[0]
    if isinstance(block, ConvEncoder):
        block.add_module("norm", nn.BatchNorm2d(first.out_channels))
        return block
    return nn.Sequential(first, nn.BatchNorm1d(first.out_features), *list(block)[1:])


def batch_norms(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def reset_linear(linear: nn.Linear, generator: torch.Generator) -> nn.Linear:
    """nn.Linear's own default init (Kaiming-uniform weight, uniform bias), drawn from generator."""
    nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
    bound = 1 / math.sqrt(linear.in_features)
    nn.init.uniform_(linear.bias, -bound, bound, generator=generator)
    return linear


class Classifier(nn.Module):
    """Hidden blocks (Linear + activation, the encoders' shape) then a linear output layer.

    Everything random in a classifier comes from generators, never torch's global RNG: fine-tunes
    that run side by side as threads of one process would otherwise draw from the same global
    stream, and a cell's result would depend on its neighbour's timing. The output layer is drawn
    from `generator`; dropout masks from `noise`, which the training loop sets. With batch_norm each
    hidden block normalises before its activation (with_batch_norm). `dropping` False turns dropout
    off in training mode (the unlabelled objectives' extra passes), leaving batch norm in it."""

    def __init__(self, hidden: list[nn.Sequential], n_classes: int, dropout: float = 0.0,
                 input_dropout: float = 0.0, generator: Optional[torch.Generator] = None,
                 batch_norm: bool = False):
        super().__init__()
        self.hidden = nn.ModuleList([with_batch_norm(block) for block in hidden] if batch_norm else hidden)
        self.dropout, self.input_dropout = dropout, input_dropout
        self.output = nn.Linear(code_width(hidden[-1]), n_classes)
        if generator is not None:
            reset_linear(self.output, generator)
        self.noise: Optional[torch.Generator] = None
        self.dropping = True

    def _drop(self, x: torch.Tensor, p: float) -> torch.Tensor:
        """Inverted dropout (kept units scaled by 1/(1-p)) in training mode, masks from self.noise."""
        if not self.training or not getattr(self, "dropping", True) or p == 0:  # older pickles: no flag
            return x
        # drawn on the CPU from the cell's generator whatever the device, in fp32 whatever x's dtype:
        # the same masks everywhere and under bf16 (where bf16 draws were also 1.5x slower)
        keep = (torch.rand(x.shape, generator=self.noise) >= p).to(x.device, non_blocking=True)
        return x * keep / (1 - p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._drop(x, self.input_dropout)
        for block in self.hidden:
            x = self._drop(block(x), self.dropout)
        return self.output(x)
