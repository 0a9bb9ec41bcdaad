"""Several processes (``torchrun``): each process holds the teacher and the student, reads its share of every
batch, and DistributedDataParallel averages the student's gradients, so the run follows the single-process one.
Only rank 0 writes files. Without an initialised process group every helper is the single-process identity."""
import os

import torch
import torch.distributed as dist


def active():
    return dist.is_available() and dist.is_initialized()


def rank():
    return dist.get_rank() if active() else 0


def world():
    return dist.get_world_size() if active() else 1


def init_from_environment(device):
    """Initialise the process group that ``torchrun`` describes (``WORLD_SIZE`` > 1 in the environment): NCCL for a
    CUDA model, gloo otherwise. Does nothing when it is initialised already or when there is one process."""
    if active() or int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not dist.is_available():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def _tensor(value, dtype):
    """A one-element tensor where the process group's backend can reduce it (NCCL: the current GPU)."""
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else "cpu"
    return torch.tensor([value], dtype=dtype, device=device)


def shard(batch):
    """This process's rows of a batch (rows ``rank``, ``rank + world``, ...)."""
    if not active():
        return batch
    return {key: value[rank()::world()] for key, value in batch.items()}


def mean(value):
    """The mean of a float over the processes."""
    if not active():
        return value
    tensor = _tensor(float(value), torch.float64)
    dist.all_reduce(tensor)
    return tensor.item() / world()


def total(value):
    """The sum of an int over the processes."""
    if not active():
        return value
    tensor = _tensor(int(value), torch.int64)
    dist.all_reduce(tensor)
    return int(tensor.item())


def from_rank0(value):
    """Rank 0's float ``value`` in every process (a measurement every process must agree on)."""
    if not active():
        return value
    tensor = _tensor(float(value), torch.float64)
    dist.broadcast(tensor, 0)
    return tensor.item()


def any_process(flag):
    """True when ``flag`` is true in any process (e.g. a stop signal received by one of them)."""
    return total(1 if flag else 0) > 0


def barrier():
    if active():
        dist.barrier()
