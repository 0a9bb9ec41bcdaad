"""Knowledge distillation for PyTorch: the loss library, DistillDualModels and a Hugging Face Trainer."""
