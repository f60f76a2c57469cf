"""A tiny but real FLUX.2 [klein] pipeline folder for CPU tests (random weights, no hub, no network).

`build_tiny_flux2(path)` saves a folder that `Flux2KleinPipeline.from_pretrained` loads, at the
sizes diffusers' own klein fast tests use: a `Flux2Transformer2DModel` with two heads of 16
channels (two double-stream and two single-stream blocks, so locality can be measured after the
first block), an `AutoencoderKLFlux2` with two levels (latents are 1/2 of the image, so 64 px is a
16 x 16 grid of image tokens), and a 4-layer `Qwen3ForCausalLM` text encoder whose three hidden
states the transformer reads (joint_attention_dim 3 x 16). The tokenizer is a Qwen2-style
byte-level BPE trained here, with Qwen3's chat tokens and a chat template that honours
`enable_thinking`, saved with `Qwen2TokenizerFast` so the pipeline loads the class it expects;
its `model_max_length` of 64 caps the renderer's text blocks (klein's real limit is 512).
"""

from __future__ import annotations

from pathlib import Path

import torch

TEXT_HIDDEN = 16
TEXT_LAYERS = 4
LATENT_CHANNELS = 4
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]

# Qwen3's chat layout, trimmed to what the pipeline uses (one user turn, generation prompt, and the
# empty think block Qwen3 writes when thinking is off).
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}"
    "{% endif %}"
)


def build_qwen_tokenizer(vocab_size: int = 600):  # type: ignore[no-untyped-def]
    """A byte-level BPE in a Qwen2TokenizerFast, trained on the seed conversation."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    from tests.seed import seed_messages

    core = Tokenizer(models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator([m["content"] for m in seed_messages()], trainer=trainer)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=core, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    # Keeps prompts short where a test does not choose (the CLI): the renderer pads to at most this.
    tokenizer.model_max_length = 64
    return tokenizer


def tiny_transformer(num_layers: int = 2, num_single_layers: int = 2):  # type: ignore[no-untyped-def]
    from diffusers import Flux2Transformer2DModel

    return Flux2Transformer2DModel(
        patch_size=1,
        in_channels=4 * LATENT_CHANNELS,  # 2 x 2 patches of the VAE's latent channels
        num_layers=num_layers,
        num_single_layers=num_single_layers,
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=3 * TEXT_HIDDEN,
        timestep_guidance_channels=256,
        axes_dims_rope=(4, 4, 4, 4),
        guidance_embeds=False,  # klein has no guidance embedding
    )


def build_tiny_flux2(path: Path, *, distilled: bool = False) -> Path:
    """Write a loadable tiny klein pipeline folder at `path` and return it.

    `distilled=False` is a "base" checkpoint (true CFG with a negative pass); True a step-distilled
    one (guidance ignored), as model_index.json's `is_distilled` says for the real ones.
    """
    from diffusers import AutoencoderKLFlux2, FlowMatchEulerDiscreteScheduler, Flux2KleinPipeline
    from transformers import Qwen3Config, Qwen3ForCausalLM

    tokenizer = build_qwen_tokenizer()
    torch.manual_seed(0)
    transformer = tiny_transformer()
    torch.manual_seed(0)
    text_encoder = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=len(tokenizer),
            hidden_size=TEXT_HIDDEN,
            intermediate_size=32,
            num_hidden_layers=TEXT_LAYERS,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=8,
            max_position_embeddings=512,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    torch.manual_seed(0)
    vae = AutoencoderKLFlux2(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        block_out_channels=(8, 8),
        layers_per_block=1,
        latent_channels=LATENT_CHANNELS,
        norm_num_groups=2,
        sample_size=64,
        use_quant_conv=False,
        use_post_quant_conv=False,
    )
    scheduler = FlowMatchEulerDiscreteScheduler(
        shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, time_shift_type="exponential"
    )
    pipe = Flux2KleinPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        transformer=transformer,
        is_distilled=distilled,
    )
    path.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(path)
    return path
