"""Any network torch.export can trace: exits at named modules, segments cut from the traced graph.

The family adapters know a layout (``nn.Sequential``, ResNet stages, ViT blocks); this one knows
none. It traces the backbone once with ``torch.export`` (a dynamic batch axis on every input),
finds each requested cut in the graph (``features.3``: the output of that module, i.e. the last
node the module computed; or the name of an exported node, ``add_4``), and copies the nodes
between two cuts into one ``torch.fx`` graph per segment. A boundary carries every value that a
later segment still reads: the cut module's output first (the tensor its exit head reads; the
*primary*), then every other live tensor in the order the graph computed it (a residual branch,
a U-Net skip, an FPN lateral, a model input a later layer reads). A tensor that skips several
cuts is carried through each segment in between, so segment k needs only boundary k-1: the
device, the chain and the offload path all hand on one boundary at a time.

The segments hold the traced program's weights (``torch.export`` gives them the backbone's own
parameter tensors): training the exits, or fine-tuning jointly, changes what export writes.
The final exit is the backbone's own output, which must be the class logits.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import fx, nn

from edgeexit.compile.adapters.base import ADAPTERS, ExitRequest, make_head
from edgeexit.compile.heads import TokenLayout
from edgeexit.compile.model import ExitInfo, MultiExitModel
from edgeexit.errors import ModelError

#: The ops whose behaviour depends on train / eval mode, with the position of their mode flag:
#: torch.export records the mode it traced in as a constant, which ``GraphSegment.train`` rewrites.
_MODE_FLAGS = {
    torch.ops.aten.batch_norm.default: 5,
    torch.ops.aten.dropout.default: 2,
    torch.ops.aten.dropout_.default: 2,
    torch.ops.aten.feature_dropout.default: 2,
}


#: torch.export's placeholder entry for nodes outside any module (the stem of a ViT: a parameter's
#: expand), which names no module of the user's
_EXPORT_PSEUDO_MODULE = "_empty_nn_module_stack"


@dataclass(frozen=True)
class Cut:
    """Where a boundary sits: after ``node`` (the last node of module ``name``, or that node)."""

    name: str
    node: str
    position: int  # the node's index in the traced graph's topological order


def trace(backbone: nn.Module, examples: Sequence[torch.Tensor]) -> fx.GraphModule:
    """The backbone as one ATen-level graph (eval mode), batch axis dynamic on every input."""
    was_training = backbone.training
    backbone.eval()
    batch = torch.export.Dim("batch", min=1)
    try:
        program = torch.export.export(backbone, tuple(examples), dynamic_shapes=tuple({0: batch} for _ in examples))
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(
            f"torch.export cannot trace {type(backbone).__name__} ({type(err).__name__}: {first}); the generic "
            "adapter cuts the traced graph, so the model must trace with a dynamic batch axis: no Python control "
            "flow on tensor values (use torch.cond), no data-dependent shapes"
        ) from None
    finally:
        backbone.train(was_training)
    module = program.module(check_guards=False)
    for node in list(module.graph.nodes):  # guard calls check shapes of the whole model's inputs
        if node.op == "call_module" and not node.users:
            module.graph.erase_node(node)
    module.graph.lint()
    return module


def module_paths(graph: fx.Graph) -> list[str]:
    """Every module path that computed something, in the order its last node ran: what a cut can name."""
    last: dict[str, int] = {}
    for position, node in enumerate(graph.nodes):
        for path, _ in node.meta.get("nn_module_stack", {}).values():
            if path and not path.startswith(_EXPORT_PSEUDO_MODULE):
                last[path] = position
    return sorted(last, key=last.__getitem__)


def find_cut(graph: fx.Graph, name: str) -> Cut:
    """The node after which boundary ``name`` sits: a module's output, or an exported node."""
    nodes = list(graph.nodes)
    inside = [i for i, n in enumerate(nodes) if name in {p for p, _ in n.meta.get("nn_module_stack", {}).values()}]
    if inside:
        runs = sum(1 for a, b in itertools.pairwise(inside) if b != a + 1 and _separated(nodes, a, b))
        if runs:
            raise ModelError(
                f"module {name!r} runs more than once in the traced graph (shared weights called twice): its "
                "output is not one place to cut; name an exported node instead (`edgeexit cuts` lists them)"
            )
        position = inside[-1]
        return Cut(name, nodes[position].name, position)
    for position, node in enumerate(nodes):
        if node.name == name and node.op in ("call_function", "call_method", "call_module"):
            return Cut(name, node.name, position)
    modules = module_paths(graph)
    shown = ", ".join(modules[:12]) + (", ..." if len(modules) > 12 else "")
    raise ModelError(
        f"no module or exported node named {name!r} in the traced model; expected a module path such as "
        f"{shown} (`edgeexit cuts MODULE:FACTORY` lists every candidate)"
    )


def _separated(nodes: list[fx.Node], a: int, b: int) -> bool:
    """Whether compute nodes of another module ran between positions a and b (a second call)."""
    return any(n.op == "call_function" for n in nodes[a + 1 : b])


def is_tensor(node: fx.Node) -> bool:
    return isinstance(node.meta.get("val"), torch.Tensor)


def is_size(node: fx.Node) -> bool:
    """A size that depends on the dynamic batch axis (``x.shape[0]``, or arithmetic on it)."""
    return isinstance(node.meta.get("val"), torch.SymInt)


@dataclass(frozen=True)
class SegmentPlan:
    """The nodes of one segment, what it reads from the boundary before, what it hands on."""

    nodes: tuple[fx.Node, ...]
    inputs: tuple[fx.Node, ...]  # boundary k-1's values, primary first (segment 0: the model inputs)
    outputs: tuple[fx.Node, ...]  # boundary k's values, primary first (the last segment: the model output)


def plan(graph: fx.Graph, cuts: Sequence[Cut]) -> list[SegmentPlan]:
    """Cut the graph after each cut's node; each boundary carries every value read later."""
    nodes = list(graph.nodes)
    placeholders = [n for n in nodes if n.op == "placeholder"]
    output = next(n for n in nodes if n.op == "output")
    results = [a for a in output.args[0]] if isinstance(output.args[0], (tuple, list)) else [output.args[0]]
    if len(results) != 1 or not isinstance(results[0], fx.Node) or not is_tensor(results[0]):
        raise ModelError(
            f"the traced model returns {len(results)} values; the generic adapter expects one tensor of class "
            "logits (N, classes) as the final exit"
        )
    position = {node: i for i, node in enumerate(nodes)}
    ends = [c.position for c in cuts] + [position[output] - 1]
    plans: list[SegmentPlan] = []
    carried: list[fx.Node] = list(placeholders)
    start = 0
    for k, end in enumerate(ends):
        body = tuple(n for n in nodes[start : end + 1] if n.op in ("call_function", "call_method", "call_module"))
        if k < len(cuts):
            primary = nodes[cuts[k].position]
            if not is_tensor(primary):
                raise ModelError(f"the cut after {cuts[k].name!r} is not a tensor; expected a module that returns one")
            available = [*carried, *body]
            live = [v for v in available if any(position[u] > end for u in v.users) and v is not primary]
            for value in live:
                if not (is_tensor(value) or is_size(value)):
                    raise ModelError(
                        f"value {value.name!r} ({type(value.meta.get('val')).__name__}) crosses the cut after "
                        f"{cuts[k].name!r}; a boundary carries tensors only: cut where no scalar is in flight"
                    )
            tensors = [v for v in live if is_tensor(v)]  # sizes are derived again where they are read
            outputs = (primary, *sorted(tensors, key=position.__getitem__))
        else:
            outputs = (results[0],)
        plans.append(SegmentPlan(body, tuple(carried), outputs))
        carried = list(outputs)
        start = end + 1
    return plans


def build_segment(root: fx.GraphModule, piece: SegmentPlan, final: bool) -> fx.GraphModule:
    """One segment as its own graph: placeholders for boundary k-1, the nodes, boundary k out."""
    graph = fx.Graph()
    env: dict[fx.Node, fx.Node] = {}
    for value in piece.inputs:
        env[value] = graph.placeholder(value.name)
        env[value].meta = dict(value.meta)

    def lookup(node: fx.Node) -> fx.Node:
        if node not in env:
            if node.op == "get_attr":
                env[node] = graph.node_copy(node, lookup)
            elif is_size(node):
                env[node] = _size_again(graph, node, piece.inputs, env, lookup)
            else:  # pragma: no cover  # plan() carries every tensor a segment reads
                raise ModelError(f"segment reads {node.name!r}, which no boundary carries")
        return env[node]

    for node in piece.nodes:
        env[node] = graph.node_copy(node, lookup)
    out = [env[v] if v in env else lookup(v) for v in piece.outputs]
    graph.output(out[0] if final else tuple(out))
    graph.lint()
    return fx.GraphModule(root, graph)


def _size_again(graph: fx.Graph, node: fx.Node, inputs: Sequence[fx.Node], env: dict[fx.Node, fx.Node],
                lookup: Callable[[fx.Node], fx.Node]) -> fx.Node:  # fmt: skip
    """A size computed before the cut, computed again from this segment's own inputs: a boundary
    carries tensors, and every size is the batch axis or arithmetic on it."""
    if node.op == "call_function" and node.target is torch.ops.aten.sym_size.int:
        wanted = node.meta["val"].node.expr
        for value in inputs:
            shape = value.meta["val"].shape if is_tensor(value) else ()
            for axis, size in enumerate(shape):
                if isinstance(size, torch.SymInt) and size.node.expr == wanted:
                    found = graph.call_function(torch.ops.aten.sym_size.int, (env[value], axis))
                    found.meta = dict(node.meta)
                    return found
        raise ModelError(f"size {node.name!r} crosses a cut and no tensor after it has that size to read it from")
    return graph.node_copy(node, lookup)  # arithmetic on sizes: its operands are looked up in turn


class GraphSegment(nn.Module):
    """A traced piece of the backbone: boundary k-1's tensors in, boundary k's out (a tuple)."""

    def __init__(self, module: fx.GraphModule, inputs: Sequence[str], outputs: Sequence[str], final: bool) -> None:
        super().__init__()
        self.module = module
        self.input_names = tuple(inputs)
        self.output_names = tuple(outputs)
        self.final = final
        self._set_mode(self.training)  # a new module trains, as the backbone's own modules would

    def forward(self, *values: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.module(*values)

    def train(self, mode: bool = True) -> GraphSegment:
        super().train(mode)
        self._set_mode(mode)
        return self

    def _set_mode(self, training: bool) -> None:
        """Batch norm and dropout as in ``module.train(mode)``: the traced constant is rewritten."""
        changed = False
        for node in self.module.graph.nodes:
            flag = _MODE_FLAGS.get(node.target) if node.op == "call_function" else None
            if flag is not None and len(node.args) > flag and node.args[flag] is not training:
                node.args = (*node.args[:flag], training, *node.args[flag + 1 :])
                changed = True
        if changed:
            self.module.recompile()


class GraphExitModel(MultiExitModel):
    """A ``MultiExitModel`` whose boundaries may carry several tensors.

    Segment 0 takes the model inputs (``x``, then ``context`` by the traced names); segment k > 0
    takes boundary k-1's tensors alone. Heads read each boundary's primary tensor.
    """

    context_everywhere = False

    def __init__(self, *args: object, examples: Sequence[torch.Tensor], **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self._examples = tuple(e.detach().clone() for e in examples)

    @property
    def carried(self) -> tuple[tuple[str, ...], ...]:
        """Per boundary (all but the final one), the names of the tensors after the primary."""
        return tuple(tuple(seg.output_names[1:]) for seg in self.segments[:-1])  # type: ignore[union-attr]

    def example_inputs(self, input_shape: Sequence[int]) -> tuple[torch.Tensor, ...]:
        """The traced example inputs, with ``input_shape``'s batch size."""
        batch = int(next(iter(input_shape)))
        return tuple(_rows(e, batch) for e in self._examples)


def _cut_in(backbone: nn.Module, root: fx.GraphModule, name: str) -> Cut:
    """``find_cut``, saying why when ``name`` is a module of the backbone that the main graph never
    runs: it is called inside a branch (``torch.cond``) or a loop body, or not at all."""
    graph = root.graph
    known = name in module_paths(graph) or any(node.name == name for node in graph.nodes)
    if known or not _is_submodule(backbone, name):
        return find_cut(graph, name)  # found, or not a module at all: its message lists the candidates
    raise ModelError(
        f"module {name!r} computes nothing in the traced graph's main path: it runs inside a data-dependent "
        "branch (torch.cond) or a loop, or is never called; the graph cannot be cut in the middle of a branch, "
        "so cut before or after it (`edgeexit cuts` lists the candidates)"
    )


def _is_submodule(backbone: nn.Module, name: str) -> bool:
    try:
        backbone.get_submodule(name)
    except AttributeError:
        return False
    return True


def _rows(example: torch.Tensor, batch: int) -> torch.Tensor:
    repeats = -(-batch // example.shape[0])
    return example.repeat(repeats, *(1,) * (example.dim() - 1))[:batch].clone()


def _examples_for(request: ExitRequest) -> tuple[torch.Tensor, ...]:
    if request.examples:
        return tuple(request.examples)
    if request.input_shape is None:
        raise ModelError(
            "the generic adapter traces the model, so it needs its input: pass input_shape=(N, C, H, W) "
            "(or example_inputs=(x, ...) for a model with several inputs) to attach_exits"
        )
    shape = tuple(int(d) for d in request.input_shape)
    generator = torch.Generator().manual_seed(0)
    return (torch.randn((max(shape[0], 2), *shape[1:]), generator=generator),)


class GenericAdapter:
    expects = "any nn.Module torch.export can trace (exits named by module path or exported node)"

    def accepts(self, backbone: nn.Module) -> bool:
        return isinstance(backbone, nn.Module)

    def build(self, backbone: nn.Module, request: ExitRequest) -> MultiExitModel:
        if request.final_head is not None:
            raise ModelError(
                "the generic adapter keeps the backbone's own output as the final exit; final_head "
                f"{request.final_head!r} cannot replace part of a traced graph (drop it, or end the model in a "
                "classifier)"
            )
        examples = _examples_for(request)
        root = trace(backbone, examples)
        names = [str(e) for e in request.exits]
        cuts = [_cut_in(backbone, root, name) for name in names]
        order = [c.position for c in cuts]
        if order != sorted(set(order)):
            raise ModelError(
                f"exits {names} are not in the order the model computes them (graph positions {order}); "
                "expected strictly increasing cuts"
            )
        pieces = plan(root.graph, cuts)
        segments = []
        for k, piece in enumerate(pieces):
            final = k == len(pieces) - 1
            inputs = [v.name for v in piece.inputs]
            outputs = [] if final else [f"hidden_{k}", *(f"hidden_{k}_{j}" for j in range(1, len(piece.outputs)))]
            segments.append(GraphSegment(build_segment(root, piece, final), inputs, outputs, final))
        with torch.no_grad():
            logits = root(*examples)
        if logits.dim() != 2:
            raise ModelError(
                f"the model's output has shape {tuple(logits.shape)}; the final exit must be class logits (N, classes)"
            )
        if logits.shape[1] != request.num_classes:
            raise ModelError(
                f"the model outputs {logits.shape[1]} classes but num_classes is {request.num_classes}; expected equal"
            )
        layout = TokenLayout()
        heads: list[nn.Module | None] = [make_head(h, request, layout) for h in request.heads]
        heads.append(nn.Identity())
        infos = [ExitInfo(h, f"after {n}") for h, n in zip(request.heads, names, strict=True)]
        infos.append(ExitInfo("backbone", "model output"))
        inputs = [n.name for n in root.graph.nodes if n.op == "placeholder"]
        rank = examples[0].dim()
        model = GraphExitModel(
            segments,
            heads,
            infos,
            name=request.name,
            num_classes=request.num_classes,
            layout="NCHW" if rank == 4 else "N" + "".join("D" for _ in range(rank - 1)),
            context_names=inputs[1:],
            input_name=inputs[0],
            examples=examples,
        )
        model.materialize(tuple(examples[0].shape))
        return model


ADAPTERS.register("generic")(GenericAdapter())

__all__ = ["GenericAdapter", "GraphExitModel", "GraphSegment", "find_cut", "module_paths", "trace"]
