"""The networks: one autoencoder per stack layer, and the classifier the encoders become."""
from __future__ import annotations

import torch
from torch import nn

ACTIVATIONS = {"sigmoid": nn.Sigmoid, "relu": nn.ReLU, "tanh": nn.Tanh}


def encoder_block(n_in: int, n_out: int, activation: str) -> nn.Sequential:
    return nn.Sequential(nn.Linear(n_in, n_out), ACTIVATIONS[activation]())


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


class Autoencoder(nn.Module):
    """encoder: Linear + activation; decoder: Linear giving logits (bce) or values (mse), or with
    tied=True the encoder's weight transposed."""

    def __init__(self, n_in: int, n_code: int, activation: str, loss: str, tied: bool = False):
        super().__init__()
        if loss not in ("bce", "mse"):
            raise ValueError(f"loss must be 'bce' or 'mse', got {loss!r}")
        self.loss = loss
        self.activation = activation
        self.encoder = encoder_block(n_in, n_code, activation)
        self.decoder = TiedDecoder(self.encoder[0]) if tied else nn.Linear(n_code, n_in)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        code = self.encoder(x)
        return code, self.decoder(code)

    def reconstruct(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.encoder(x))
        return torch.sigmoid(out) if self.loss == "bce" else out


def seeded_autoencoder(n_in: int, n_code: int, activation: str, loss: str, seed: int,
                       tied: bool = False) -> Autoencoder:
    """An autoencoder whose initial weights depend on seed alone (runs reproduce on CPU)."""
    torch.manual_seed(seed)
    return Autoencoder(n_in, n_code, activation, loss, tied)


class Classifier(nn.Module):
    """Hidden blocks (Linear + activation, the encoders' shape) then a linear output layer."""

    def __init__(self, hidden: list[nn.Sequential], n_classes: int, dropout: float = 0.0,
                 input_dropout: float = 0.0):
        super().__init__()
        self.hidden = nn.ModuleList(hidden)
        self.input_dropout = nn.Dropout(input_dropout)
        self.dropout = nn.Dropout(dropout)
        self.output = nn.Linear(hidden[-1][0].out_features, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_dropout(x)
        for block in self.hidden:
            x = self.dropout(block(x))
        return self.output(x)
