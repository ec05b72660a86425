"""rnlib.models: ResNets, plain twins, residual MLPs; ``build(name, num_classes, rngs, **kw)`` by name."""
from rnlib.models._cifar import cifar_layout, cifar_resnet
from rnlib.models._imagenet import IMAGENET_LAYOUTS, imagenet_resnet
from rnlib.models._registry import EXAMPLES, build, parse_name
from rnlib.models._resnet import ResNet
from rnlib.models._torchvision import from_torchvision, to_torchvision

__all__ = ["ResNet", "cifar_resnet", "cifar_layout", "imagenet_resnet", "IMAGENET_LAYOUTS", "build", "EXAMPLES",
           "parse_name", "from_torchvision", "to_torchvision"]
