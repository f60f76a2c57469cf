"""The local backend: an Omost model run with transformers on this machine (SPEC.md section 7).

Owns loading (a hub id or a local folder; the quantisation config a repo ships is honoured, or
bitsandbytes quantises on load to 4 or 8 bit; dtype and device picked for the hardware),
the chat template, context trimming (context.py), streaming generation in a thread of its own,
cancellation within one token, seeds, prompt-lookup decoding on edit turns, and turning
library failures into the engine's errors:

    OSError / bad repo id while loading   -> ModelNotAvailable (names the model, `omost-bot download`)
    torch.OutOfMemoryError                -> OutOfMemory (names the model and the memory needed)
    cancel event set                      -> errors.Interrupted

Prompt lookup (n-gram speculative decoding, transformers' `prompt_lookup_num_tokens`) proposes
the tokens that followed the latest matching n-gram of the prompt; the model checks them all in one
forward pass. An edit turn mostly repeats the previous canvas, so many proposals are accepted;
under greedy decoding the output is exactly that of plain decoding.

With constrain = "auto" (the default) every answer is decoded under the Canvas grammar
(llm/constrain.py): a logits processor masks the tokens that would break the canvas and, near the
end of the budget, closes it by the shortest path, so every answer parses. It works with prompt
lookup (the matcher rolls back rejected candidates), streaming, cancellation and seeds.

It knows nothing of chats, queues or the renderer; torch and transformers are imported lazily so
that importing this module stays cheap.
"""

from __future__ import annotations

import gc
import logging
import queue
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from omost_engine.errors import EngineError, Interrupted, ModelNotAvailable, OutOfMemory
from omost_engine.llm.base import ChatMessage, Generation, GenerationParams, GenerationStats
from omost_engine.llm.context import (
    DEFAULT_CONTEXT_TOKENS,
    fit_to_context,
    has_canvas,
    with_system_prompt,
)

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

DEFAULT_MODEL = "lllyasviel/omost-llama-3-8b-4bits"
Quantize = Literal["4bit", "8bit"]

# bench/bench_llm.py: on the seed's second answer 50/4 needs 0.111 forward passes per token, within
# 10% of the sweep's minimum (120/5: 0.102) while verifying at most 50 tokens a pass (docs/benchmarks.md).
DEFAULT_PROMPT_LOOKUP_TOKENS = 50
DEFAULT_MATCHING_NGRAM = 4

_POLL_SECONDS = 0.02  # how often the consumer looks at the cancel event while waiting for text
_GB = 1024**3


@dataclass(frozen=True)
class MemoryEstimate:
    """What a model needs on its device, in bytes (weights plus the KV cache of a full context)."""

    weights: int
    kv_cache: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache


def estimate_memory(
    config: Any, quantize: Quantize | None, dtype_bytes: int = 2, context_tokens: int = DEFAULT_CONTEXT_TOKENS
) -> MemoryEstimate:
    """A decoder-only transformer's footprint from its config (Llama-shaped: attention + gated MLP).

    bitsandbytes quantises the linear layers of the blocks; embeddings and the output head stay in
    `dtype_bytes`. For Llama-3-8B in 4 bit this gives about 5.6 GiB of weights (SPEC 7: ~5.7 GB).
    """
    hidden = int(config.hidden_size)
    layers = int(config.num_hidden_layers)
    heads = int(config.num_attention_heads)
    kv_heads = int(getattr(config, "num_key_value_heads", None) or heads)
    head_dim = int(getattr(config, "head_dim", None) or hidden // heads)
    intermediate = int(config.intermediate_size)
    vocab = int(config.vocab_size)
    tied = bool(getattr(config, "tie_word_embeddings", False))
    block = hidden * heads * head_dim * 2 + hidden * kv_heads * head_dim * 2 + 3 * hidden * intermediate
    outer = vocab * hidden * (1 if tied else 2)
    per_param = {"4bit": 0.5, "8bit": 1.0, None: float(dtype_bytes)}[quantize]
    weights = int(layers * block * per_param + outer * dtype_bytes)
    kv = 2 * layers * kv_heads * head_dim * context_tokens * dtype_bytes
    return MemoryEstimate(weights, kv)


def _shipped_quantize(config: Any) -> Quantize | None:
    q = getattr(config, "quantization_config", None)
    if q is None:
        return None
    get = q.get if isinstance(q, dict) else (lambda k, d=None: getattr(q, k, d))
    if get("load_in_4bit", False) or get("_load_in_4bit", False):
        return "4bit"
    if get("load_in_8bit", False) or get("_load_in_8bit", False):
        return "8bit"
    return None


def _looks_like_path(model: str) -> bool:
    return model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().exists()


class LocalBackend:
    """transformers' AutoModelForCausalLM behind the LLMBackend protocol.

    Weights load on the first `generate()` (or an explicit `load()`); `unload()` drops them so
    the renderer can have the GPU, and the next generation brings them back.
    """

    remote = False

    def __init__(
        self,
        model: str = DEFAULT_MODEL,
        *,
        quantize: Quantize | None = None,
        device: str = "auto",
        dtype: str = "auto",
        context_tokens: int = DEFAULT_CONTEXT_TOKENS,
        prompt_lookup_num_tokens: int | None = DEFAULT_PROMPT_LOOKUP_TOKENS,
        max_matching_ngram_size: int = DEFAULT_MATCHING_NGRAM,
        offline: bool | None = None,
        cache_dir: str | None = None,
        constrain: Literal["auto", "off"] = "auto",
    ) -> None:
        if constrain not in ("auto", "off"):
            raise ValueError(f"constrain must be 'auto' or 'off', not {constrain!r}")
        if quantize not in (None, "4bit", "8bit"):
            raise ValueError(f"quantize must be '4bit', '8bit' or None, not {quantize!r}")
        self.model_id = model
        self.name = f"local:{model}"
        self.quantize: Quantize | None = quantize
        self.device_setting = device
        self.dtype_setting = dtype
        self.context_tokens = context_tokens
        self.prompt_lookup_num_tokens = prompt_lookup_num_tokens
        self.max_matching_ngram_size = max_matching_ngram_size
        self._offline = offline
        self._cache_dir = cache_dir
        self.constrain = constrain
        self._model: Any = None
        self._tokenizer: Any = None
        self._config: Any = None
        self.device: str | None = None
        self.quantized: Quantize | None = None  # what the loaded model actually is
        self._lock = threading.Lock()

    @property
    def enforces_grammar(self) -> bool:
        """True when every answer is decoded under the Canvas grammar (constrain = "auto")."""
        return self.constrain == "auto"

    # --- loading -------------------------------------------------------------------------

    @property
    def loaded(self) -> bool:
        return self._model is not None

    def _is_offline(self) -> bool:
        if self._offline is not None:
            return self._offline
        from huggingface_hub import constants

        return bool(constants.HF_HUB_OFFLINE)

    def _not_available(self, error: Exception) -> ModelNotAvailable:
        model = self.model_id
        if _looks_like_path(model) and not Path(model).expanduser().exists():
            where = f"The language model folder {model!r} does not exist."
        elif _looks_like_path(model):
            where = f"The language model folder {model!r} does not hold a usable model ({error})."
        elif self._is_offline():
            where = f"The language model {model!r} is not on this machine, and downloads are off (offline)."
        else:
            where = f"The language model {model!r} could not be found or downloaded ({error})."
        fix = (
            "Check the path, or use a hub id and fetch it with `omost-bot download --llm`."
            if _looks_like_path(model)  # nothing to download for a local folder
            else f"Fetch it with `omost-bot download --llm --llm-model {model}`, "
            "or point the config at a local folder that holds it."
        )
        return ModelNotAvailable(model, f"{where} {fix}")

    def _pick_device(self) -> str:
        import torch

        if self.device_setting != "auto":
            return self.device_setting
        return "cuda" if torch.cuda.is_available() else "cpu"

    def _pick_dtype(self, device: str) -> torch.dtype:
        import torch

        if self.dtype_setting != "auto":
            dtype = getattr(torch, self.dtype_setting, None)
            if not isinstance(dtype, torch.dtype):
                raise ValueError(f"unknown dtype {self.dtype_setting!r} (try float32, bfloat16, float16)")
            return dtype
        if device.startswith("cuda"):
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32  # CPU: half precision is slow or unsupported for many kernels

    def _oom(self, doing: str, dtype_bytes: int) -> OutOfMemory:
        import torch

        need = estimate_memory(
            self._config, self.quantized or self.quantize, dtype_bytes, self.context_tokens
        )
        free = ""
        if torch.cuda.is_available():
            free_bytes, _ = torch.cuda.mem_get_info()
            free = f", and {free_bytes / _GB:.1f} GB was free"
        return OutOfMemory(
            self.model_id,
            f"The GPU ran out of memory {doing} the language model {self.model_id!r}: it needs about "
            f"{need.total / _GB:.1f} GB ({need.weights / _GB:.1f} GB of weights, "
            f"{need.kv_cache / _GB:.1f} GB for a {self.context_tokens}-token context){free}. "
            "Use a 4-bit model, a shorter conversation, or an OpenAI-compatible server.",
            needed_bytes=need.total,
        )

    def load(self) -> None:
        """Load tokenizer and weights (no-op when resident). Raises ModelNotAvailable / OutOfMemory."""
        with self._lock:
            if self._model is not None:
                return
            import torch
            from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig

            source = (
                str(Path(self.model_id).expanduser()) if _looks_like_path(self.model_id) else self.model_id
            )
            hub: dict[str, Any] = {"local_files_only": self._is_offline()}
            if self._cache_dir:
                hub["cache_dir"] = self._cache_dir
            try:
                config = AutoConfig.from_pretrained(source, **hub)
                tokenizer = self._tokenizer or AutoTokenizer.from_pretrained(source, **hub)
            except (OSError, ValueError) as e:  # missing files, offline, malformed repo id
                raise self._not_available(e) from e
            if not getattr(tokenizer, "chat_template", None):
                raise ModelNotAvailable(
                    self.model_id,
                    f"The tokenizer of {self.model_id!r} has no chat template; Omost models ship one.",
                )
            self._config = config
            device = self._pick_device()
            dtype = self._pick_dtype(device)
            shipped = _shipped_quantize(config)
            quantization: Any = None
            if shipped is not None:
                if self.quantize and self.quantize != shipped:
                    log.warning(
                        "%s ships %s weights; ignoring quantize=%s", self.model_id, shipped, self.quantize
                    )
            elif self.quantize == "4bit":
                quantization = BitsAndBytesConfig(
                    load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype
                )
            elif self.quantize == "8bit":
                quantization = BitsAndBytesConfig(load_in_8bit=True)
            self.quantized = shipped or self.quantize
            dtype_bytes = torch.empty((), dtype=dtype).element_size()
            if quantization is not None:
                # Only when set: an explicit quantization_config=None makes transformers 5 ignore
                # the config a pre-quantised repo ships (its weights then fail to load).
                hub["quantization_config"] = quantization
            try:
                model = AutoModelForCausalLM.from_pretrained(
                    source, dtype=dtype, device_map={"": device}, **hub
                )
            except torch.OutOfMemoryError as e:
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                raise self._oom("while loading", dtype_bytes) from e
            except (OSError, ValueError) as e:
                raise self._not_available(e) from e
            except ImportError as e:  # bitsandbytes or accelerate missing
                raise EngineError(
                    f"Loading {self.model_id!r} in {self.quantized} needs bitsandbytes: "
                    f"pip install 'omost-bot[gpu]' ({e})"
                ) from e
            model.eval()
            self._model, self._tokenizer, self.device = model, tokenizer, device
            log.info(
                "loaded %s on %s (%s, %s)", self.model_id, device, dtype, self.quantized or "unquantised"
            )

    def unload(self) -> None:
        """Drop the weights (the tokenizer stays); the next generation loads them again."""
        with self._lock:
            if self._model is None:
                return
            self._model = None
            gc.collect()
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()

    def close(self) -> None:
        self.unload()
        self._tokenizer = None

    # --- generation ----------------------------------------------------------------------

    def _chat_ids(self, messages: Sequence[ChatMessage]) -> Any:
        enc = self._tokenizer.apply_chat_template(
            [{"role": m.role, "content": m.content} for m in messages],
            add_generation_prompt=True,
            return_dict=True,
            return_tensors="pt",
        )
        return enc

    def _count_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return int(self._chat_ids(messages)["input_ids"].shape[-1])

    def _stop_ids(self) -> list[int]:
        ids: list[int] = []
        configured = self._model.generation_config.eos_token_id
        if isinstance(configured, int):
            ids.append(configured)
        elif configured:
            ids.extend(int(i) for i in configured)
        if self._tokenizer.eos_token_id is not None:
            ids.append(int(self._tokenizer.eos_token_id))
        eot = self._tokenizer.convert_tokens_to_ids("<|eot_id|>")  # Llama 3 ends a turn with it
        if isinstance(eot, int) and eot != self._tokenizer.unk_token_id:
            ids.append(eot)
        return sorted(set(ids))

    def generate(
        self, messages: Sequence[ChatMessage], params: GenerationParams, cancel: threading.Event
    ) -> Generation:
        """Start generating in a worker thread; iterate the result for text pieces."""
        if cancel.is_set():
            raise Interrupted()
        self.load()
        stats = GenerationStats()
        fit = fit_to_context(
            with_system_prompt(messages), self._count_tokens, self.context_tokens, params.max_new_tokens
        )
        stats.prompt_tokens = fit.prompt_tokens
        stats.dropped_messages = fit.dropped_messages
        if note := fit.note(self.context_tokens):
            stats.notes.append(note)
        max_new = min(params.max_new_tokens, self.context_tokens - fit.prompt_tokens)
        if max_new < params.max_new_tokens:
            stats.notes.append(f"The answer is limited to {max_new} tokens to fit the model's context.")
        kwargs = self._generate_kwargs(params, max_new)
        if self.prompt_lookup_num_tokens and has_canvas(fit.messages):
            kwargs["prompt_lookup_num_tokens"] = self.prompt_lookup_num_tokens
            kwargs["max_matching_ngram_size"] = self.max_matching_ngram_size
        return Generation(self._stream(fit.messages, kwargs, params.seed, stats, cancel), stats)

    def _generate_kwargs(self, params: GenerationParams, max_new: int) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": max_new, "eos_token_id": self._stop_ids()}
        if self._tokenizer.pad_token_id is not None:
            kwargs["pad_token_id"] = self._tokenizer.pad_token_id
        if params.temperature <= 0:  # SPEC 7: temperature 0 means greedy
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        else:  # top_k 50: transformers' default, which Omost's call leaves in force (issue 12)
            kwargs.update(do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=50)
        return kwargs

    def _grammar_processor(self, model: Any, prompt_length: int, kwargs: dict[str, Any]) -> Any:
        """The Canvas grammar's logits processor for one generation, or None when constrain = "off"."""
        if not self.enforces_grammar:
            return None
        from omost_engine.llm.constrain import CanvasLogitsProcessor, tokenizer_view

        stops = kwargs["eos_token_id"]
        eos = self._tokenizer.eos_token_id
        stop_id = eos if eos in stops else stops[0]
        view = tokenizer_view(self._tokenizer, int(model.get_output_embeddings().weight.shape[0]))
        return CanvasLogitsProcessor(view, prompt_length, kwargs["max_new_tokens"], stop_id)

    def _stream(
        self,
        messages: list[ChatMessage],
        kwargs: dict[str, Any],
        seed: int | None,
        stats: GenerationStats,
        cancel: threading.Event,
    ) -> Iterator[str]:
        import torch
        from transformers import (
            LogitsProcessorList,
            StoppingCriteria,
            StoppingCriteriaList,
            TextIteratorStreamer,
        )

        model, tokenizer = self._model, self._tokenizer
        if model is None:  # unloaded between generate() and the first piece
            self.load()
            model = self._model
        enc = {k: v.to(model.device) for k, v in self._chat_ids(messages).items()}
        processor = self._grammar_processor(model, int(enc["input_ids"].shape[-1]), kwargs)
        if processor is not None:
            kwargs = {**kwargs, "logits_processor": LogitsProcessorList([processor])}

        class CountingStreamer(TextIteratorStreamer):
            def put(self, value: torch.Tensor) -> None:
                if not self.next_tokens_are_prompt:
                    stats.new_tokens += int(value.numel())
                super().put(value)

        class CancelCriteria(StoppingCriteria):
            def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor, **_: Any) -> torch.Tensor:
                stop = cancel.is_set() or abandoned.is_set()
                return torch.full((input_ids.shape[0],), stop, dtype=torch.bool, device=input_ids.device)

        abandoned = threading.Event()  # the consumer closed the stream early
        streamer = CountingStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        failure: list[BaseException] = []

        def count_pass(*_: Any) -> None:
            stats.forward_passes += 1

        def work() -> None:
            hook = model.register_forward_hook(count_pass)
            try:
                if seed is not None:
                    torch.manual_seed(seed)  # seeds CPU and every CUDA device
                with torch.inference_mode():
                    model.generate(
                        **enc,
                        **kwargs,
                        streamer=streamer,
                        stopping_criteria=StoppingCriteriaList([CancelCriteria()]),
                    )
            except BaseException as e:
                failure.append(e)
                streamer.text_queue.put(streamer.stop_signal)
            finally:
                hook.remove()

        started = time.perf_counter()
        thread = threading.Thread(target=work, name=f"llm-generate:{self.model_id}", daemon=True)
        thread.start()
        try:
            while True:
                if cancel.is_set():
                    raise Interrupted()
                try:
                    piece = streamer.text_queue.get(timeout=_POLL_SECONDS)
                except queue.Empty:
                    continue
                if piece is streamer.stop_signal:
                    break
                if cancel.is_set():
                    raise Interrupted()
                stats.seconds = time.perf_counter() - started
                if piece:
                    yield piece
        finally:
            abandoned.set()  # no-op once generate() returned; stops it when the consumer left early
            thread.join()
            stats.seconds = time.perf_counter() - started
        if failure:
            error = failure[0]
            if isinstance(error, torch.OutOfMemoryError):
                gc.collect()
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
                dtype_bytes = next(model.parameters()).element_size()
                raise self._oom("while generating with", max(dtype_bytes, 2)) from error
            raise EngineError(
                f"The language model {self.model_id!r} failed while writing: {error}"
            ) from error
        if stats.new_tokens >= kwargs["max_new_tokens"]:
            stats.notes.append(f"The answer stopped at the {kwargs['max_new_tokens']}-token limit.")
