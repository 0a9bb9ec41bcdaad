"""Knowledge distillation for MindSpore: ``DistillDualModels`` as an ``nn.Cell`` and the MindSpore losses. Reached
through ``msmodelslim.common.knowledge_distill.knowledge_distill.get_distill_model`` with a MindSpore teacher."""
