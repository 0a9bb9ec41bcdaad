"""Plain-torch models outside the pruning rules' comfort zone: per-head tables inside attention, split-then-concat
blocks, an unknown per-channel layer in the residual stream, grouped convolutions."""
import torch
from torch import nn


class RelPosAttention(nn.Module):
    """Self-attention with a per-head relative-position bias table and a per-head output gate."""

    def __init__(self, dim=64, heads=4, tokens=8):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.rel_bias = nn.Parameter(torch.randn(heads, tokens, tokens) * 0.02)
        self.head_gate = nn.Parameter(torch.ones(heads, 1, 1))

    def forward(self, x):
        b, n, _ = x.shape

        def split(t):
            return t.view(b, n, self.heads, self.head_dim).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        logits = q @ k.transpose(-1, -2) / self.head_dim ** 0.5 + self.rel_bias
        out = (logits.softmax(-1) @ v) * self.head_gate
        return self.o(out.transpose(1, 2).reshape(b, n, -1))


class RelPosEncoder(nn.Module):
    def __init__(self, vocab=100, dim=64, heads=4, tokens=8, depth=2):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList()
        for _ in range(depth):
            block = nn.Module()
            block.norm1, block.attn = nn.LayerNorm(dim), RelPosAttention(dim, heads, tokens)
            block.norm2 = nn.LayerNorm(dim)
            block.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))
            self.blocks.append(block)
        self.head = nn.Linear(dim, 3)

    def forward(self, ids):
        x = self.embed(ids)
        for block in self.blocks:
            x = x + block.attn(block.norm1(x))
            x = x + block.mlp(block.norm2(x))
        return self.head(x.mean(1))


class SplitConcat(nn.Module):
    """One projection split in two halves, each half transformed on its own, then concatenated again."""

    def __init__(self, dim=64):
        super().__init__()
        self.inp = nn.Linear(dim, 4 * dim)
        self.left, self.right = nn.Linear(2 * dim, dim), nn.Linear(2 * dim, 3 * dim)
        self.out = nn.Linear(4 * dim, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        a, b = self.inp(x).chunk(2, dim=-1)
        return self.head(self.out(torch.cat([self.left(torch.relu(a)), self.right(torch.relu(b))], -1)))


class Gain(nn.Module):
    """A per-channel scale no rule knows (its parameter is not called ``weight``)."""

    def __init__(self, dim):
        super().__init__()
        self.gain = nn.Parameter(torch.ones(dim))

    def forward(self, x):
        return x * self.gain


class UnknownInResidual(nn.Module):
    def __init__(self, dim=64):
        super().__init__()
        self.stem = nn.Linear(16, dim)
        self.gain = Gain(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x):
        x = self.gain(self.stem(x))
        return self.head(x + self.fc2(torch.relu(self.fc1(x))))


class ResNeXtBlock(nn.Module):
    """A ResNeXt bottleneck: 1x1, grouped 3x3 (cardinality 4), 1x1, with a residual."""

    def __init__(self, channels=64, width=64, groups=4):
        super().__init__()
        self.reduce = nn.Conv2d(channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.grouped = nn.Conv2d(width, width, 3, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.expand = nn.Conv2d(width, channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(channels)

    def forward(self, x):
        y = torch.relu(self.bn1(self.reduce(x)))
        y = torch.relu(self.bn2(self.grouped(y)))
        return torch.relu(x + self.bn3(self.expand(y)))


class TinyResNeXt(nn.Module):
    def __init__(self, classes=10):
        super().__init__()
        self.stem = nn.Conv2d(3, 64, 3, padding=1)
        self.blocks = nn.Sequential(ResNeXtBlock(), ResNeXtBlock())
        self.head = nn.Linear(64, classes)

    def forward(self, x):
        return self.head(self.blocks(torch.relu(self.stem(x))).mean((2, 3)))


class HardCodedWidth(nn.Module):
    """A forward() that hard-codes a width (``view(-1, 8, 8)``): pruning ``mix`` breaks it, the rest can shrink."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Linear(16, 96)
        self.body = nn.Linear(96, 96)
        self.mix = nn.Linear(96, 64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        x = torch.relu(self.body(torch.relu(self.stem(x))))
        grid = self.mix(x).view(-1, 8, 8)
        return self.head(torch.softmax(grid, -1).flatten(1))


class DeadEndBranch(nn.Module):
    """A pooler computed on every call and then dropped (as CLIP's image classifier does): no output depends on
    its normalisation layer, yet it runs on the stream and must be pruned with it."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(16, 64)
        self.block = nn.Sequential(nn.LayerNorm(64), nn.Linear(64, 128), nn.GELU(), nn.Linear(128, 64))
        self.pool_norm = nn.LayerNorm(64)
        self.head = nn.Linear(64, 10)

    def forward(self, x):
        h = self.embed(x)
        h = h + self.block(h)
        self.pool_norm(h.mean(0))  # computed, never used
        return self.head(h)


def dead_end_branch():
    return DeadEndBranch().eval(), torch.randn(2, 16)


def relpos():
    return RelPosEncoder().eval(), torch.randint(0, 100, (2, 8))


def split_concat():
    return SplitConcat().eval(), torch.randn(2, 64)


def unknown_in_residual():
    return UnknownInResidual().eval(), torch.randn(2, 16)


def resnext():
    return TinyResNeXt().eval(), torch.randn(2, 3, 16, 16)


def hard_coded_width():
    return HardCodedWidth().eval(), torch.randn(2, 16)


ALL = {"hard_coded_width": hard_coded_width, "relpos": relpos, "split_concat": split_concat, "unknown_in_residual": unknown_in_residual,
       "resnext": resnext, "dead_end_branch": dead_end_branch}
