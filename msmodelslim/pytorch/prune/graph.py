"""Channel groups of generic models, from the torch-pruning dependency graph, under a time budget.

torch-pruning traces the model with autograd and couples channels across residual adds, concatenations, splits,
depthwise convolutions, normalisation layers, flatten -> Linear and ``nn.MultiheadAttention``. Its graph build can
crash or never return on some models, so it runs in a forked child process (where available) that is killed when
the budget is spent; the child sends back plain data only.
"""
import math
import multiprocessing
import os
import threading
import traceback

import torch
from torch import nn

from msmodelslim.errors import ModelslimError
from msmodelslim.pytorch.prune import graph_axes, graph_faults, graph_tiling
from msmodelslim.pytorch.prune.groups import ChannelGroup, Member
from msmodelslim.pytorch.prune.layers import INPUT, OUTPUT, layer_spec
from msmodelslim.pytorch.utils.calibration import output_tensors

DEFAULT_TRACE_TIMEOUT_S = 120.0


class GraphTraceError(ModelslimError, RuntimeError):
    """The dependency graph of a model could not be built (crash or time budget spent)."""

    code = 501


def _owner(model, qualified_name):
    holder, _, attr = qualified_name.rpartition(".")
    return (model.get_submodule(holder) if holder else model), holder, attr


def _member_of_item(model, graph, item, names):
    """Translate one torch-pruning group item into a Member, None (an operator, not a layer), or a str (a layer
    that cannot be pruned safely)."""
    target = item.dep.target.module
    is_out = graph.is_out_channel_pruning_fn(item.dep.handler)
    if any(i is None for i in item.idxs) or any(r is None for r in item.root_idxs):
        name = graph._param_to_name.get(target) if isinstance(target, nn.Parameter) else names.get(target)
        return None if name is None else f"{name} (channels the dependency graph cannot trace to their layer)"
    idxs, roots = [int(i) for i in item.idxs], [int(r) for r in item.root_idxs]
    if isinstance(target, nn.Parameter):
        name = graph._param_to_name.get(target)
        if name is None:
            return None
        owner, holder, attr = _owner(model, name)
        spec = layer_spec(owner)
        if spec is not None and list(spec.roles()) == [INPUT] and attr == "weight":
            return Member(holder, INPUT, idxs, roots)
        axis = next((u.pruning_dim for u in graph.unwrapped_parameters if u.parameters is target), None)
        if axis is None:
            return f"{name} (parameter)"
        return Member(name, OUTPUT, idxs, roots, axis=axis)
    name = names.get(target)
    if name is None:
        return None
    spec = layer_spec(target)
    if spec is None:
        return f"{name} ({type(target).__name__})"
    roles = spec.roles()
    role = OUTPUT if is_out else INPUT
    if role not in roles:
        role = next(iter(roles))
    return Member(name, role, idxs, roots)


def _forward_with_dead_ends(model, call):
    """The model's output tensors plus the output of every module, so that a layer whose result no output
    depends on (e.g. a pooler computed and then dropped) is still in the graph: it runs, so it must be pruned
    consistently too - with what its block adds to it (a pooling head's residual sum). Outputs already in the
    graph add nothing."""
    produced = []

    def keep(module, args, output):
        produced.extend(t for t in output_tensors(output) if t.requires_grad)

    handles = [m.register_forward_hook(keep) for m in model.modules()]
    try:
        output = call(model)
    finally:
        for handle in handles:
            handle.remove()
    return output_tensors(output) + produced


def _merge(members):
    """One member per (layer, role), each channel index once: the graph repeats a layer's channel for every
    position it reaches through a flatten, and lists a layer once per dependency. A channel listed under two
    different units stays repeated, for the soundness check to reject."""
    merged = {}
    for member in members:
        key = (member.target, member.role)
        target = merged.setdefault(key, Member(member.target, member.role, [], [], member.axis))
        seen = set(zip(target.idxs, target.roots))
        for i, r in zip(member.idxs, member.roots):
            if (i, r) not in seen:
                target.idxs.append(i)
                target.roots.append(r)
                seen.add((i, r))
    return list(merged.values())


def _units_sharing_channels(members):
    """``{root: unit}`` joining the roots that reach one channel of some member: a convolution flattened into a
    Linear reaches the Linear's features ``c * h * w ...`` from its channel ``c``, so where the Linear's features
    are the group's roots (a residual add after the flatten), the ``h * w`` features of one channel are one unit."""
    units = graph_axes.Partition()
    for member in members:
        first = {}
        for idx, root in zip(member.idxs, member.roots):
            units.join(root, first.setdefault(idx, root))
    return {root: units.find(root) for root in list(units.parent)}


def _renumber_units(members, unit_of_root):
    """Members with their root indices replaced by units (``unit_of_root``; others stay their own unit),
    numbered 0, 1, ... in order of their smallest root."""
    units = {root: unit_of_root.get(root, root) for member in members for root in member.roots}
    number = {unit: n for n, unit in enumerate(sorted(set(units.values())))}
    return [Member(m.target, m.role, list(m.idxs), [number[units[r]] for r in m.roots], m.axis) for m in members]


def torch_pruning_groups(model, call):
    """Channel groups of ``model`` from torch-pruning, traced by ``call(model)``; runs in this process."""
    import warnings

    import torch_pruning as tp

    names = {module: name for name, module in model.named_modules()}
    unmapped = {}
    with warnings.catch_warnings(), graph_faults.failing_soft(unmapped), graph_faults.order_free_walk():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(
            model, example_inputs=call, forward_fn=_forward_with_dead_ends, verbose=False)
        unsafe, chunks = graph_axes.correct(graph)
        graph_tiling.correct(graph)
        chunks.update(_attention_heads(graph))
        unsafe = {**unmapped, **unsafe}
        tp_groups = list(_all_groups(graph, (nn.modules.conv._ConvNd, nn.Linear, nn.MultiheadAttention)))
    groups, partials = [], []
    for tp_group in tp_groups:
        members, unsupported = [], []
        for item in tp_group:
            for node in (item.dep.source, item.dep.target):
                if node in unsafe:
                    unsupported.append(unsafe[node])
            member = _member_of_item(model, graph, item, names)
            if isinstance(member, str):
                unsupported.append(member)
            elif member is not None:
                members.append(member)
        if not members:
            continue
        unit_of_root, partial = graph_axes.chunk_units(tp_group, chunks)
        partials.append(partial if not unsupported else {})
        if partial:  # (its roots stay torch-pruning's: _join_at_chunks matches them)
            unsupported.append(graph_axes.PARTIAL_CHUNK)
        else:
            if unit_of_root:
                members = _renumber_units(members, unit_of_root)
            members = _renumber_units(members, _units_sharing_channels(members))
        size = len({r for member in members for r in member.roots})
        members = _merge(members)
        group = ChannelGroup(name=members[0].target, size=size, members=members, unit_channels=_unit_channels(members),
                             head_splits=_head_splits(tp_group, chunks))
        if unsupported:
            group.protected = "contains layers that cannot be pruned safely: " + ", ".join(sorted(set(unsupported)))
        groups.append(group)
    return _join_at_chunks(groups, partials, chunks)


def _all_groups(graph, root_types):
    """The dependency graph's groups: one per layer of ``root_types`` whose output channels are not all in an
    earlier group, over the channels that are not. (torch-pruning's ``get_all_groups`` skips a layer once any of
    its channels is in a group: a layer half of whose outputs meet another layer's through one part of a
    ``chunk`` would leave its other half in no group at all.) A layer only some of whose channels are in an
    earlier group without a split below it (nothing explains the partial coverage: a reshape the graph followed
    wrongly) is skipped, as torch-pruning does."""
    covered = {}  # layer -> its output channels in a group so far
    for module, node in list(graph.module2node.items()):
        if module in graph.IGNORED_LAYERS_IN_TRACING or not isinstance(module, root_types):
            continue
        pruner = graph.get_pruner_of_module(module)
        channels = pruner.get_out_channels(module) if pruner is not None else None
        if channels is None:
            continue
        left = [c for c in range(channels) if c not in covered.get(module, ())]
        if not left or (len(left) < channels and not graph_axes.feeds_a_split(node)):
            continue
        group = graph.get_pruning_group(module, pruner.prune_out_channels, left)
        for item in group:
            if graph.is_out_channel_pruning_fn(item.dep.handler):
                covered.setdefault(item.dep.target.module, set()).update(int(i) for i in item.idxs if i is not None)
        yield group


def _head_splits(items, chunks):
    """``(channels, heads, head size)`` of each reshape into heads that the group's ``items`` reach."""
    return sorted({chunks[item.dep.target].signature() for item in items
                   if isinstance(chunks.get(item.dep.target), graph_axes.HeadSplit)})


def _unit_channels(members):
    """Channels per unit in the member that has fewest (a channel of every attention head is one unit of
    ``num_heads`` channels in each layer of the stream); 1 where units are single channels somewhere."""
    return min(len(m.idxs) // max(len(set(m.roots)), 1) for m in members) or 1


def _attention_heads(graph):
    """``{node: EqualParts}`` for each ``nn.MultiheadAttention``: its embedding channels are its heads side by
    side, so every head must lose the same places - channel ``p`` of every head is one unit. Removing channels
    unevenly would shift the head boundaries and mix the heads' channels in their dot products."""
    return {node: graph_axes.EqualParts(node.module.head_dim, node.module.embed_dim)
            for node in graph.module2node.values()
            if isinstance(node.module, nn.MultiheadAttention) and node.module.num_heads > 1}


def _join_at_chunks(groups, partials, chunks):
    """Groups that each reach one chunk with only some of its channels, and together hold all of them, become one
    group in which channel ``i`` of every part is one unit, so the parts keep equal sizes (e.g. two layers
    concatenated and then cut in two by ``chunk``). Any other partial holder stays protected."""
    holders = {}
    for index, partial in enumerate(partials):
        if len(partial) == 1:
            (node, pairs), = partial.items()
            holders.setdefault(node, []).append((index, pairs))
    used, merged_away = set(), set()
    for node, found in holders.items():
        parts = chunks[node]
        channels = [idx for _, pairs in found for idx in {i for i, _ in pairs}]
        indices = {index for index, _ in found}
        if len(found) < 2 or sorted(channels) != list(range(parts.total)) or used & indices:
            continue
        units, first = graph_axes.Partition(), {}
        for holder, (_, pairs) in enumerate(found):
            for idx, root in pairs:
                units.join((holder, root), first.setdefault(parts.place(idx), (holder, root)))
        tagged = [Member(m.target, m.role, list(m.idxs), [(holder, r) for r in m.roots], m.axis)
                  for holder, (index, _) in enumerate(found) for m in groups[index].members]
        members = _renumber_units(tagged, {key: units.find(key) for key in list(units.parent)})
        size = len({r for m in members for r in m.roots})
        splits = {split for index in indices for split in groups[index].head_splits}
        if isinstance(parts, graph_axes.HeadSplit):
            splits.add(parts.signature())
        groups[found[0][0]] = ChannelGroup(name=groups[found[0][0]].name, size=size, members=_merge(members),
                                           head_splits=sorted(splits))
        used |= indices
        merged_away |= indices - {found[0][0]}
    return [group for index, group in enumerate(groups) if index not in merged_away]


def _suspects(model):
    """Modules with their own parameters that no pruning rule knows: the likeliest reasons a trace fails."""
    found = []
    for name, module in model.named_modules():
        if list(module.parameters(recurse=False)) and layer_spec(module) is None:
            found.append(f"{name} ({type(module).__name__})")
    return found


def _failure(model, what):
    suspects = _suspects(model)
    hint = ("Prune a part of the model that can be traced instead (e.g. PruneTorch(model.backbone, ...))"
            + (f"; modules no pruning rule knows, the likeliest cause: {', '.join(suspects[:8])}" if suspects else "")
            + "; or raise the budget with PruneTorch(..., trace_timeout=seconds).")
    return GraphTraceError(f"The dependency graph of {type(model).__name__} {what}.", tip=hint)


def _child(conn, model, call):
    try:
        torch.set_num_threads(1)  # forked children must not enter the parent's OpenMP pool
        groups = torch_pruning_groups(model, call)
        conn.send(("ok", [g.to_dict() for g in groups]))
    except BaseException as exc:  # report every failure to the parent, then exit
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc(limit=3)))
    finally:
        conn.close()
        os._exit(0)


def trace_groups(model, call, timeout_s=DEFAULT_TRACE_TIMEOUT_S):
    """:func:`torch_pruning_groups` under a time budget of ``timeout_s`` seconds.

    On Linux with a CPU model the work runs in a forked child that is killed when the budget is spent; otherwise
    it runs in a background thread that is abandoned. ``timeout_s=math.inf`` waits without limit.

    Raises:
        GraphTraceError: the graph build crashed or did not finish in time; the message says what to exclude.
    """
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    budget = None if timeout_s == math.inf else max(float(timeout_s), 0.0)  # None: no limit (inf overflows poll)
    if on_cpu and "fork" in multiprocessing.get_all_start_methods():
        result = _run_forked(model, call, budget)
    else:
        result = _run_threaded(model, call, budget)
    if result is None:
        raise _failure(model, f"did not finish within {timeout_s:g} s")
    if result[0] == "error":
        raise _failure(model, f"could not be built ({result[1]})")
    return [ChannelGroup.from_dict(d) for d in result[1]]


def _run_forked(model, call, timeout_s):
    ctx = multiprocessing.get_context("fork")
    parent_conn, child_conn = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_child, args=(child_conn, model, call), daemon=True)
    process.start()
    child_conn.close()
    try:
        if parent_conn.poll(timeout_s):
            try:
                return parent_conn.recv()
            except EOFError:
                return ("error", "the tracing process died", "")
        return None
    finally:
        if process.is_alive():
            process.kill()
        process.join(5)
        parent_conn.close()


def _run_threaded(model, call, timeout_s):
    box = []

    def work():
        try:
            groups = torch_pruning_groups(model, call)
            box.append(("ok", [g.to_dict() for g in groups]))
        except Exception as exc:  # reported to the caller below
            box.append(("error", f"{type(exc).__name__}: {exc}", ""))

    thread = threading.Thread(target=work, daemon=True, name="msmodelslim-trace")
    thread.start()
    thread.join(timeout_s)
    return box[0] if box else None
