"""Model families: discrete, continuous-time and convolutional ResNets (more in later modules).

Every family is a frozen dataclass with ``init(generator, dtype, device)`` and a pure
``forward(params, x)`` over a leading model axis; see ``resdyn.models.base``.
"""

from .activations import ACTIVATIONS, Activation, get_activation
from .base import Model, Params, init_params, num_parameters
from .conv_resnet import ConvResNet
from .image_ode_resnet import ImageODEResNet
from .image_resnet import ImageResNet
from .ode_resnet import ODEResNet
from .resnet import ResNet

__all__ = [
    "ACTIVATIONS",
    "Activation",
    "ConvResNet",
    "ImageODEResNet",
    "ImageResNet",
    "Model",
    "ODEResNet",
    "Params",
    "ResNet",
    "get_activation",
    "init_params",
    "num_parameters",
]
