"""Random but valid plain-torch models for fuzzing PruneTorch's generic (torch-pruning graph) engine (issue 13).

One generator, two drivers:

* ``build(seed)`` draws a model from ``random.Random(seed)`` (the benchmark; a seed reproduces a model), and
* ``cases()`` is a hypothesis strategy drawing the same kind of model (the tests; hypothesis shrinks failures to
  a small recipe, printed by ``repr(case)``).

A model is a :class:`FuzzNet`: a small interpreter whose ``forward`` runs a list of steps over named values, calling
its registered modules and functional ops. Its blocks cover what the dependency graph must follow: convolutions
(plain, depthwise, grouped non-depthwise), Linear, Embedding, BatchNorm/LayerNorm/GroupNorm, residual adds,
concatenation, split/chunk feeding different consumers, reshapes and transposes (token mixing, channel shuffle,
image <-> tokens), gating products (``x * sigmoid(y)``, squeeze-excitation), bare per-channel ``nn.Parameter``
scales and biases, ``nn.MultiheadAttention``, a module called twice (in a chain or on two branches), flatten ->
Linear, several inputs (positional or keyword) and tuple or dict outputs. Channels stay within 8-48 so each model
prunes in seconds.

Every output goes through a *head* (a Linear or 1x1 convolution) listed in ``case.heads``: passing them in
``un_prune_list`` is the documented way to keep a model's output shapes. Every generated model is run on its
inputs before it is returned (:func:`check`), so the generator never hands out a broken model.
"""
import contextlib
import random
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from msmodelslim.pytorch.utils.calibration import CallParams, as_call_params

CHANNELS = tuple(range(8, 49, 4))  # internal widths: 8, 12, ..., 48 (drawn from WIDTHS, biased to wider)
WIDTHS = CHANNELS + tuple(range(16, 49, 8)) * 2
BATCH = 2
VOCAB = 40
RATIOS = (0.5, 0.6, 0.7, 0.8)
ALIGNS = (8, 4, 1, 8, 4, 16)


# --------------------------------------------------------------------------------------------- the model
class FuzzNet(nn.Module):
    """A generated model: ``steps`` are ``(op, inputs, outputs, arg)`` over named values; ``in0..in2`` are the
    inputs; ``outputs`` names what is returned (``mode``: ``"tensor"``, ``"tuple"`` or ``"dict"``)."""

    def __init__(self, steps, n_inputs, outputs, mode):
        super().__init__()
        self.steps = steps
        self.n_inputs = n_inputs
        self.outputs = outputs
        self.mode = mode

    def forward(self, x0, x1=None, x2=None):
        env = {f"in{i}": x for i, x in enumerate((x0, x1, x2)[:self.n_inputs])}
        for op, ins, outs, arg in self.steps:
            result = _OPS[op](self, [env[i] for i in ins], arg)
            if len(outs) == 1:
                env[outs[0]] = result
            else:
                env.update(zip(outs, result))
        if self.mode == "tensor":
            return env[self.outputs[0]]
        if self.mode == "tuple":
            return tuple(env[o] for o in self.outputs)
        return {f"out{i}": env[o] for i, o in enumerate(self.outputs)}


def _channel_shuffle(x, groups):
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def _scale(net, x, arg):
    scale, bias = arg
    y = x * getattr(net, scale)
    return y + getattr(net, bias) if bias else y


_ACTS = {"relu": F.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}
_OPS = {
    "call": lambda net, x, arg: net.get_submodule(arg)(x[0]),
    "call_nhwc": lambda net, x, arg: net.get_submodule(arg)(x[0].permute(0, 2, 3, 1)).permute(0, 3, 1, 2),
    "call_t": lambda net, x, arg: net.get_submodule(arg)(x[0].transpose(1, 2)).transpose(1, 2),
    "mha": lambda net, x, arg: net.get_submodule(arg)(x[0], x[0], x[0], need_weights=False)[0],
    "act": lambda net, x, arg: _ACTS[arg](x[0]),
    "add": lambda net, x, arg: x[0] + x[1],
    "mul": lambda net, x, arg: x[0] * x[1],
    "gate": lambda net, x, arg: x[0] * torch.sigmoid(x[1]),
    "se_gate": lambda net, x, arg: x[0] * torch.sigmoid(x[1])[:, :, None, None],
    "cat": lambda net, x, arg: torch.cat(x, dim=arg),
    "split": lambda net, x, arg: torch.split(x[0], arg[0], dim=arg[1]),
    "chunk": lambda net, x, arg: torch.chunk(x[0], arg[0], dim=arg[1]),
    "shuffle": lambda net, x, arg: _channel_shuffle(x[0], arg),
    "img2tok": lambda net, x, arg: x[0].flatten(2).transpose(1, 2),
    "tok2img": lambda net, x, arg: x[0].transpose(1, 2).reshape(x[0].shape[0], x[0].shape[2], *arg),
    "pool": lambda net, x, arg: (F.max_pool2d if arg == "max" else F.avg_pool2d)(x[0], 2),
    "gap": lambda net, x, arg: x[0].mean((2, 3)),
    "adapool": lambda net, x, arg: F.adaptive_avg_pool2d(x[0], 2),
    "flatten": lambda net, x, arg: x[0].flatten(1),
    "tokmean": lambda net, x, arg: x[0].mean(1),
    "tokfirst": lambda net, x, arg: x[0][:, 0],
    "scale": lambda net, x, arg: _scale(net, x[0], arg),
}


# --------------------------------------------------------------------------------------------- drivers
class RandomChooser:
    """Choices from a seeded ``random.Random``."""

    def __init__(self, seed):
        self.rng = random.Random(seed)

    def int(self, low, high):
        return self.rng.randint(low, high)

    def pick(self, options):
        return self.rng.choice(list(options))

    def chance(self, p):
        return self.rng.random() < p


class DataChooser:
    """Choices drawn by hypothesis (``draw`` of ``st.composite`` or ``st.data()``); they shrink to simpler models:
    low integers, the first option, no optional extra."""

    def __init__(self, draw):
        from hypothesis import strategies as st

        self._draw, self._st = draw, st

    def int(self, low, high):
        return self._draw(self._st.integers(low, high))

    def pick(self, options):
        return self._draw(self._st.sampled_from(list(options)))

    def chance(self, p):
        return self._draw(self._st.integers(0, 99)) >= round((1 - p) * 100)


# --------------------------------------------------------------------------------------------- the generator
@dataclass
class Case:
    """One generated model with its sample inputs and how to prune it."""

    model: FuzzNet
    inputs: object  # a Tensor, a tuple or CallParams
    heads: list  # module names of the output layers (pass them in un_prune_list)
    ratio: float
    align: int
    recipe: list = field(default_factory=list)
    seed: object = None
    keep_first: bool = False  # also protect the first and last layers, like the default un_prune_list [0, -1]

    def un_prune_list(self):
        """The output layers (the documented way to keep the output shapes), with ``[0, -1]`` when
        ``keep_first``."""
        return ([0, -1] if self.keep_first else []) + list(self.heads)

    def run(self, model=None):
        """The output of ``model`` (default: the case's model) on the sample inputs, without gradients."""
        model = self.model if model is None else model
        with torch.no_grad():
            return call(model, self.inputs)

    def _repr_pretty_(self, printer, cycle):  # hypothesis prints failing examples with this
        printer.text(repr(self))

    def __repr__(self):
        lines = "\n    ".join(self.recipe)
        return (f"Case(seed={self.seed!r}, ratio={self.ratio}, align={self.align}, "
                f"un_prune_list={self.un_prune_list()}, "
                f"inputs={_describe_inputs(self.inputs)})\n    {lines}")


def call(model, inputs):
    """``model`` fed with ``inputs`` by the toolkit's convention (Tensor, tuple, CallParams)."""
    if isinstance(inputs, CallParams):
        return inputs(model)
    if isinstance(inputs, (tuple, list)):
        return model(*inputs)
    return model(inputs)


def output_tensors(output):
    """The tensors of an output (a tensor, tuple or dict), in order."""
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, dict):
        return list(output.values())
    return list(output)


def _describe_inputs(inputs):
    if isinstance(inputs, CallParams):
        args = [tuple(a.shape) for a in inputs.args]
        kwargs = {k: tuple(v.shape) for k, v in inputs.kwargs.items()}
        return f"CallParams({args}, {kwargs})"
    if isinstance(inputs, tuple):
        return f"tuple{[tuple(t.shape) for t in inputs]}"
    return f"Tensor{tuple(inputs.shape)}"


class _Builder:
    def __init__(self, chooser):
        self.c = chooser
        self.modules = []  # (name, module), registration order
        self.params = []  # (name, Parameter)
        self.steps = []
        self.meta = {}  # value -> ("img", C, H, W) | ("tok", L, D, hw) | ("vec", D)
        self.frontier = []  # values produced and not consumed yet
        self.recipe = []
        self.heads = []
        self._count = 0

    # ---------------------------------------------------------------- bookkeeping
    def _name(self, prefix):
        self._count += 1
        return f"{prefix}{self._count}"

    def value(self, meta):
        name = self._name("v")
        self.meta[name] = meta
        return name

    def module(self, prefix, module):
        name = self._name(prefix)
        self.modules.append((name, module))
        return name

    def step(self, op, ins, meta, arg=None, note=None):
        """Emit one step producing one value of ``meta`` (or several when ``meta`` is a list); returns them."""
        metas = meta if isinstance(meta, list) else [meta]
        outs = [self.value(m) for m in metas]
        self.steps.append((op, list(ins), outs, arg))
        self.recipe.append(f"{', '.join(outs)} = {op}({', '.join(ins)}{'' if arg is None else f', {arg!r}'})"
                           + (f"  # {note}" if note else ""))
        return outs if isinstance(meta, list) else outs[0]

    def call(self, prefix, module, x, meta, op="call"):
        name = self.module(prefix, module)
        return self.step(op, [x], meta, name, note=_short(module))

    def width(self):
        return self.c.pick(WIDTHS)

    # ---------------------------------------------------------------- inputs
    def add_input(self, index):
        kind = self.c.pick(("img", "img", "img", "tok", "tok", "ids"))
        name = f"in{index}"
        if kind == "img":
            self.meta[name] = ("img", self.c.pick((3, 1, 4, 8)), *(self.c.pick((8, 12, 16)),) * 2)
            tensor = torch.randn(BATCH, *self.meta[name][1:])
        elif kind == "tok":
            length = self.c.pick((4, 6, 9, 16))
            self.meta[name] = ("tok", length, self.width(), None)
            tensor = torch.randn(BATCH, *self.meta[name][1:3])
        else:
            length = self.c.pick((4, 6, 9, 16))
            tensor = torch.randint(0, VOCAB, (BATCH, length))
            self.meta[name] = ("ids", length)
        self.recipe.append(f"{name}: {kind} {tuple(tensor.shape)}")
        return name, tensor

    # ---------------------------------------------------------------- generic pieces
    def linear_like(self, x, out):
        """A layer mapping value ``x`` to ``out`` channels: a conv for images, a Linear otherwise."""
        kind = self.meta[x][0]
        if kind == "img":
            k = self.c.pick((1, 3))
            conv = nn.Conv2d(self.meta[x][1], out, k, padding=k // 2, bias=self.c.chance(0.5))
            return self.call("conv", conv, x, ("img", out, *self.meta[x][2:]))
        m = self.meta[x]
        layer = nn.Linear(m[-1] if kind == "vec" else m[2], out, bias=self.c.chance(0.7))
        return self.call("fc", layer, x, _with_width(m, out))

    def norm(self, x):
        m = self.meta[x]
        kind = m[0]
        if kind == "img":
            choice = self.c.pick(("bn", "gn", "ln"))
            if choice == "bn":
                return self.call("bn", _random_bn(nn.BatchNorm2d(m[1])), x, m)
            if choice == "gn":
                groups = self.c.pick([g for g in (2, 4, 1) if m[1] % g == 0])
                return self.call("gn", nn.GroupNorm(groups, m[1]), x, m)
            return self.call("ln", nn.LayerNorm(m[1]), x, m, op="call_nhwc")
        if kind == "vec" and self.c.chance(0.5):
            return self.call("bn", _random_bn(nn.BatchNorm1d(m[1])), x, m)
        return self.call("ln", nn.LayerNorm(m[-1] if kind == "vec" else m[2]), x, m)

    def act(self, x):
        return self.step("act", [x], self.meta[x], self.c.pick(tuple(_ACTS)))

    def unit(self, x, out=None):
        """layer [-> norm] [-> activation]."""
        y = self.linear_like(x, self.width() if out is None else out)
        if self.c.chance(0.5):
            y = self.norm(y)
        if self.c.chance(0.6):
            y = self.act(y)
        return y

    def project(self, x, out):
        """``x`` with ``out`` channels (itself when it has them already)."""
        return x if _width(self.meta[x]) == out else self.linear_like(x, out)

    # ---------------------------------------------------------------- blocks (each consumes x, returns new values)
    def blocks_for(self, kind):
        if kind == "ids":
            return ["embed"]
        common = ["unit", "unit", "unit", "residual", "residual", "concat", "split", "gate", "scale", "norm"]
        if kind == "img":
            return common + ["depthwise", "depthwise", "grouped", "grouped", "shuffle", "se", "pool", "to_tokens",
                             "to_tokens", "to_vec"]
        if kind == "tok":
            return common + ["token_mix", "mha", "to_image", "to_vec"]
        return common

    def block(self, x):
        if self.c.chance(0.05):  # a module used twice: protected by the library, so kept rare
            name = self.c.pick(("twice", "siamese"))
        else:
            name = self.c.pick(self.blocks_for(self.meta[x][0]))
        result = getattr(self, f"b_{name}")(x)
        return result if isinstance(result, list) else [result]

    def b_unit(self, x):
        return self.unit(x)

    def b_norm(self, x):
        return self.norm(x)

    def b_embed(self, x):
        dim = self.width()
        return self.call("emb", nn.Embedding(VOCAB, dim), x, ("tok", self.meta[x][1], dim, None))

    def b_residual(self, x):
        width = _width(self.meta[x])
        y = x
        for _ in range(self.c.int(1, 2)):
            y = self.unit(y)
        y = self.project(y, width)
        if self.c.chance(0.3):
            return self.step("add", [y, x], self.meta[x])
        return self.step("add", [x, y], self.meta[x])

    def b_concat(self, x):
        dim = 1 if self.meta[x][0] != "tok" else 2
        if self.c.chance(0.5):  # dense connection: [x, f(x)]
            parts = [x, self.unit(x)]
        else:
            parts = [self.unit(x) for _ in range(self.c.int(2, 3))]
        total = sum(_width(self.meta[p]) for p in parts)
        return self.step("cat", parts, _with_width(self.meta[x], total), dim)

    def b_split(self, x):
        m = self.meta[x]
        width, dim = _width(m), (2 if m[0] == "tok" else 1)
        if width < 8:
            return self.unit(x)
        if self.c.chance(0.5):
            first = self.c.int(2, width - 2)
            parts = self.step("split", [x], [_with_width(m, first), _with_width(m, width - first)],
                              ([first, width - first], dim))
        else:
            parts = self.step("chunk", [x], [_with_width(m, width // 2)] * 2, (2, dim))
            if width % 2:  # an odd width: the second chunk is one channel smaller
                self.meta[parts[1]] = _with_width(m, width // 2)
                self.meta[parts[0]] = _with_width(m, width - width // 2)
        ends = [self.unit(p) if self.c.chance(0.8) else p for p in parts]
        how = self.c.pick(("cat", "add", "apart"))
        if how == "cat":
            total = sum(_width(self.meta[e]) for e in ends)
            return self.step("cat", ends, _with_width(self.meta[ends[0]], total), dim)
        if how == "add":
            width = _width(self.meta[ends[0]])
            second = self.project(ends[1], width)
            return self.step("add", [ends[0], second], self.meta[ends[0]])
        return ends  # different consumers further on

    def b_gate(self, x):
        m = self.meta[x]
        if self.c.chance(0.5):  # x * sigmoid(f(x))
            g = self.linear_like(x, _width(m))
            return self.step("gate", [x, g], m)
        width = self.width()  # GLU: a(x) * sigmoid(b(x))
        a, b = self.linear_like(x, width), self.linear_like(x, width)
        return self.step("gate", [a, b], self.meta[a])

    def b_se(self, x):
        m = self.meta[x]
        pooled = self.step("gap", [x], ("vec", m[1]))
        hidden = self.unit(pooled, self.c.pick((8, 12, 16)))
        back = self.linear_like(hidden, m[1])
        return self.step("se_gate", [x, back], m)

    def b_scale(self, x):
        m = self.meta[x]
        width = _width(m)
        shape = {"img": self.c.pick(((width, 1, 1), (1, width, 1, 1))), "tok": (width,), "vec": (width,)}[m[0]]
        scale = self._name("scale")
        self.params.append((scale, nn.Parameter(torch.rand(shape) + 0.5)))
        bias = None
        if self.c.chance(0.5):
            bias = self._name("bias")
            self.params.append((bias, nn.Parameter(torch.randn(shape) * 0.1)))
        y = self.step("scale", [x], m, (scale, bias), note=f"bare parameters {shape}")
        return self.step("add", [x, y], m) if self.c.chance(0.3) else y

    def b_twice(self, x):
        """One module called twice in a chain."""
        m = self.meta[x]
        if m[0] == "img":
            layer = nn.Conv2d(m[1], m[1], 3, padding=1)
        else:
            layer = nn.Linear(_width(m), _width(m))
        name = self.module("shared", layer)
        y = self.step("call", [x], m, name, note="first call")
        y = self.act(y)
        return self.step("call", [y], m, name, note="second call")

    def b_siamese(self, x):
        """One module applied to two branches."""
        m = self.meta[x]
        a, b = self.unit(x), self.unit(x)
        width = self.width()
        a, b = self.project(a, _width(m)), self.project(b, _width(m))
        layer = (nn.Conv2d(m[1], width, 1) if m[0] == "img" else nn.Linear(_width(m), width))
        name = self.module("shared", layer)
        ya = self.step("call", [a], _with_width(m, width), name, note="branch a")
        yb = self.step("call", [b], _with_width(m, width), name, note="branch b")
        return self._merge2(ya, yb)

    def _merge2(self, a, b):
        m = self.meta[a]
        how = self.c.pick(("add", "mul", "cat"))
        if how == "cat":
            dim = 2 if m[0] == "tok" else 1
            return self.step("cat", [a, b], _with_width(m, _width(m) + _width(self.meta[b])), dim)
        return self.step(how, [a, b], m)

    def b_depthwise(self, x):
        m = self.meta[x]
        y = self.call("dw", nn.Conv2d(m[1], m[1], self.c.pick((3, 5)), padding="same", groups=m[1],
                                      bias=self.c.chance(0.5)), x, m)
        if self.c.chance(0.5):
            y = self.call("bn", _random_bn(nn.BatchNorm2d(m[1])), y, m)
        return self.act(y) if self.c.chance(0.5) else y

    def b_grouped(self, x):
        m = self.meta[x]
        groups = [g for g in (2, 4) if m[1] % g == 0]
        if not groups:
            return self.unit(x)
        g = self.c.pick(groups)
        out = self.c.pick([w for w in CHANNELS if w % g == 0])
        if g == m[1] == out:
            out *= 2
        conv = nn.Conv2d(m[1], out, 3, padding=1, groups=g, bias=self.c.chance(0.5))
        return self.call("gconv", conv, x, ("img", out, m[2], m[3]))

    def b_shuffle(self, x):
        m = self.meta[x]
        groups = [g for g in (2, 4) if m[1] % g == 0]
        if not groups:
            return self.unit(x)
        return self.step("shuffle", [x], m, self.c.pick(groups))

    def b_pool(self, x):
        m = self.meta[x]
        if m[2] < 4 or m[2] % 2:
            return self.unit(x)
        return self.step("pool", [x], ("img", m[1], m[2] // 2, m[3] // 2), self.c.pick(("max", "avg")))

    def b_to_tokens(self, x):
        m = self.meta[x]
        y = x
        if m[2] > 8 and m[2] % 2 == 0:
            y = self.step("pool", [x], ("img", m[1], m[2] // 2, m[3] // 2), "avg")
        m = self.meta[y]
        return self.step("img2tok", [y], ("tok", m[2] * m[3], m[1], (m[2], m[3])))

    def b_to_image(self, x):
        m = self.meta[x]
        if m[3] is None:
            return self.unit(x)
        return self.step("tok2img", [x], ("img", m[2], *m[3]), m[3])

    def b_to_vec(self, x):
        return self.to_vec(x)

    def to_vec(self, x):
        m = self.meta[x]
        if m[0] == "vec":
            return x
        if m[0] == "img":
            if self.c.chance(0.4):
                if m[2] * m[3] > 16:
                    x = self.step("adapool", [x], ("img", m[1], 2, 2))
                    m = self.meta[x]
                return self.step("flatten", [x], ("vec", m[1] * m[2] * m[3]), note="flatten -> Linear")
            return self.step("gap", [x], ("vec", m[1]))
        return self.step(self.c.pick(("tokmean", "tokfirst")), [x], ("vec", m[2]))

    def b_token_mix(self, x):
        m = self.meta[x]
        mixed = self.call("tokmix", nn.Linear(m[1], m[1]), x, m, op="call_t")
        return self.step("add", [x, mixed], m)

    def b_mha(self, x):
        m = self.meta[x]
        heads = [h for h in (2, 4) if m[2] % h == 0]
        if not heads:
            return self.unit(x)
        y = self.norm(x) if self.c.chance(0.5) else x
        attn = nn.MultiheadAttention(m[2], self.c.pick(heads), batch_first=True)
        y = self.call("attn", attn, y, m, op="mha")
        return self.step("add", [x, y], m)

    def merge(self, a, b):
        """Join two values into one."""
        ma, mb = self.meta[a], self.meta[b]
        if ma[0] == mb[0] == "img" and ma[2:] == mb[2:]:
            if self.c.chance(0.5):
                return self.step("cat", [a, b], ("img", ma[1] + mb[1], *ma[2:]), 1)
            return self.step("add", [a, self.project(b, ma[1])], ma)
        if ma[0] == mb[0] == "tok" and ma[1] == mb[1]:
            return self.step("cat", [a, b], ("tok", ma[1], ma[2] + mb[2], ma[3]), 2)
        va, vb = self.to_vec(a), self.to_vec(b)
        if self.c.chance(0.5):
            return self.step("cat", [va, vb], ("vec", _width(self.meta[va]) + _width(self.meta[vb])), 1)
        return self.step("add", [va, self.project(vb, _width(self.meta[va]))], self.meta[va])

    # ---------------------------------------------------------------- outputs
    def head(self, x):
        """The output layer of ``x`` (protected), sometimes with a per-channel layer after it."""
        m = self.meta[x]
        if m[0] == "ids":
            x = self.b_embed(x)
            m = self.meta[x]
        out = self.c.pick((5, 10, 3))
        y = self.linear_like(x, out)
        self.heads.append(self.steps[-1][3])
        if self.c.chance(0.2):
            y = self.norm(y)
        return y


def _short(module):
    text = repr(module).replace("\n", " ")
    return text if len(text) < 100 else text[:97] + "..."


def _width(meta):
    return {"img": lambda m: m[1], "tok": lambda m: m[2], "vec": lambda m: m[1], "ids": lambda m: 0}[meta[0]](meta)


def _with_width(meta, width):
    if meta[0] == "img":
        return ("img", width, meta[2], meta[3])
    if meta[0] == "tok":
        return ("tok", meta[1], width, meta[3])
    return ("vec", width)


def _random_bn(bn):
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.1)
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 1.5)
    return bn


def generate(chooser, seed=0):
    """A :class:`Case` drawn with ``chooser`` (:class:`RandomChooser` or :class:`DataChooser`); weights and inputs
    come from ``torch`` seeded with ``seed``."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        b = _Builder(chooser)
        tensors = [b.add_input(i) for i in range(chooser.pick((1, 1, 1, 2, 2, 3)))]
        for name, _ in tensors:  # a stem per input: its first layer, then a few blocks
            x = b.b_embed(name) if b.meta[name][0] == "ids" else b.unit(name)
            b.frontier.append(x)
            for _ in range(chooser.int(1, 3)):
                b.frontier += b.block(b.frontier.pop())
        for _ in range(chooser.int(1, 6)):
            if len(b.frontier) >= 2 and chooser.chance(0.3):
                i = chooser.int(0, len(b.frontier) - 2)
                first, second = b.frontier.pop(i), b.frontier.pop(-1)
                if b.meta[first][0] == "ids":
                    first = b.b_embed(first)
                if b.meta[second][0] == "ids":
                    second = b.b_embed(second)
                b.frontier.append(b.merge(first, second))
                continue
            x = b.frontier.pop(chooser.int(0, len(b.frontier) - 1) if chooser.chance(0.3) else -1)
            b.frontier += b.block(x)
        mode = chooser.pick(("tensor", "tuple", "dict"))
        if mode == "tensor":
            while len(b.frontier) > 1:
                second, first = b.frontier.pop(), b.frontier.pop()
                if b.meta[first][0] == "ids":
                    first = b.b_embed(first)
                if b.meta[second][0] == "ids":
                    second = b.b_embed(second)
                b.frontier.append(b.merge(first, second))
        if chooser.chance(0.5):
            b.frontier = [b.to_vec(v) if b.meta[v][0] != "ids" else v for v in b.frontier]
        outputs = [b.head(v) for v in b.frontier]
        model = FuzzNet(b.steps, len(tensors), outputs, mode)
        for name, module in b.modules:
            model.add_module(name, module)
        for name, param in b.params:
            model.register_parameter(name, param)
        model.eval()
        inputs = _inputs(chooser, [t for _, t in tensors])
        ratio, align, keep_first = chooser.pick(RATIOS), chooser.pick(ALIGNS), chooser.chance(0.5)
    b.recipe.append(f"return {mode} of {outputs}")
    case = Case(model, inputs, b.heads, ratio, align, b.recipe, seed, keep_first)
    check(case)
    return case


def _inputs(chooser, tensors):
    if len(tensors) == 1 and chooser.chance(0.6):
        return tensors[0]
    form = chooser.pick(("tuple", "args", "kwargs", "mixed"))
    if form == "tuple":
        return tuple(tensors)
    if form == "args":
        return CallParams(*tensors)
    if form == "kwargs":
        return CallParams(**{f"x{i}": t for i, t in enumerate(tensors)})
    return CallParams(tensors[0], **{f"x{i}": t for i, t in enumerate(tensors) if i})


def check(case):
    """Raise ``AssertionError`` unless the case's model runs on its inputs to finite outputs of the recorded
    structure: the generator's own guarantee."""
    out = case.run()
    tensors = output_tensors(out)
    assert tensors and len(tensors) == len(case.model.outputs), "every output is returned"
    for tensor in tensors:
        assert isinstance(tensor, torch.Tensor) and torch.isfinite(tensor).all(), "finite outputs"
    assert case.heads and all(isinstance(case.model.get_submodule(h), (nn.Linear, nn.Conv2d)) for h in case.heads)
    assert _same_outputs(out, case.run()), "deterministic outputs"
    return out


def build(seed):
    """The model of ``seed`` (an int): ``build(seed)`` always returns the same case."""
    return generate(RandomChooser(seed), seed)


def cases():
    """A hypothesis strategy of :class:`Case` (the model's weights are seeded by a drawn integer)."""
    from hypothesis import strategies as st

    @st.composite
    def strategy(draw):
        seed = draw(st.integers(0, 2 ** 16))
        return generate(DataChooser(draw), seed)

    return strategy()


# --------------------------------------------------------------------------------------------- pruning one case
PRUNED, SHORT, REFUSED, CRASHED = "pruned", "short", "refused", "crashed"
TOLERANCE = 0.02  # the README's promise: within 2 points of the budget, or a logged reason


def count(model):
    return sum(p.numel() for p in model.parameters())


class _Records:
    """Collects the msmodelslim log messages of one call (the logger does not propagate, so caplog misses it)."""

    def __enter__(self):
        import logging

        self.messages = []
        self._logger = logging.getLogger("msmodelslim")
        self._level, self._handlers = self._logger.level, list(self._logger.handlers)
        handler = logging.Handler(logging.INFO)
        handler.emit = lambda record: self.messages.append(record.getMessage())
        self._logger.handlers = [handler]  # collected, not printed
        self._logger.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc):
        self._logger.handlers = self._handlers
        self._logger.setLevel(self._level)


def _state(model):
    return {k: (v, v.detach().clone()) for k, v in model.state_dict(keep_vars=True).items()}


def _changes(model, state):
    """What differs from ``state`` (a :func:`_state` snapshot): keys, tensor objects, shapes or values."""
    now = model.state_dict(keep_vars=True)
    found = [f"keys {sorted(set(now) ^ set(state))[:4]}"] if set(now) != set(state) else []
    for key, (obj, value) in state.items():
        if key in now and (now[key] is not obj or now[key].shape != value.shape
                           or not torch.equal(now[key].detach(), value)):
            found.append(key)
    return found


@contextlib.contextmanager
def _norms_as_affine():
    """LayerNorm and GroupNorm reduced to their per-channel affine part while the block runs: a channel's value
    then no longer depends on the others (whose number pruning changes)."""
    def layer_norm(self, x):
        return x * self.weight + (self.bias if self.bias is not None else 0) if self.elementwise_affine else x

    def group_norm(self, x):
        if not self.affine:
            return x
        view = (1, -1) + (1,) * (x.dim() - 2)
        return x * self.weight.view(view) + self.bias.view(view)

    saved = nn.LayerNorm.forward, nn.GroupNorm.forward
    fast_path = torch.backends.mha.get_fastpath_enabled()
    nn.LayerNorm.forward, nn.GroupNorm.forward = layer_norm, group_norm
    torch.backends.mha.set_fastpath_enabled(False)  # nn.TransformerEncoderLayer's fused path would skip the patch
    try:
        yield
    finally:
        nn.LayerNorm.forward, nn.GroupNorm.forward = saved
        torch.backends.mha.set_fastpath_enabled(fast_path)


def _in_double(inputs):
    def cast(value):
        return value.double() if isinstance(value, torch.Tensor) and value.is_floating_point() else value

    return CallParams(*[cast(a) for a in inputs.args], **{k: cast(v) for k, v in inputs.kwargs.items()})


def computes_dense_without_removed(original, pruned, desc, inputs):
    """Whether the pruned model computes what the dense ``original`` does when its layers read nothing from the
    removed channels (their input columns zeroed): channels and the inputs they feed were paired right, where a
    shape check cannot tell (a channel shuffle taken for the identity runs, with the wrong weights). Both run in
    float64 with LayerNorm/GroupNorm reduced to their per-channel affine part (the removed channels would enter
    their statistics; an ``nn.MultiheadAttention`` also reads nothing from them and scores with none of them).
    ``inputs``: a tensor, a tuple or ``CallParams``."""
    import copy

    silenced, pruned = copy.deepcopy(original).double(), copy.deepcopy(pruned).double()
    layers = dict(silenced.named_modules())
    inputs = _in_double(as_call_params(inputs))
    with torch.no_grad(), _norms_as_affine():
        for name, entry in desc.items():
            layer = layers.get(name)
            dense_layer = isinstance(layer, nn.Linear) or (
                isinstance(layer, nn.modules.conv._ConvNd) and layer.groups == 1)
            if dense_layer and isinstance(entry, dict) and "input" in entry:
                layer.weight[:, [i for i, mark in enumerate(entry["input"][1]) if mark != "-"]] = 0
            if type(layer).__name__ == "Conv1D" and isinstance(entry, dict) and "input" in entry:  # transformers'
                layer.weight[[i for i, mark in enumerate(entry["input"][1]) if mark != "-"]] = 0  # [in, out]
            if isinstance(layer, nn.MultiheadAttention) and isinstance(entry, dict) and "output" in entry:
                removed = [i for i, mark in enumerate(entry["output"][1]) if mark != "-"]
                width = layer.embed_dim
                layer.in_proj_weight[:, removed] = 0
                rows = [block * width + i for block in range(3) for i in removed]
                layer.in_proj_weight[rows] = 0
                if layer.in_proj_bias is not None:
                    layer.in_proj_bias[rows] = 0
                for extra in (layer.bias_k, layer.bias_v):
                    if extra is not None:
                        extra[..., removed] = 0
        expected, got = output_tensors(call(silenced, inputs)), output_tensors(call(pruned, inputs))
    return all(torch.allclose(x, y, rtol=1e-7, atol=1e-9 * (1 + float(y.abs().max()))) for x, y in zip(got, expected))


def _same_outputs(a, b):
    ta, tb = output_tensors(a), output_tensors(b)
    return len(ta) == len(tb) and all(x.shape == y.shape and torch.equal(x, y) for x, y in zip(ta, tb))


def error_info(exc):
    """``{"type", "message", "frame", "traceback"}`` of an exception; ``frame`` is its last msmodelslim frame."""
    import traceback

    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if "/msmodelslim/" in f.filename.replace("\\", "/")]
    last = ours[-1] if ours else None
    frame = f"{last.filename.split('/msmodelslim/')[-1]}:{last.lineno} in {last.name}" if last else "-"
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return {"type": type(exc).__name__, "message": message[:300], "frame": frame,
            "raised_by_msmodelslim": bool(frames) and frames[-1] == last,
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-4000:]}


def documented(exc, info):
    """Whether ``exc`` is a refusal the API documents: a ``ModelslimError``, or a ``ValueError``/``TypeError``
    that msmodelslim raises on purpose (not one escaping from torch or torch-pruning)."""
    from msmodelslim.errors import ModelslimError

    if isinstance(exc, ModelslimError):
        return True
    return isinstance(exc, (ValueError, TypeError)) and info["raised_by_msmodelslim"]


def attempt(case, trace_timeout=30.0, importance="l1"):
    with _Records() as records:
        result = _attempt(case, trace_timeout, importance, records)
    result["notes"] = [m for m in records.messages if m.startswith(NOTES)]
    return result


NOTES = ("Protected from pruning", "Pruning stopped early", "Pruning group")  # the INFO lines that explain a plan
# a logged reason for stopping short: the planner's note, or a group protected after it broke the model (recovery)
STOPPED = ("Pruning stopped early", "Pruning group")


def _attempt(case, trace_timeout, importance, records):
    """Prune ``case`` with PruneTorch (analysis, then prune, then a replay of the desc on a fresh copy) and check
    the documented contract. Returns a dict with ``category`` (pruned, short, refused or crashed), ``kept``,
    ``problem`` (what broke, for crashed), ``error`` (:func:`error_info`, when an exception was raised),
    ``raised`` (True when PruneTorch itself raised) and ``notes`` (the INFO lines that explain the plan)."""
    import copy
    import json

    from msmodelslim.pytorch.prune.prune_torch import PruneTorch

    model = case.model
    original = copy.deepcopy(model)
    reference = case.run()
    state = _state(model)
    before = count(model)
    result = {"category": CRASHED, "kept": 1.0, "problem": None, "error": None, "ratio": case.ratio}
    stage = "PruneTorch()"
    try:
        pruner = PruneTorch(model, case.inputs, align=case.align, trace_timeout=trace_timeout)
        if importance != "l1":
            pruner.set_importance_evaluation_function(importance)
        stage = "analysis"
        pruner.analysis(case.ratio, case.un_prune_list())  # a plan only (prune may replan: see its docstring)
        changed = _changes(model, state)
        if changed:
            result["problem"] = f"analysis changed the model: {changed[:3]}"
            return result
        stage = "prune"
        desc = pruner.prune(case.ratio, case.un_prune_list())
    except Exception as exc:  # classified below: a documented refusal or a crash
        info = error_info(exc)
        result["error"], result["stage"], result["raised"] = info, stage, True
        changed = _changes(model, state)
        try:
            runs_same = _same_outputs(case.run(), reference)
        except Exception as run_exc:  # the model no longer runs
            runs_same = False
            changed.append(f"no longer runs ({type(run_exc).__name__})")
        if changed or not runs_same:
            result["problem"] = f"{stage} raised {info['type']} and left the model changed: {changed[:3]}"
        elif documented(exc, info):
            result["category"] = REFUSED
        else:
            result["problem"] = f"{stage} raised an undocumented {info['type']}"
        return result
    result["stage"] = "check"
    after = count(model)
    result["kept"] = kept = after / before
    try:
        out = case.run()
    except Exception as exc:  # the pruned model must run
        result["error"] = error_info(exc)
        result["problem"] = "the pruned model does not run"
        return result
    shapes = [tuple(t.shape) for t in output_tensors(out)]
    if shapes != [tuple(t.shape) for t in output_tensors(reference)]:
        result["problem"] = f"output shapes changed: {shapes}"
        return result
    if not all(torch.isfinite(t).all() for t in output_tensors(out)):
        result["problem"] = "non-finite outputs after pruning"
        return result
    fresh = copy.deepcopy(original)
    try:
        PruneTorch(fresh, case.inputs, align=case.align, trace_timeout=trace_timeout).prune_by_desc(
            json.loads(json.dumps(desc)))
    except Exception as exc:  # the desc must replay on a fresh copy
        result["error"] = error_info(exc)
        result["problem"] = "prune_by_desc on a fresh copy failed"
        return result
    shapes_now = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    shapes_replayed = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    if shapes_now != shapes_replayed:
        diff = sorted(k for k in shapes_now if shapes_now[k] != shapes_replayed.get(k))
        result["problem"] = f"replay gives other shapes: {diff[:3]}"
        return result
    if not _same_outputs(case.run(fresh), out):
        result["problem"] = "the replayed model computes other outputs"
        return result
    if computes_dense_without_removed(original, model, desc, case.inputs) is False:
        result["problem"] = "the pruned model computes other outputs than the dense one without the removed channels"
        return result
    if abs(kept - case.ratio) <= TOLERANCE:
        result["category"] = PRUNED
    elif kept > case.ratio and any(m.startswith(STOPPED) for m in records.messages):
        result["category"] = SHORT
        result["reason"] = next(m for m in records.messages if m.startswith(STOPPED))
    else:
        result["problem"] = (f"kept {kept:.1%} for a budget of {case.ratio:.0%} "
                             + ("(overshoot)" if kept < case.ratio else "without a logged reason"))
    return result
