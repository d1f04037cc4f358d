"""ImageReward v1.0 (Xu et al. 2023): BLIP (ViT-L/16 image encoder, BERT-base text encoder with
cross-attention to the image) plus an MLP head, trained on 137k expert preference pairs.

    e = BERT([CLS] prompt [SEP], cross-attending to ViT(image))[CLS]        (768-d)
    score = (MLP(e) - 0.16717362830052426) / 1.0333394966054072

The two constants are the mean and std of the raw head output that the ImageReward
repository subtracts and divides by, so scores are roughly standard-normal over generated
images (R0's table: 0.7-1.3). Prompts: bert-base-uncased tokenizer with BLIP's two added
tokens ([DEC], [ENC]; vocabulary 30524), padded / truncated to 35 tokens, as in the original.

We do not use (or depend on) the `image-reward` package: the networks are transformers'
BlipVisionModel and BlipTextModel, and the original checkpoint's keys are mapped onto them:

    blip.visual_encoder.cls_token              -> visual.embeddings.class_embedding
    blip.visual_encoder.pos_embed              -> visual.embeddings.position_embedding
    blip.visual_encoder.patch_embed.proj.*     -> visual.embeddings.patch_embedding.*
    blip.visual_encoder.blocks.{i}.norm1.*     -> visual.encoder.layers.{i}.layer_norm1.*
    blip.visual_encoder.blocks.{i}.attn.qkv.*  -> visual.encoder.layers.{i}.self_attn.qkv.*
    blip.visual_encoder.blocks.{i}.attn.proj.* -> visual.encoder.layers.{i}.self_attn.projection.*
    blip.visual_encoder.blocks.{i}.norm2.*     -> visual.encoder.layers.{i}.layer_norm2.*
    blip.visual_encoder.blocks.{i}.mlp.fc{1,2}.* -> visual.encoder.layers.{i}.mlp.fc{1,2}.*
    blip.visual_encoder.norm.*                 -> visual.post_layernorm.*
    blip.text_encoder.*                        -> text.*   (same BERT names; position_ids dropped)
    mlp.layers.{0,2,4,6,7}.*                   -> head.layers.{0,2,4,6,7}.*
    blip.vision_proj / text_proj / itm_head    -> unused (BLIP pre-training heads)

Weights: `ImageReward.pt` from the hub repo `THUDM/ImageReward` (a plain state dict, loaded
with weights_only=True; a safetensors conversion is accepted too).
"""

from __future__ import annotations

import re

import torch

from .aesthetic import AestheticHead
from ..utils.io import AssetError, load_checked
from .clip_common import (ScaleReward, from_pretrained, full_precision, lazy_import, load_state_dict_file,
                          resolve_file, resolve_folder)

IMAGEREWARD_HUB_ID = "THUDM/ImageReward"
IMAGEREWARD_FILES = ("ImageReward.pt", "ImageReward.safetensors")
IMAGEREWARD_TOKENIZER = "bert-base-uncased"
IMAGEREWARD_MEAN = 0.16717362830052426
IMAGEREWARD_STD = 1.0333394966054072

# BLIP ViT-L/16 at 224 px (BLIP's create_vit('large')); LayerNorm eps 1e-6 as in BLIP's ViT.
VISION_CONFIG = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                     image_size=224, patch_size=16, layer_norm_eps=1e-6, hidden_act="gelu")
# BLIP's med_config.json (BERT-base with cross-attention to 1024-d image tokens).
TEXT_CONFIG = dict(vocab_size=30524, hidden_size=768, encoder_hidden_size=1024, intermediate_size=3072,
                   num_hidden_layers=12, num_attention_heads=12, max_position_embeddings=512,
                   layer_norm_eps=1e-12, hidden_act="gelu")

_VISION_RULES = [  # (original suffix pattern, our suffix) under blip.visual_encoder. -> visual.
    (r"cls_token", r"embeddings.class_embedding"),
    (r"pos_embed", r"embeddings.position_embedding"),
    (r"patch_embed\.proj\.(\w+)", r"embeddings.patch_embedding.\1"),
    (r"blocks\.(\d+)\.norm1\.(\w+)", r"encoder.layers.\1.layer_norm1.\2"),
    (r"blocks\.(\d+)\.norm2\.(\w+)", r"encoder.layers.\1.layer_norm2.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(\w+)", r"encoder.layers.\1.self_attn.qkv.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(\w+)", r"encoder.layers.\1.self_attn.projection.\2"),
    (r"blocks\.(\d+)\.mlp\.(fc[12])\.(\w+)", r"encoder.layers.\1.mlp.\2.\3"),
    (r"norm\.(\w+)", r"post_layernorm.\1"),
]


def map_original_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Original ImageReward.pt state dict -> this module's names (see the module docstring).

    Keys of BLIP's pre-training heads and the position_ids buffer are dropped; a key under
    the visual encoder that no rule knows is kept under an `unmapped.` name, so that the load
    reports it in its one line of skipped keys instead of ignoring it silently.
    """
    out = {}
    for key, value in sd.items():
        if key.startswith("blip.visual_encoder."):
            rest = key[len("blip.visual_encoder."):]
            for pattern, repl in _VISION_RULES:
                if re.fullmatch(pattern, rest):
                    out["visual." + re.sub(pattern, repl, rest)] = value
                    break
            else:
                out["unmapped." + key] = value
        elif key.startswith("blip.text_encoder."):
            rest = key[len("blip.text_encoder."):]
            if not rest.endswith("position_ids"):  # a buffer, not a weight
                out["text." + rest] = value
        elif key.startswith("mlp."):
            out["head." + key[len("mlp."):]] = value
        elif key.startswith("blip."):
            continue  # vision_proj, text_proj, itm_head, momentum encoders: not used for scoring
        else:
            out["unmapped." + key] = value
    return out


class ImageRewardReward(ScaleReward):
    """ImageReward v1.0; images (B, 3, H, W) in [-1, 1] -> (B,) float32.

    path: ImageReward.pt, a folder holding it, or a hub id (default THUDM/ImageReward).
    tokenizer: BERT tokenizer folder or hub id (default bert-base-uncased).
    vision_config / text_config: overrides of the BLIP configs (tests use tiny ones).
    """

    name = "imagereward"
    max_length = 35  # the original's padding length
    fp32_modules = ("head",)  # the original runs the MLP on `.float()` features

    def __init__(self, path: str | None = None, tokenizer: str = IMAGEREWARD_TOKENIZER, device=None,
                 dtype="float32", asset_dir=None, vision_config: dict | None = None,
                 text_config: dict | None = None):
        super().__init__()
        tf = lazy_import("transformers", "the imagereward reward")
        from transformers.models.blip.modeling_blip_text import BlipTextModel

        # Find the weights before building ~470 M parameters, so a missing file fails fast.
        weights = resolve_file(self.name, path, IMAGEREWARD_FILES, IMAGEREWARD_HUB_ID, asset_dir)
        vcfg = tf.BlipVisionConfig(**{**VISION_CONFIG, **(vision_config or {})})
        tcfg = tf.BlipTextConfig(**{**TEXT_CONFIG, **(text_config or {})})
        self.visual = tf.BlipVisionModel(vcfg)
        self.text = BlipTextModel(tcfg, add_pooling_layer=False)
        self.head = AestheticHead(tcfg.hidden_size)  # same 5-linear layout as the aesthetic MLP
        self.resolution = vcfg.image_size

        self.tokenizer = from_pretrained(self.name, tf.BertTokenizer, resolve_folder(self.name, tokenizer, asset_dir),
                                         "BERT tokenizer", "tokenizer")
        # BLIP's init_tokenizer: a decoder BOS and an encoder token, appended to the vocabulary.
        self.tokenizer.add_special_tokens({"bos_token": "[DEC]"})
        self.tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
        if len(self.tokenizer) > tcfg.vocab_size:
            raise AssetError(f"{self.name}: tokenizer '{tokenizer}' has {len(self.tokenizer)} tokens, more than the "
                             f"text encoder's {tcfg.vocab_size}; use the bert-base-uncased tokenizer")

        load_checked(self, map_original_keys(load_state_dict_file(weights)), weights)
        self.place(device, dtype)

    def score(self, images, prompts):
        image_tokens = self.visual(pixel_values=images).last_hidden_state  # (B, 1 + patches, 1024)
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.max_length,
                             return_tensors="pt").to(images.device)
        image_mask = torch.ones(image_tokens.shape[:-1], dtype=torch.long, device=images.device)
        text = self.text(input_ids=tok.input_ids, attention_mask=tok.attention_mask,
                         encoder_hidden_states=image_tokens, encoder_attention_mask=image_mask)
        with full_precision(self.device):
            raw = self.head(text.last_hidden_state[:, 0].float())  # (B,)
            return (raw - IMAGEREWARD_MEAN) / IMAGEREWARD_STD
