"""Tiny random Hugging Face models (no download): one per architecture family the tests cover."""
import torch
import transformers as T


def bert():
    cfg = T.BertConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=512, max_position_embeddings=64, num_labels=3)
    return T.BertForSequenceClassification(cfg).eval(), {"input_ids": torch.randint(0, 512, (2, 16))}


def vit():
    cfg = T.ViTConfig(hidden_size=128, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                      image_size=32, patch_size=8, num_labels=5)
    return T.ViTForImageClassification(cfg).eval(), {"pixel_values": torch.randn(2, 3, 32, 32)}


def gpt2():
    cfg = T.GPT2Config(vocab_size=512, n_embd=128, n_layer=2, n_head=4, n_positions=64, bos_token_id=0,
                       eos_token_id=0)
    return T.GPT2LMHeadModel(cfg).eval(), {"input_ids": torch.randint(0, 512, (2, 16))}


def llama():
    cfg = T.LlamaConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=8,
                        num_key_value_heads=4, intermediate_size=384, max_position_embeddings=64)
    return T.LlamaForCausalLM(cfg).eval(), {"input_ids": torch.randint(0, 512, (2, 16))}


def opt():
    cfg = T.OPTConfig(vocab_size=512, hidden_size=128, num_hidden_layers=2, num_attention_heads=4, ffn_dim=512,
                      word_embed_proj_dim=128, max_position_embeddings=64, bos_token_id=0, eos_token_id=0,
                      pad_token_id=1)
    return T.OPTForCausalLM(cfg).eval(), {"input_ids": torch.randint(2, 512, (2, 16))}


def resnet():
    cfg = T.ResNetConfig(embedding_size=32, hidden_sizes=[64, 128, 256, 512], depths=[1, 1, 1, 1],
                         layer_type="bottleneck", num_labels=10)
    return T.ResNetForImageClassification(cfg).eval(), {"pixel_values": torch.randn(1, 3, 64, 64)}


def convnext():
    cfg = T.ConvNextConfig(hidden_sizes=[64, 128, 256, 512], depths=[1, 1, 2, 1], num_labels=10)
    return T.ConvNextForImageClassification(cfg).eval(), {"pixel_values": torch.randn(1, 3, 64, 64)}


def mobilenet_v2():
    cfg = T.MobileNetV2Config(image_size=64, num_labels=10)
    return T.MobileNetV2ForImageClassification(cfg).eval(), {"pixel_values": torch.randn(1, 3, 64, 64)}


ALL = {"bert": bert, "vit": vit, "gpt2": gpt2, "llama": llama, "opt": opt, "resnet": resnet, "convnext": convnext,
       "mobilenet_v2": mobilenet_v2}
