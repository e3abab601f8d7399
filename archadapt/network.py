"""The discrete network built from a genotype, and weight inheritance from the supernet.

Module names mirror the supernet (`cells.{i}.edges.{edge}.ops.{primitive}`), so the adapted
supernet weights of the chosen primitives copy over by name.
"""

from __future__ import annotations

import torch
from torch import nn

from archadapt.cells import Normalize, cell_channels, embedding_dim, make_preprocess, make_stem, pool_features, scale_embeddings
from archadapt.genotype import Genotype
from archadapt.operations import OPS
from archadapt.search_space import InputSpec, SearchSpace


class DerivedEdge(nn.Module):
    def __init__(self, primitive: str, channels: int, stride: int):
        super().__init__()
        self.primitive = primitive
        self.ops = nn.ModuleDict({primitive: OPS[primitive](channels, stride, True)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops[self.primitive](x)


class DerivedCell(nn.Module):
    def __init__(self, space: SearchSpace, genotype: Genotype, c_prev_prev: int, c_prev: int, c: int, reduction: bool, reduction_prev: bool):
        super().__init__()
        self.nodes = space.nodes
        self.reduction = reduction
        self.preprocess0, self.preprocess1 = make_preprocess(c_prev_prev, c_prev, c, reduction_prev, True)
        chosen = genotype.edge_index(space, "reduce" if reduction else "normal")
        self.edges = nn.ModuleDict()
        self.node_inputs: list[list[tuple[str, int]]] = [[] for _ in range(space.nodes)]
        for edge_index, primitive in chosen:
            edge = space.edges[edge_index]
            stride = 2 if reduction and edge.source < 2 else 1
            self.edges[str(edge_index)] = DerivedEdge(primitive, c, stride)
            self.node_inputs[edge.target - 2].append((str(edge_index), edge.source))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        for inputs in self.node_inputs:
            node = 0
            for key, source in inputs:
                node = node + self.edges[key](states[source])
            states.append(node)
        return torch.cat(states[2:], dim=1)


class DerivedNetwork(nn.Module):
    """A classifier: images (B, C, H, W) float32 in [0, 1] to logits (B, classes)."""

    def __init__(self, space: SearchSpace, spec: InputSpec, genotype: Genotype, num_classes: int):
        super().__init__()
        genotype.validate(space)
        self.space = space
        self.genotype = genotype
        self.normalize = Normalize(spec)
        self.stem = make_stem(spec, 2 * space.channels, True)
        self.cells = nn.ModuleList(DerivedCell(space, genotype, *layout) for layout in cell_channels(space))
        self.classifier = nn.Linear(embedding_dim(space), num_classes)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        s0 = s1 = self.stem(self.normalize(images))
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1)
        return scale_embeddings(pool_features(self.space, s1))  # (B, embedding_dim)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(images))


def inherit_weights(network: nn.Module, supernet_weights: dict[str, torch.Tensor], head_weight: torch.Tensor, head_bias: torch.Tensor) -> int:
    """Copy the adapted supernet weights and the task head into `network`; return tensors copied.

    `network` is a DerivedNetwork, or a Conv4Network with the weights of a Conv4. Every parameter
    except `classifier.*` has a counterpart of the same name in the weights, so a missing one is
    a programming error and raises KeyError.
    """
    copied = 0
    with torch.no_grad():
        for name, parameter in network.named_parameters():
            if name == "classifier.weight":
                parameter.copy_(head_weight)
            elif name == "classifier.bias":
                parameter.copy_(head_bias)
            else:
                parameter.copy_(supernet_weights[name])
            copied += 1
    return copied


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_multiply_accumulates(model: nn.Module, spec: InputSpec) -> int:
    """Count multiply-accumulates of convolutions and linear layers for one image."""
    total = 0

    def conv_hook(module: nn.Conv2d, inputs, output):
        nonlocal total
        kernel = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * kernel * module.in_channels // module.groups

    def linear_hook(module: nn.Linear, inputs, output):
        nonlocal total
        total += module.in_features * module.out_features

    handles = []
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            handles.append(module.register_forward_hook(conv_hook))
        elif isinstance(module, nn.Linear):
            handles.append(module.register_forward_hook(linear_hook))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            device = next(model.parameters()).device
            model(torch.zeros(1, spec.channels, spec.height, spec.width, device=device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return total
