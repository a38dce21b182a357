"""The built-in model zoo and model loading (torch-bound).

The zoo holds the architectures the split-computing literature measures, written in plain torch.nn
with torchvision's module and parameter names (a torchvision ``state_dict`` loads into them with
``strict=True``) and traceable by ``torch.fx.symbolic_trace``:

====================  =====  ==========================================================
name                  kind   what
====================  =====  ==========================================================
``alexnet``           chain  AlexNet, torchvision layout
``vgg16``             chain  VGG-16, torchvision layout
``tiny_yolov2``       chain  Tiny YOLOv2 for VOC, 416x416 -> (125, 13, 13)
``resnet18``          dag    ResNet-18, torchvision layout
``resnet50``          dag    ResNet-50 (v1.5), torchvision layout
``mobilenet_v2``      dag    MobileNetV2, torchvision layout
``vit_tiny``          dag    ViT-Ti/16 with torchvision ViT names; ``image_size`` etc. are arguments
====================  =====  ==========================================================

Activations are out of place (``nn.ReLU()``, not ``inplace=True`` as torchvision writes them; the
``state_dict`` is the same): a pass that records every node's value, as profiling and boundary-tensor
measurements do, would otherwise see a convolution's output overwritten by the ReLU after it.

:func:`load_model` also takes ``package.module:callable`` specs and torchvision names, and loads
weights from safetensors or ``torch.load(weights_only=True)`` files.
"""

from splitdnn.models.loading import load_model, load_weights, parse_kwargs, read_state_dict
from splitdnn.models.registry import ZOO, ZooEntry, build_zoo_model, default_input_shape, zoo_names

__all__ = [
    "ZOO",
    "ZooEntry",
    "build_zoo_model",
    "default_input_shape",
    "load_model",
    "load_weights",
    "parse_kwargs",
    "read_state_dict",
    "zoo_names",
]
