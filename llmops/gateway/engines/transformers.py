"""The in-process `transformers` engine: one base model, its peft adapters, continuous batching.

One worker thread owns the model. The event loop talks to it through a queue of commands (new
sequences, cancellations, adapter loads, embedding jobs) and gets tokens back in one callback per
decoding step, so the loop is woken once per step rather than once per token.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import threading
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional, Sequence

from llmops.gateway.engines.base import GenerationRequest, HFTokenizerMixin, TokenEvent

__all__ = ["TransformersEngine"]

_log = logging.getLogger(__name__)
_STOP = object()


class TransformersEngine(HFTokenizerMixin):
    """Serve `model_path` (a Hugging Face model folder) with transformers and peft.

    Args:
        model_path: Local folder of the base (or merged) model.
        device: `auto`, `cpu`, `cuda`, `cuda:N`.
        dtype: `auto` (bfloat16 on CUDA, float32 on CPU), `float32`, `bfloat16`, `float16`.
        max_batch_size: Most sequences decoded together.
        max_loaded_adapters: Adapters kept loaded; the least recently used idle one goes beyond this.
        revision: Hub revision when `model_path` is a hub id.
    """

    def __init__(self, model_path: str | Path, device: str = "auto", dtype: str = "auto",
                 max_batch_size: int = 32, max_loaded_adapters: int = 64, revision: Optional[str] = None):
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.model_path = Path(model_path)
        source = str(model_path)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
        self.base_model = AutoModelForCausalLM.from_pretrained(source, revision=revision, dtype=getattr(torch, dtype))
        self.base_model.to(self.device).eval()
        self.model: Any = self.base_model
        config = self.base_model.config
        self.max_context = int(getattr(config, "max_position_embeddings", 2048))
        generation = self.base_model.generation_config
        eos = generation.eos_token_id if generation.eos_token_id is not None else config.eos_token_id
        self.eos_ids = set(eos if isinstance(eos, (list, tuple)) else [eos] if eos is not None else [])
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else next(iter(self.eos_ids), 0)
        self.max_batch_size = max_batch_size
        self.max_loaded_adapters = max_loaded_adapters
        self._adapters: OrderedDict[str, Path] = OrderedDict()  # name -> path, least recently used first
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._waiting: list = []
        self._deliveries = _Deliveries()
        self.aborted = 0
        self._default_sampling = bool(generation.do_sample)
        from llmops.gateway.engines.batching import RunningBatch

        self._batch = RunningBatch(self.model, self.device, int(pad), self.eos_ids, self.max_context)
        self._thread = threading.Thread(target=self._run, name=f"engine:{self.model_path.name}", daemon=True)
        self._thread.start()

    @property
    def samples_by_default(self) -> bool:
        """True when the model's generation config samples (temperature None then means 1.0)."""
        return self._default_sampling

    # ------------------------------------------------------------------------------- async API

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Stream the tokens of `request`; leaving the loop early cancels the sequence."""
        import torch

        from llmops.gateway.engines.batching import Sequence as _Seq

        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        generator = None
        if request.params.temperature:
            generator = torch.Generator(device="cpu" if self.device.type == "cpu" else self.device)
            generator.manual_seed(request.params.seed if request.params.seed is not None
                                  else int(torch.randint(0, 2**62, (1,))))
        seq = _Seq(request=request, emit=self._deliveries.sink(loop, events, request.stream), generator=generator)
        self._commands.put(("add", seq))
        finished = False
        try:
            while True:
                event = await events.get()
                yield event
                if event.finish_reason is not None:
                    finished = True
                    return
        finally:
            if not finished:
                self._commands.put(("cancel", seq))

    async def embed(self, texts: Sequence[str]) -> tuple[list[list[float]], int]:
        """Mean-pooled, L2-normalised last hidden states of the base model (adapters off)."""
        return await asyncio.wrap_future(self._call(lambda: self._embed(list(texts))))

    async def load_adapter(self, name: str, path: Path) -> None:
        """Load a peft adapter under `name` (no-op when loaded); unload the least recently used idle one
        beyond `max_loaded_adapters`."""
        if name in self._adapters:
            self._adapters.move_to_end(name)
            return
        await asyncio.wrap_future(self._call(lambda: self._load_adapter(name, Path(path))))

    def stats(self) -> dict[str, int]:
        """Running and waiting sequences, and how many were cancelled before they finished."""
        return {"running": len(self._batch), "waiting": len(self._waiting), "aborted": self.aborted}

    async def close(self) -> None:
        """Stop the worker thread."""
        self._commands.put((_STOP, None))
        await asyncio.to_thread(self._thread.join, 30)

    # --------------------------------------------------------------------------- worker thread

    def _call(self, fn: Callable[[], Any]) -> Future:
        future: Future = Future()
        self._commands.put(("call", (fn, future)))
        return future

    def _run(self) -> None:
        while True:
            try:
                block = not self._batch.seqs and not self._waiting
                while True:
                    try:
                        command, payload = self._commands.get(block=block)
                    except queue.Empty:
                        break
                    block = False
                    if command is _STOP:
                        return
                    self._handle(command, payload)
                self._admit()
                self._batch.step()
                self._deliveries.flush()
            except Exception:  # a bug must fail the requests, not kill the engine
                _log.exception("engine step failed; aborting the running sequences")
                for seq in self._batch.seqs + self._waiting:
                    seq.emit(TokenEvent(-1, finish_reason="error"))
                self._batch.seqs, self._waiting = [], []
                self._batch._drop_finished()
                self._deliveries.flush()

    def _handle(self, command: str, payload: Any) -> None:
        if command == "add":
            self._waiting.append(payload)
        elif command == "cancel":
            if not payload.cancelled:
                self.aborted += 1
            payload.cancelled = True
            if payload in self._waiting:
                self._waiting.remove(payload)
        elif command == "call":
            fn, future = payload
            try:
                future.set_result(fn())
            except BaseException as error:
                future.set_exception(error)

    def _admit(self) -> None:
        room = self.max_batch_size - len(self._batch)
        if room <= 0 or not self._waiting:
            return
        admitted, self._waiting = self._waiting[:room], self._waiting[room:]
        admitted = [s for s in admitted if not s.cancelled]
        if admitted:
            for seq in admitted:
                if seq.request.adapter:
                    self._adapters.move_to_end(seq.request.adapter)
            self._batch.add(admitted)

    def _load_adapter(self, name: str, path: Path) -> None:
        from peft import PeftModel

        if name in self._adapters:
            return
        if not hasattr(self.model, "peft_config"):
            self.model = PeftModel.from_pretrained(self.base_model, str(path), adapter_name=name)
        else:
            self.model.load_adapter(str(path), adapter_name=name)
        self.model.to(self.device).eval()
        self._batch.model = self.model
        self._adapters[name] = path
        in_use = {s.request.adapter for s in self._batch.seqs + self._waiting}
        for old in list(self._adapters):
            if len(self._adapters) <= self.max_loaded_adapters:
                break
            if old not in in_use and old != name:
                self.model.delete_adapter(old)
                del self._adapters[old]

    def _embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        import contextlib

        import torch

        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_context, return_tensors="pt")
        encoded = {k: v.to(self.device) for k, v in encoded.items() if k in ("input_ids", "attention_mask")}
        off = self.model.disable_adapter() if hasattr(self.model, "peft_config") else contextlib.nullcontext()
        with torch.inference_mode(), off:
            hidden = self.model(**encoded, output_hidden_states=True).hidden_states[-1].float()
        mask = encoded["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        pooled = torch.nn.functional.normalize(pooled, dim=-1)
        return pooled.cpu().tolist(), int(encoded["attention_mask"].sum())


class _Deliveries:
    """Token events of one decoding step, handed to each event loop in one callback."""

    def __init__(self) -> None:
        self.pending: dict = {}

    def sink(self, loop: asyncio.AbstractEventLoop, events: asyncio.Queue,
             stream: bool = True) -> Callable[[TokenEvent], None]:
        """The `emit` function of one sequence; unless `stream`, events are held until the last one."""
        if stream:
            return lambda event: self.pending.setdefault(loop, []).append((events, event))
        held: list = []

        def emit(event: TokenEvent) -> None:
            held.append((events, event))
            if event.finish_reason is not None:
                self.pending.setdefault(loop, []).extend(held)
                held.clear()

        return emit

    def flush(self) -> None:
        pending, self.pending = self.pending, {}
        for loop, items in pending.items():
            try:
                loop.call_soon_threadsafe(_put_all, items)
            except RuntimeError:  # the loop is closed (server shutting down)
                pass


def _put_all(items: list) -> None:
    for events, event in items:
        events.put_nowait(event)
