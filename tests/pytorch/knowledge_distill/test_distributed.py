"""Multi-process training with real processes (gloo on CPU), and the Hugging Face Trainer recipe."""
import os
import socket
import subprocess
import sys

import torch

TESTS = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WORKER = r"""
import os, sys, torch, torch.distributed as dist
from msmodelslim.common.knowledge_distill.knowledge_distill import get_distill_model
from zoo.distill_pair import logits_and_hidden_config, tiny_bert_pair

def main(rank, world, port, out):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    teacher, student = tiny_bert_pair()
    torch.save({"teacher": teacher.state_dict(), "student": student.state_dict()}, f"{out}/start_{rank}.pt")
    config = logits_and_hidden_config()
    distill = get_distill_model(teacher, student, config)
    ddp = distill.to_ddp()
    optimizer = torch.optim.AdamW(distill.trainable_parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(100 + rank)  # each rank its own shard
    for _ in range(3):
        ids = torch.randint(0, 100, (4, 12), generator=generator)
        labels = torch.randint(0, 3, (4,), generator=generator)
        loss, student_out, _ = ddp(input_ids=ids, attention_mask=torch.ones_like(ids))
        total = distill.get_total_loss(torch.nn.functional.cross_entropy(student_out.logits, labels))
        optimizer.zero_grad()
        total.backward()
        optimizer.step()
    student = distill.get_student_model()
    torch.save({"teacher": teacher.state_dict(), "student": student.state_dict(),
                "adaptor": distill.adaptors.state_dict()}, f"{out}/end_{rank}.pt")
    dist.destroy_process_group()

if __name__ == "__main__":
    import torch.multiprocessing as mp
    mp.spawn(main, args=(2, sys.argv[1], sys.argv[2]), nprocs=2)
"""


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def test_two_processes_keep_identical_students(tmp_path):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    python_path = os.pathsep.join(filter(None, (TESTS, os.environ.get("PYTHONPATH"))))
    proc = subprocess.run([sys.executable, str(script), _free_port(), str(tmp_path)], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": python_path})
    assert proc.returncode == 0, proc.stderr[-3000:]
    start = torch.load(tmp_path / "start_0.pt", weights_only=True)
    ends = [torch.load(tmp_path / f"end_{rank}.pt", weights_only=True) for rank in (0, 1)]
    for key, value in ends[0]["student"].items():
        assert torch.equal(value, ends[1]["student"][key]), key
    for key, value in ends[0]["adaptor"].items():
        assert torch.equal(value, ends[1]["adaptor"][key]), key
    assert any(not torch.equal(v, start["student"][k]) for k, v in ends[0]["student"].items())
    for rank in (0, 1):
        for key, value in start["teacher"].items():
            assert torch.equal(ends[rank]["teacher"][key], value), key


def test_hugging_face_trainer_recipe(tmp_path):
    import transformers as T

    from msmodelslim.common.knowledge_distill.knowledge_distill import KnowledgeDistillConfig, get_distill_model
    from msmodelslim.pytorch.knowledge_distill.trainer import DistillationTrainer

    common = dict(vocab_size=100, hidden_size=64, num_attention_heads=4, intermediate_size=128, num_labels=3)
    teacher = T.BertForSequenceClassification(T.BertConfig(num_hidden_layers=4, **common)).eval()
    student = T.BertForSequenceClassification(T.BertConfig(num_hidden_layers=2, **common))
    config = KnowledgeDistillConfig().add_output_soft_label(
        {"t_output_idx": "logits", "s_output_idx": "logits",
         "loss_func": [{"func_name": "KDKLDiv", "func_weight": 1, "temperature": 2}]})
    distill = get_distill_model(teacher, student, config)
    data = [{"input_ids": torch.randint(0, 100, (12,)), "attention_mask": torch.ones(12, dtype=torch.long),
             "labels": torch.tensor(i % 3)} for i in range(16)]
    args = T.TrainingArguments(output_dir=str(tmp_path / "run"), per_device_train_batch_size=4, max_steps=3,
                               report_to=[], save_strategy="no", use_cpu=True, learning_rate=1e-3)
    teacher_before = {k: v.clone() for k, v in teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in student.state_dict().items()}
    trainer = DistillationTrainer(distill, args=args, train_dataset=data)
    result = trainer.train()
    assert result.global_step == 3
    trainer.save_model(str(tmp_path / "student"))
    assert all(torch.equal(teacher.state_dict()[k], v) for k, v in teacher_before.items())
    assert any(not torch.equal(student.state_dict()[k], v) for k, v in student_before.items())
    reloaded = T.BertForSequenceClassification.from_pretrained(tmp_path / "student")
    assert torch.equal(reloaded.classifier.weight, student.classifier.weight)
