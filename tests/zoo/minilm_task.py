"""The BBC News distillation task shared by the test and the benchmark: a 3-layer student pruned from
all-MiniLM-L6, and the distillation configurations compared."""
import transformers as T

from msmodelslim import assets
from msmodelslim.common.knowledge_distill.knowledge_distill import KnowledgeDistillConfig
from msmodelslim.common.prune.transformer_prune.prune_model import PruneConfig, prune_model_weight

TEMPERATURE = 2.0
LAYER_MAP = {0: 0, 1: 2, 2: 5}


def student_encoder():
    """all-MiniLM-L6 pruned into 3 layers (0, 2, 5) with FFN 768 by prune_model_weight (first-N)."""
    config = T.BertConfig.from_pretrained(assets.minilm_l6_dir())
    config.num_hidden_layers, config.intermediate_size = 3, 768
    model = T.BertModel(config, add_pooling_layer=False)
    prune = PruneConfig().set_steps(["prune_blocks", "prune_bert_intra_block"]).add_blocks_params(
        r"encoder\.layer\.(\d+)\.", LAYER_MAP)
    prune_model_weight(model, prune, str(assets.minilm_l6_dir()))
    return model


def distill_config(hidden):
    """Logits KD (KDKLDiv, T=2), plus a hidden-state match (student layer 2 <- teacher layer 5) when ``hidden``."""
    config = KnowledgeDistillConfig().add_output_soft_label(
        {"t_output_idx": 0, "s_output_idx": 0,
         "loss_func": [{"func_name": "KDKLDiv", "func_weight": 1, "temperature": TEMPERATURE}]})
    if hidden:
        config.add_inter_soft_label({"t_module": "encoder.encoder.layer.5", "s_module": "encoder.encoder.layer.2",
                                     "t_output_idx": 0, "s_output_idx": 0,
                                     "loss_func": [{"func_name": "HiddenMse", "func_weight": 1}]})
    return config
