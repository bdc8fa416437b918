"""Small models valid for Opacus DP-SGD: no BatchNorm (GroupNorm instead), no in-place tricks."""

from __future__ import annotations

import dataclasses
import itertools
import math

from torch import nn

from fedpriv.registry import Registry, Spec

__all__ = ["MODELS", "Cnn", "LogisticRegression", "Mlp", "ModelSpec"]


class ModelSpec(Spec):
    """A model choice; :meth:`build` makes a fresh ``nn.Module`` for the data's shape."""

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        raise NotImplementedError


MODELS: Registry[ModelSpec] = Registry("model")


@MODELS.register("logreg")
@dataclasses.dataclass(frozen=True)
class LogisticRegression(ModelSpec):
    """Multinomial logistic regression on flattened inputs."""

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), num_classes))


@MODELS.register("mlp")
@dataclasses.dataclass(frozen=True)
class Mlp(ModelSpec):
    """Fully connected ReLU network on flattened inputs."""

    hidden: tuple[int, ...] = (128,)

    def problems(self) -> list[tuple[str, str]]:
        if any(width < 1 for width in self.hidden):
            return [("hidden", "widths must all be >= 1, e.g. [128] or [256, 128]")]
        return []

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        widths = [math.prod(input_shape), *self.hidden]
        layers: list[nn.Module] = [nn.Flatten()]
        for fan_in, fan_out in itertools.pairwise(widths):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], num_classes))
        return nn.Sequential(*layers)


@MODELS.register("cnn")
@dataclasses.dataclass(frozen=True)
class Cnn(ModelSpec):
    """Conv(3×3) → GroupNorm → ReLU → MaxPool(2) blocks, then a ReLU hidden layer.

    Made for 1×28×28 images (two blocks give 7×7 maps); any C×H×W input works, e.g.
    digits' 1×8×8. GroupNorm keeps per-sample gradients well defined for DP-SGD.
    """

    channels: tuple[int, ...] = (16, 32)
    hidden: int = 64
    groups: int = 4

    def problems(self) -> list[tuple[str, str]]:
        out = []
        if not self.channels or any(c < 1 for c in self.channels):
            out.append(("channels", "must be a non-empty list of widths >= 1, e.g. [16, 32]"))
        elif self.groups < 1 or any(c % self.groups for c in self.channels):
            out.append(
                ("groups", f"must be >= 1 and divide every width in channels={list(self.channels)}")
            )
        if self.hidden < 1:
            out.append(("hidden", "must be >= 1"))
        return out

    def build(self, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        if len(input_shape) != 3:
            raise ValueError(
                f"model=cnn needs image inputs of shape C×H×W; this dataset's samples have "
                f"shape {input_shape}. Use model=mlp or model=logreg"
            )
        in_channels, height, width = input_shape
        layers: list[nn.Module] = []
        for out_channels in self.channels:
            layers += [
                nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1),
                nn.GroupNorm(self.groups, out_channels),
                nn.ReLU(),
                nn.MaxPool2d(2),
            ]
            in_channels, height, width = out_channels, height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(
                f"model.channels={list(self.channels)} pools {input_shape} below 1×1; "
                "use fewer blocks"
            )
        layers += [
            nn.Flatten(),
            nn.Linear(in_channels * height * width, self.hidden),
            nn.ReLU(),
            nn.Linear(self.hidden, num_classes),
        ]
        return nn.Sequential(*layers)
