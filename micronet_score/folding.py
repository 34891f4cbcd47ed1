"""BatchNorm folding: which eval-mode BatchNorm folds into which layer, and the bias it leaves.

Folding (official rules: "batch norm folded into the preceding layer", and `counting.py`) is valid
only where it is exact at inference: the BatchNorm uses running statistics, it normalizes exactly
the output channels of a conv, transposed conv or linear layer (the channel axis of its input is
the layer's output-channel axis), nothing else reads that layer's output, no other node uses the
layer's weights (a layer called twice cannot take two scales), and the layer applies no activation
of its own. Every other BatchNorm is a per-channel scale and shift.
"""

from __future__ import annotations

import torch
import torch.fx

from micronet_score.facts import NodeFacts, Operand
from micronet_score.opkinds import OpKind
from micronet_score.ops.spec import Trait

# Kinds whose output channels are on axis 1; the others (linear, addmm) have them last.
_CHANNELS_FIRST = (OpKind.CONV, OpKind.CONV_TRANSPOSE)


def batch_norm_folds(all_facts: list[NodeFacts]) -> dict[NodeFacts, NodeFacts]:
    """BatchNorm node -> the layer node it folds into (see the module docstring)."""
    by_node = {facts.node: facts for facts in all_facts}
    weight_users: dict[int, int] = {}
    for facts in all_facts:
        if facts.weight is not None and facts.kind is not None and not facts.free:
            weight_users[facts.weight.identity] = weight_users.get(facts.weight.identity, 0) + 1
    folds: dict[NodeFacts, NodeFacts] = {}
    for facts in all_facts:
        if not _foldable(facts):
            continue
        target = _producer(facts, by_node)
        if target is None or not _fold_target(target, weight_users) or target in folds.values():
            continue
        folds[facts] = target
    return folds


def _foldable(facts: NodeFacts) -> bool:
    """An eval BatchNorm with running statistics (F.batch_norm(training=True) and a BatchNorm
    without tracked statistics normalize with the batch's own: nothing to fold)."""
    if facts.spec is None or Trait.FOLDABLE not in facts.spec.traits:
        return False
    if facts.args.get("training") is True or facts.node.all_input_nodes == []:
        return False
    if "running_mean" not in facts.operands or "running_var" not in facts.operands:
        return False
    return facts.output is not None and len(facts.output.shape) >= 2


def _producer(facts: NodeFacts, by_node: dict[torch.fx.Node, NodeFacts]) -> NodeFacts | None:
    """The layer whose output reaches the BatchNorm alone, possibly through free nodes that keep
    its shape (dropout in eval, identity) and that nothing else reads."""
    source = facts.node.all_input_nodes[0]
    while len(_value_users(source, by_node)) == 1:
        producer = by_node.get(source)
        if producer is None:
            return None
        if producer.kind != OpKind.FREE:  # the plain moves only: not where, masked_fill, pads
            return producer
        if not _in_place(producer):
            return None
        source = source.all_input_nodes[0]
    return None


# Free nodes that leave every value where it was when their output has their input's shape and
# dtype (a transpose of two equal dimensions keeps the shape but moves the channels).
_IN_PLACE = frozenset({
    "dropout", "native_dropout", "feature_dropout", "alpha_dropout", "identity", "clone",
    "contiguous", "detach", "alias", "view", "reshape", "_unsafe_view", "flatten", "unflatten",
    "squeeze", "unsqueeze", "_to_copy", "to", "type_as", "float", "lift_fresh_copy",
})


def _in_place(facts: NodeFacts) -> bool:
    if not facts.inputs or facts.output != facts.inputs[0]:
        return False
    name = facts.target.strip(".()").rsplit(".", 1)[-1].rstrip("_").lower()
    return name in _IN_PLACE or name.startswith("dropout")


def _value_users(node: torch.fx.Node, by_node: dict[torch.fx.Node, NodeFacts]) -> list[object]:
    """Users that read the values, not only the shape (`x.ndim == 4` asserts in timm layers)."""
    return [
        user for user in node.users
        if not (user in by_node and by_node[user].free
                and by_node[user].output is None)
    ]


def _fold_target(target: NodeFacts, weight_users: dict[int, int]) -> bool:
    spec = target.spec
    if spec is None or Trait.FOLD_TARGET not in spec.traits or target.fused is not None:
        return False
    weight = target.weight or target.operands.get("mat2")
    if weight is None or weight_users.get(weight.identity, 0) > 1 or target.output is None:
        return False
    rank = len(target.output.shape)
    channel_axis = 1 if target.kind in _CHANNELS_FIRST else rank - 1
    return channel_axis == 1  # a BatchNorm normalizes axis 1


def folded_shift(batch_norm: NodeFacts, layer: str) -> Operand | None:
    """The bias a BatchNorm leaves on the layer it folds into, beta - mean * gamma / std,
    computed (C values) so that its zeros are measured like any stored tensor's. A layer with
    a bias of its own keeps that one (the same C values, after folding)."""
    ops = batch_norm.operands
    mean, var = ops.get("running_mean"), ops.get("running_var")
    owner = batch_norm.weight or var
    if owner is None:
        return None
    if mean is None or var is None or mean.tensor.device.type == "meta":
        return Operand(f"{layer}.bias (folded BatchNorm)", owner.identity, owner.tensor)
    eps = float(str(batch_norm.attributes.get("eps", 1e-5)))
    scale = torch.rsqrt(var.tensor.float() + eps)
    if batch_norm.weight is not None:
        scale = scale * batch_norm.weight.tensor.float()
    shift = -mean.tensor.float() * scale
    if batch_norm.bias is not None:
        shift = shift + batch_norm.bias.tensor.float()
    return Operand(f"{layer}.bias (folded BatchNorm)", owner.identity, shift)
