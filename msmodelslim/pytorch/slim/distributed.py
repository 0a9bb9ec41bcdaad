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
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def shard(batch):
    """This process's rows of a batch (rows ``rank``, ``rank + world``, ...)."""
    if not active():
        return batch
    return {key: value[rank()::world()] for key, value in batch.items()}


def mean(value):
    """The mean of a float over the processes."""
    if not active():
        return value
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    dist.all_reduce(tensor)
    return tensor.item() / world()


def total(value):
    """The sum of an int over the processes."""
    if not active():
        return value
    tensor = torch.tensor([int(value)], dtype=torch.int64)
    dist.all_reduce(tensor)
    return int(tensor.item())


def any_process(flag):
    """True when ``flag`` is true in any process (e.g. a stop signal received by one of them)."""
    return total(1 if flag else 0) > 0


def barrier():
    if active():
        dist.barrier()
