"""Composite Hugging Face models (encoder-decoder, vision + text): each tower keeps its own residual stream, heads
and neurons; a tower whose layers a family describes gets that family's rules, one no family describes gets the
dependency graph's groups; a stream whose coupling the sample inputs leave unknown is protected and named."""
import copy
import importlib.util
import logging
import pathlib
import sys

import pytest
import torch
from torch import nn

from msmodelslim.pytorch.prune.prune_torch import CallParams, PruneTorch

BENCHMARKS = pathlib.Path(__file__).resolve().parents[3] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
_spec = importlib.util.spec_from_file_location("bench_prune_sweep", BENCHMARKS / "bench_prune_sweep.py")
sweep = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(sweep)


def _build(model_type, other_modality=True):
    cls_name = sweep.model_types()[model_type][0]
    model, inputs, _ = sweep.build(model_type, cls_name, other_modality)
    return model, inputs


def _prune(model, inputs, ratio=0.6):
    fresh = copy.deepcopy(model)
    before = sum(p.numel() for p in model.parameters())
    shape = sweep.main_output(sweep.run_model(model, inputs)).shape
    desc = PruneTorch(model, CallParams(**inputs)).prune(ratio)
    out = sweep.main_output(sweep.run_model(model, inputs))
    assert out.shape == shape
    PruneTorch(fresh, CallParams(**inputs)).prune_by_desc(desc)
    torch.testing.assert_close(sweep.main_output(sweep.run_model(fresh, inputs)), out)
    return desc, sum(p.numel() for p in model.parameters()) / before


def test_each_tower_of_an_image_encoder_text_decoder_is_pruned_by_its_own_family():
    model, inputs = _build("vision-encoder-decoder")  # ViT encoder, BERT decoder with cross-attention
    widths = (model.encoder.config.intermediate_size, model.decoder.config.intermediate_size)
    desc, kept = _prune(model, inputs)
    assert abs(kept - 0.6) <= 0.02
    assert desc["__meta__"]["engine"] == "structure:bert,vit"
    assert model.encoder.layers[0].mlp.fc1.out_features < widths[0]
    assert model.decoder.bert.encoder.layer[0].intermediate.dense.out_features < widths[1]


def test_a_tower_no_family_describes_is_pruned_from_the_dependency_graph():
    model, inputs = _build("chinese_clip")  # a BERT text tower and a CLIP-like vision tower
    vision_mlp = model.vision_model.encoder.layers[0].mlp.fc1.out_features
    desc, kept = _prune(model, inputs)
    assert abs(kept - 0.6) <= 0.02
    assert model.vision_model.encoder.layers[0].mlp.fc1.out_features < vision_mlp
    # the two streams are cut independently: each projection reads its own tower's width
    assert model.text_projection.in_features == model.text_model.embeddings.word_embeddings.embedding_dim
    assert model.visual_projection.in_features == model.vision_model.post_layernorm.normalized_shape[0]


def test_a_tied_decoder_embedding_stays_tied_in_an_encoder_decoder():
    model, inputs = _build("encoder-decoder")  # BERT + BERT; the decoder's LM head shares the word embeddings
    _, kept = _prune(model, inputs)
    assert abs(kept - 0.6) <= 0.02
    assert model.decoder.cls.predictions.decoder.weight is model.decoder.bert.embeddings.word_embeddings.weight


def test_a_projector_the_text_only_sample_never_runs_keeps_the_stream_protected(caplog):
    model, inputs = _build("llava_next", other_modality=False)
    assert "pixel_values" not in inputs
    embedding = model.model.language_model.embed_tokens.embedding_dim
    neurons = model.config.text_config.intermediate_size
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        PruneTorch(model, CallParams(**inputs)).prune(0.6)
    assert "multi_modal_projector.linear_2" in caplog.text and "did not run on the sample inputs" in caplog.text
    assert model.model.language_model.embed_tokens.embedding_dim == embedding
    assert model.model.multi_modal_projector.linear_2.out_features == embedding
    assert model.model.language_model.layers[0].mlp.up_proj.out_features < neurons


@pytest.mark.parametrize("model_type", ["smolvlm", "cohere2_vision"])
def test_a_vlm_given_images_prunes_its_vision_stream_through_the_projector(model_type, caplog):
    """With images, the projector runs: the vision tower's stream is pruned through its pixel shuffle (each
    channel is four inputs of the projector) and its SigLIP pooling head (cross-attention through
    nn.MultiheadAttention, run but dropped by Cohere2-Vision), and the language model's stream too."""
    model, inputs = _build(model_type)
    assert "pixel_values" in inputs
    vision = model.model.vision_model if model_type == "smolvlm" else model.model.vision_tower
    width, text = vision.config.hidden_size, model.config.text_config.hidden_size
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        _, kept = _prune(model, inputs)
    assert abs(kept - 0.6) <= 0.02
    assert "breaks the model" not in caplog.text
    assert vision.post_layernorm.normalized_shape[0] < width
    assert model.get_input_embeddings().embedding_dim < text


def test_a_tower_sub_config_follows_its_pruned_layers_and_the_model_reloads(tmp_path):
    """The language model's sizes are written to ``text_config`` (the config the tower reads and the model saves),
    so ``from_pretrained`` rebuilds the pruned shapes; the vision tower is kept dense here."""
    model, inputs = _build("llava_next")
    model.eval()
    vision = [n for n, m in model.named_modules() if n.startswith("model.vision_tower") and isinstance(m, nn.Linear)]
    fresh = copy.deepcopy(model)
    desc = PruneTorch(model, CallParams(**inputs)).prune(0.6, un_prune_list=vision)
    fields = desc["__meta__"]["config"]
    layer = model.model.language_model.layers[0]
    assert fields["text_config.intermediate_size"] == layer.mlp.up_proj.out_features == \
        model.config.text_config.intermediate_size
    assert fields["text_config.num_key_value_heads"] * layer.self_attn.head_dim == layer.self_attn.k_proj.out_features
    assert not any(key.startswith("vision_config") for key in fields)
    model.save_pretrained(tmp_path)
    reloaded = type(model).from_pretrained(tmp_path).eval()
    out = sweep.main_output(sweep.run_model(model, inputs))
    torch.testing.assert_close(sweep.main_output(sweep.run_model(reloaded, inputs)), out)
    # the desc replays onto the dense model, sub-config included
    PruneTorch(fresh, CallParams(**inputs)).prune_by_desc(desc)
    assert fresh.config.text_config.intermediate_size == fields["text_config.intermediate_size"]
    torch.testing.assert_close(sweep.main_output(sweep.run_model(fresh, inputs)), out)


def test_config_fields_are_left_out_where_the_config_cannot_describe_the_pruned_model(caplog):
    """BERT-like configs derive the head size as hidden_size / heads, so the decoder's heads, pruned apart from its
    hidden size, cannot be written to its sub-config; the encoder's sizes can, but with them forward() takes
    another path (a projection between two widths that the model does not have) and fails, so they are left out
    too, and the pruned model runs. The log says why, and to rebuild from the desc."""
    model, inputs = _build("vision-encoder-decoder")
    before = model.config.to_dict()
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        desc, kept = _prune(model, inputs)
    assert abs(kept - 0.6) <= 0.02
    assert model.decoder.bert.encoder.layer[0].attention.self.query.out_features < before["decoder"]["hidden_size"]
    assert desc["__meta__"]["config"] == {} and model.config.to_dict() == before
    assert "cannot describe the pruned shapes (decoder: 2 heads of 16 channels beside hidden_size" in caplog.text
    assert "the model fails to run with config fields encoder." in caplog.text and "enc_to_dec_proj" in caplog.text
    assert "rebuild the model from the desc" in caplog.text


def test_a_desc_setting_a_field_of_no_sub_config_is_refused_and_the_model_kept():
    model, inputs = _build("llava_next")
    call = CallParams(**inputs)
    desc = PruneTorch(copy.deepcopy(model), call).analysis(0.6)[1]
    state = {k: v.clone() for k, v in model.state_dict().items()}
    config = model.config.to_dict()
    for key in ("audio_config.intermediate_size", "text_config.no_such_field", "text_config.vocab_size.x"):
        bad = copy.deepcopy(desc)
        bad["__meta__"]["config"] = {key: 8}
        with pytest.raises(ValueError, match="The model config has no field"):
            PruneTorch(model, call).prune_by_desc(bad)
    bad = copy.deepcopy(desc)
    bad["__meta__"]["config"]["text_config.hidden_size"] = 16  # no tensor explains it
    with pytest.raises(ValueError, match="text_config.hidden_size"):
        PruneTorch(model, call).prune_by_desc(bad)
    assert model.config.to_dict() == config
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())


def test_an_image_encoder_under_one_config_is_a_tower_and_still_takes_images_after_a_text_only_sample():
    """GIT keeps its CLIP-like image encoder as a pretrained sub-model under a config that has a hidden size: it is a
    tower all the same, so its heads keep their width and the pruned model still reads images."""
    model, inputs = _build("git")
    assert "pixel_values" not in inputs
    size = model.config.vision_config.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    desc, _ = _prune(model, inputs)
    assert "clip" in desc["__meta__"]["engine"]
    with torch.no_grad():
        out = model(**{**inputs, "pixel_values": pixels})
    assert out.logits.shape[-1] == model.config.vocab_size


@pytest.mark.parametrize("model_type", ["encoder-decoder", "vision-encoder-decoder", "chinese_clip", "git",
                                        "llava_next"])
def test_the_saved_config_rebuilds_the_pruned_model_or_the_log_says_it_does_not(model_type, caplog, tmp_path):
    """Whatever the rules set, the config is checked by rebuilding the model from it (meta device): fields that
    would not rebuild it go back to what they were, and the log names the first tensor that would differ."""
    from msmodelslim.pytorch.prune.config_check import config_mismatch

    model, inputs = _build(model_type)
    model.eval()
    before = model.config.to_dict()
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        desc = PruneTorch(model, CallParams(**inputs)).prune(0.6)
    if config_mismatch(model) is None:
        model.save_pretrained(tmp_path)
        reloaded = type(model).from_pretrained(tmp_path).eval()
        torch.testing.assert_close(sweep.main_output(sweep.run_model(reloaded, inputs)),
                                   sweep.main_output(sweep.run_model(model, inputs)))
    else:
        assert "The model config cannot describe the pruned shapes" in caplog.text
        assert desc["__meta__"]["config"] == {} and model.config.to_dict() == before


class _VisionClassifier(nn.Module):
    """A user's own module around a pretrained vision backbone: SigLIP's pooled output (its attention-pooling
    head, an nn.MultiheadAttention of the stream's width) into a new classifier."""

    def __init__(self):
        super().__init__()
        from transformers import SiglipVisionConfig, SiglipVisionModel

        config = SiglipVisionConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                    num_attention_heads=4, image_size=32, patch_size=8)
        self.backbone = SiglipVisionModel(config)
        self.classifier = nn.Linear(64, 10)

    def forward(self, pixel_values):
        return self.classifier(self.backbone(pixel_values=pixel_values).pooler_output)


class _TextClassifier(nn.Module):
    """A user's own module around a decoder backbone (Llama with grouped-query attention): last token's state."""

    def __init__(self):
        super().__init__()
        from transformers import LlamaConfig, LlamaModel

        config = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
                             num_key_value_heads=2, vocab_size=128)
        self.backbone = LlamaModel(config)
        self.score = nn.Linear(64, 3)

    def forward(self, input_ids):
        return self.score(self.backbone(input_ids=input_ids).last_hidden_state[:, -1])


@pytest.mark.parametrize("make, inputs", [
    (_VisionClassifier, {"pixel_values": torch.randn(2, 3, 32, 32)}),
    (_TextClassifier, {"input_ids": torch.randint(0, 128, (2, 12))}),
])
def test_a_user_module_around_a_pretrained_backbone_is_pruned_by_the_backbone_family(make, inputs, caplog):
    """The wrapper has no config of its own; its backbone is a tower, so attention heads and neurons follow the
    family's rules (not the dependency graph's, which protects attention it cannot read), and an
    nn.MultiheadAttention that the stream feeds loses the same places in every head."""
    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2]))
    from zoo.graph_fuzz import computes_dense_without_removed

    torch.manual_seed(0)
    model = make().eval()
    original, fresh = copy.deepcopy(model), copy.deepcopy(model)
    heads = model.backbone.config.num_attention_heads
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        desc = PruneTorch(model, CallParams(**inputs)).prune(0.6)
    kept = sum(p.numel() for p in model.parameters()) / sum(p.numel() for p in original.parameters())
    assert abs(kept - 0.6) <= 0.02
    assert desc["__meta__"]["engine"].startswith("structure:")
    assert "Protected from pruning" not in caplog.text and "breaks the model" not in caplog.text
    if make is _VisionClassifier:  # LayerNorm, which the check reduces to its affine part (Llama's RMSNorm is not)
        assert computes_dense_without_removed(original, model, desc, CallParams(**inputs))
    layer = model.backbone.layers[0] if hasattr(model.backbone, "layers") else model.backbone.encoder.layers[0]
    assert layer.self_attn.head_dim * heads == layer.self_attn.q_proj.weight.shape[0] or \
        layer.self_attn.q_proj.weight.shape[0] % layer.self_attn.head_dim == 0  # whole heads, never part of one
    if make is _VisionClassifier:
        pooling = model.backbone.head.attention
        assert pooling.embed_dim < 64 and pooling.embed_dim % pooling.num_heads == 0
    PruneTorch(fresh, CallParams(**inputs)).prune_by_desc(desc)
    with torch.no_grad():
        torch.testing.assert_close(fresh(**inputs), model(**inputs))


class _ImageTextSum(nn.Module):
    """Two pretrained backbones whose first-token features the user's module sums: one residual stream through
    both towers."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel, ViTConfig, ViTModel

        sizes = dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128)
        self.image = ViTModel(ViTConfig(**sizes, image_size=32, patch_size=8), add_pooling_layer=False)
        self.text = BertModel(BertConfig(**sizes, vocab_size=100, max_position_embeddings=32), add_pooling_layer=False)
        self.head = nn.Linear(64, 5)

    def forward(self, pixel_values, input_ids):
        image = self.image(pixel_values=pixel_values).last_hidden_state[:, 0]
        return self.head(image + self.text(input_ids=input_ids).last_hidden_state[:, 0])


def test_a_stream_two_towers_share_is_planned_and_counted_once():
    """Both towers find the joined stream; counted twice, the plan believed it had reached the budget at 71 %."""
    torch.manual_seed(0)
    model = _ImageTextSum().eval()
    inputs = CallParams(pixel_values=torch.randn(2, 3, 32, 32), input_ids=torch.randint(0, 100, (2, 9)))
    before = sum(p.numel() for p in model.parameters())
    left, _ = PruneTorch(model, inputs).analysis(0.6)
    desc = PruneTorch(model, inputs).prune(0.6)
    after = sum(p.numel() for p in model.parameters())
    assert abs(after / before - 0.6) <= 0.02
    assert left == after == desc["__meta__"]["parameters"]["after"]
    assert model.image.layernorm.normalized_shape == model.text.embeddings.LayerNorm.normalized_shape


class _FrozenBackbone(nn.Module):
    """A backbone run under torch.no_grad() in forward(): the dependency graph, which follows gradients, never
    sees its stream."""

    def __init__(self):
        super().__init__()
        from transformers import BertConfig, BertModel

        self.backbone = BertModel(BertConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                             intermediate_size=128, vocab_size=100), add_pooling_layer=False)
        self.adapter = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 64))
        self.head = nn.Linear(64, 2)

    def forward(self, input_ids):
        with torch.no_grad():
            states = self.backbone(input_ids=input_ids).last_hidden_state
        states = states + self.adapter(states)
        return self.head(states[:, 0])


def test_a_stream_the_graph_cannot_see_is_protected_with_the_likely_cause_named(caplog):
    torch.manual_seed(0)
    model = _FrozenBackbone().eval()
    inputs = CallParams(input_ids=torch.randint(0, 100, (2, 10)))
    neurons = model.backbone.encoder.layer[0].intermediate.dense.out_features
    with caplog.at_level(logging.INFO, logger="msmodelslim"):
        PruneTorch(model, inputs).prune(0.6)
    assert "Protected from pruning: hidden (backbone.encoder.layer)" in caplog.text
    assert "torch.no_grad()" in caplog.text
    assert model.backbone.embeddings.word_embeddings.embedding_dim == 64
    assert model.backbone.encoder.layer[0].intermediate.dense.out_features < neurons  # the rest is pruned
    assert model(**inputs.kwargs).shape == (2, 2)
