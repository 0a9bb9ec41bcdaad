"""Knowledge distillation front door."""
