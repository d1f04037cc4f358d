"""A preset's reward models on random weights, real size or tiny, without any weight file.

The benchmarks need the cost of HPS v2.1, ImageReward, CLIP score, PickScore and the aesthetic
predictor inside a training step, not their scores. So the reward classes of rzero.rewards are
built exactly as a training run builds them (same modules, preprocessing, dtypes, fp32 heads),
except that the weight files are neither looked up nor loaded: `random_weights()` replaces the
file lookup and the state-dict load of each reward module, and builds transformers CLIPs from
their config alone. Tokenizers are small offline ones; the token count a reward pads to (77 for
CLIP, 35 for ImageReward) and the embedding tables keep their real sizes, so the cost is real.

    rewards = preset_rewards(["hps-v2.1", "imagereward"], tiny=False, device="cuda", dtype="bfloat16")

Sizes (real): HPS v2.1 = open_clip ViT-H-14; ImageReward = BLIP ViT-L/16 + BERT-base with
cross-attention; CLIP score and aesthetic = CLIP ViT-L/14; PickScore = CLIP ViT-H/14; all at 224 px.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from pathlib import Path
from unittest import mock

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # tiny_sd: the offline CLIP tokenizer

TINY_OPEN_CLIP = "rzero-bench-tiny-clip"
TINY_IMAGE_SIZE = 32  # tiny rewards look at 32 px (the real ones at 224)

# transformers CLIPConfig sizes: OpenAI CLIP ViT-L/14 (clip-score, aesthetic) and LAION CLIP ViT-H/14 (PickScore).
CLIP_SIZES = {
    "L-14": dict(text=dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12),
                 vision=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                             patch_size=14, image_size=224), projection_dim=768),
    "H-14": dict(text=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                           hidden_act="gelu"),
                 vision=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                             patch_size=14, image_size=224, hidden_act="gelu"), projection_dim=1024),
}
TINY_BLIP = dict(vision=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                             image_size=TINY_IMAGE_SIZE, patch_size=8),
                 text=dict(hidden_size=24, encoder_hidden_size=32, intermediate_size=48, num_hidden_layers=1,
                           num_attention_heads=2, max_position_embeddings=40))


@contextlib.contextmanager
def random_weights():
    """Reward constructors without weight files: lookups return nothing, loads do nothing, and
    transformers models come from their config (random init). Only for benchmarks."""
    import transformers

    from rzero.rewards import aesthetic, clip_common, hps, imagereward

    real_from_pretrained = clip_common.from_pretrained

    def config_only(reward, cls, spec, what, option, **kwargs):
        if isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel):
            return cls(cls.config_class.from_pretrained(spec))
        return real_from_pretrained(reward, cls, spec, what, option, **kwargs)  # tokenizers: the real files

    patches = [mock.patch.object(clip_common, "from_pretrained", config_only)]
    for module in (hps, imagereward, aesthetic):
        patches.append(mock.patch.object(module, "resolve_file", lambda *a, **k: None))
        for name in ("load_state_dict_file", "load_checked"):
            if hasattr(module, name):
                patches.append(mock.patch.object(module, name, lambda *a, **k: {}))
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield


def write_clip_folder(folder: Path, size: str) -> Path:
    """A transformers CLIP folder holding only config.json and an offline tokenizer."""
    from tiny_sd import clip_tokenizer, tiny_hf_clip_config
    from transformers import CLIPConfig

    tok = clip_tokenizer(folder)  # writes vocab.json, merges.txt, tokenizer_config.json into `folder`
    if size == "tiny":  # the tests' tiny CLIP; the aesthetic head reads 768-d embeddings, so that projection width
        config = tiny_hf_clip_config(tok, TINY_IMAGE_SIZE, patch_size=8, projection_dim=768)
    else:
        eos = tok.convert_tokens_to_ids("<|endoftext|>")
        spec = CLIP_SIZES[size]
        # The text tower keeps CLIP's real vocabulary (49408) and 77 positions: the tiny tokenizer's ids fit.
        text = dict(vocab_size=49408, max_position_embeddings=77, eos_token_id=eos, pad_token_id=eos,
                    bos_token_id=eos - 1, **spec["text"])
        config = CLIPConfig(text_config=text, vision_config=spec["vision"], projection_dim=spec["projection_dim"])
    config.save_pretrained(folder)
    cfg = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**cfg, "tokenizer_class": "CLIPTokenizer"}))
    return folder


def write_bert_tokenizer(folder: Path) -> Path:
    """A word-level BERT tokenizer over a few words (ImageReward pads to 35 tokens whatever the vocabulary)."""
    from transformers import BertTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "cat", "on", "sofa", "warm", "light"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def register_tiny_open_clip(folder: Path) -> str:
    import open_clip

    cfg = {"embed_dim": 16,
           "vision_cfg": {"image_size": TINY_IMAGE_SIZE, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{TINY_OPEN_CLIP}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(folder)
    return TINY_OPEN_CLIP


def reward_options(names: list[str], tiny: bool, work: Path) -> dict[str, dict]:
    """Constructor options per reward: the architectures at real or tiny size, offline tokenizers."""
    needs_l = any(n in ("clip-score", "aesthetic") for n in names)
    clip_l = write_clip_folder(work / "clip_l", "tiny" if tiny else "L-14") if needs_l else None
    clip_h = write_clip_folder(work / "clip_h", "tiny" if tiny else "H-14") if "pickscore" in names else None
    options = {}
    for name in names:
        if name in ("hps-v2", "hps-v2.1"):
            options[name] = {"arch": register_tiny_open_clip(work / "open_clip") if tiny else "ViT-H-14"}
        elif name == "imagereward":
            options[name] = {"tokenizer": str(write_bert_tokenizer(work / "bert"))}
            if tiny:  # the text tower keeps its real vocabulary (30524): the few-word tokenizer's ids fit
                options[name].update(vision_config=TINY_BLIP["vision"], text_config=TINY_BLIP["text"])
        elif name in ("clip-score", "aesthetic"):
            options[name] = {"model": str(clip_l)}
        elif name == "pickscore":
            options[name] = {"model": str(clip_h), "processor": str(clip_h)}
        else:
            raise ValueError(f"no random-weight recipe for reward '{name}'")
    return options


def preset_rewards(names: list[str], tiny: bool, device, dtype: str = "float32") -> dict:
    """name -> reward module (frozen, on `device`, in `dtype` with fp32 heads), random weights."""
    from rzero.rewards import make_reward

    device = torch.device(device)
    work = Path(tempfile.mkdtemp(prefix="rzero_rewards_"))
    options = reward_options(names, tiny, work)
    out = {}
    with random_weights(), torch.device(device):  # initialize where the reward runs (fast on a GPU)
        for name in names:
            out[name] = make_reward(name, device=device, dtype=dtype, **options[name])
    return out
