"""A tiny but real SDXL pipeline folder for CPU tests (random weights, no hub, no network).

`build_tiny_sdxl(path)` saves a folder that `StableDiffusionXLPipeline.from_pretrained` loads:
the UNet and text encoders at the sizes diffusers' own SDXL fast tests use (two CLIP encoders of
hidden size 32, the second with a projection; UNet cross-attention dim 32 + 32 = 64 and pooled
32 + 6 x 8 time ids = 80), a small four-level VAE (so latents are 1/8 of the image, as in SDXL),
and two tiny CLIP tokenizers from tests/tiny_clip.py (tokenizer_2 pads with "!", as SDXL's does).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tests.tiny_clip import build_clip_tokenizer

HIDDEN = 32
CROSS_ATTENTION_DIM = 2 * HIDDEN  # the tiny "2048"


def tiny_unet(block_out_channels: tuple[int, ...] = (32, 64), layers: tuple[int, ...] = (1, 2)):  # type: ignore[no-untyped-def]
    from diffusers import UNet2DConditionModel

    down = ("DownBlock2D",) + ("CrossAttnDownBlock2D",) * (len(block_out_channels) - 1)
    up = ("CrossAttnUpBlock2D",) * (len(block_out_channels) - 1) + ("UpBlock2D",)
    return UNet2DConditionModel(
        block_out_channels=block_out_channels,
        layers_per_block=2,
        sample_size=32,
        in_channels=4,
        out_channels=4,
        down_block_types=down,
        up_block_types=up,
        attention_head_dim=tuple(max(1, c // 16) for c in block_out_channels),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        transformer_layers_per_block=layers,
        projection_class_embeddings_input_dim=6 * 8 + HIDDEN,
        cross_attention_dim=CROSS_ATTENTION_DIM,
        norm_num_groups=1,
    )


def build_tiny_sdxl(path: Path) -> Path:
    """Write a loadable tiny SDXL pipeline folder at `path` and return it."""
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    torch.manual_seed(0)
    tokenizer = build_clip_tokenizer(path / "_tok1")
    tokenizer_2 = build_clip_tokenizer(path / "_tok2", pad_token="!")
    for tok in (tokenizer, tokenizer_2):
        tok.model_max_length = 77  # CLIP's context; the trained tokenizer does not know it
    unet = tiny_unet()
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
        sample_size=128,
        scaling_factor=0.13025,
    )

    def text_config() -> CLIPTextConfig:
        return CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=HIDDEN,
            intermediate_size=37,
            layer_norm_eps=1e-05,
            num_attention_heads=4,
            num_hidden_layers=3,
            vocab_size=len(tokenizer_2) + 8,
            hidden_act="gelu",
            projection_dim=HIDDEN,
        )

    text_encoder = CLIPTextModel(text_config())
    text_encoder_2 = CLIPTextModelWithProjection(text_config())
    scheduler = EulerDiscreteScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", steps_offset=1
    )
    pipe = StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer_2,
        unet=unet,
        scheduler=scheduler,
    )
    pipe.save_pretrained(path)
    for scratch in ("_tok1", "_tok2"):
        shutil.rmtree(path / scratch)
    return path
