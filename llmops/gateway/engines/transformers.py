"""The in-process `transformers` engine: one base model, its peft adapters, continuous batching.

One worker thread owns the model. The event loop talks to it through a queue of commands (new
sequences, cancellations, adapter loads, embedding jobs) and gets tokens back in one callback per
decoding step, so the loop is woken once per step rather than once per token.

Isolation between requests: sampling parameters are checked as vLLM checks them before anything is
queued (`sampling.py`); sequences are keyed by the engine, never by a client's request id; a row
that fails ends only its own sequence; a failed prefill is retried one sequence at a time so only
the one at fault fails; admission is fair between requests (`scheduler.py`).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections import OrderedDict
from concurrent.futures import Future
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Optional, Sequence

from llmops.gateway.engines.base import GenerationRequest, HFTokenizerMixin, TokenEvent
from llmops.gateway.engines.delivery import TokenDeliveries, discard
from llmops.gateway.engines.scheduler import FairScheduler

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
        self.vocab_size = int(self.base_model.get_input_embeddings().weight.shape[0])
        self._commands: queue.SimpleQueue = queue.SimpleQueue()
        self._keys = itertools.count(1)  # engine keys of sequences; next() is atomic under the GIL
        self._scheduler = FairScheduler()
        self._deliveries = TokenDeliveries()
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
        """Stream the tokens of `request`; leaving the loop early cancels the sequence.

        Raises:
            GenerationRequestError: sampling parameters vLLM would reject, or prompt ids that are
                empty, outside the vocabulary or too long (before anything is queued).
        """
        seq = self._new_sequence(request)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        seq.emit = self._deliveries.sink(loop, events, request.stream)
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

    def _new_sequence(self, request: GenerationRequest):
        """A checked `Sequence` for `request`, keyed by the engine (never by the client's request id)."""
        import torch

        from llmops.gateway.engines.batching import Sequence as _Seq
        from llmops.gateway.engines.sampling import check_prompt, check_sampling

        sampling = check_sampling(request.params, self.vocab_size)
        check_prompt(request.prompt_ids, self.vocab_size, self.max_context)
        generator = None
        if not sampling.greedy:
            generator = torch.Generator(device="cpu" if self.device.type == "cpu" else self.device)
            generator.manual_seed(sampling.seed if sampling.seed is not None else int(torch.randint(0, 2**62, (1,))))
        seq = _Seq(request=request, emit=discard, key=next(self._keys), sampling=sampling, generator=generator)
        try:
            hash(seq.group)
        except TypeError:
            raise TypeError(f"GenerationRequest.group must be hashable, got {type(request.group).__name__}") from None
        return seq

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
        return {"running": len(self._batch), "waiting": len(self._scheduler), "aborted": self.aborted}

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
                block = not self._batch.seqs and not len(self._scheduler)
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
                self._decode()
            except Exception:  # a bug in the loop itself: the loop goes on, the running rows are retried
                _log.exception("engine loop failed; recomputing the running sequences")
                try:
                    self._recompute_running()
                except Exception:  # never let the worker thread die: drop the batch instead
                    _log.exception("recomputing failed; failing the running sequences")
                    for seq in self._batch.clear():
                        seq.fail("the engine failed while decoding this sequence")
            finally:
                self._deliveries.flush()

    def _handle(self, command: str, payload: Any) -> None:
        if command == "add":
            self._scheduler.add(payload)
        elif command == "cancel":
            if not payload.cancelled:
                self.aborted += 1
            self._scheduler.cancel(payload)
        elif command == "call":
            fn, future = payload
            try:
                future.set_result(fn())
            except BaseException as error:
                future.set_exception(error)

    def _admit(self) -> None:
        """Move waiting sequences into the batch, fairly between requests (see `scheduler.py`)."""
        if not len(self._scheduler):
            return
        running = self._batch.running_groups()
        room = self.max_batch_size - sum(running.values())
        victims = self._scheduler.preemptions(room, running, self.max_batch_size)
        if victims:
            for seq in self._batch.preempt(victims):
                self._scheduler.requeue(seq)
            running = self._batch.running_groups()
            room = self.max_batch_size - sum(running.values())
        if room <= 0:
            return
        admitted = []
        for seq in self._scheduler.pick(room, running):
            if seq.request.adapter and seq.request.adapter not in self._adapters:
                seq.fail(f"adapter {seq.request.adapter!r} is not loaded")
                continue
            if seq.request.adapter:
                self._adapters.move_to_end(seq.request.adapter)
            admitted.append(seq)
        if admitted:
            self._prefill(admitted)

    def _prefill(self, seqs: list) -> None:
        """Prefill `seqs` together; if that fails, one by one, so only the sequences at fault fail."""
        try:
            self._batch.add(seqs)
            return
        except Exception as error:
            if len(seqs) == 1:
                _log.exception("prefill of sequence %d failed", seqs[0].key)
                seqs[0].fail(f"prefill failed: {type(error).__name__}: {error}")
                return
        for seq in seqs:
            self._prefill([seq])

    def _decode(self) -> None:
        """One decoding step. A failed forward pass cannot be blamed on one row, and the shared KV cache
        may be half updated: the running sequences are recomputed, and fail if they fail twice."""
        try:
            self._batch.step()
        except Exception:
            _log.exception("decoding step failed; recomputing the %d running sequences", len(self._batch))
            self._recompute_running()

    def _recompute_running(self) -> None:
        for seq in self._batch.clear():
            if seq.cancelled:
                continue
            if seq.recomputed:
                seq.fail("the engine failed twice while decoding this sequence")
            else:
                seq.recomputed = True
                self._scheduler.requeue(seq)

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
        in_use = {s.request.adapter for s in self._batch.seqs}
        in_use.update(s.request.adapter for s in self._scheduler.sequences() if not s.cancelled)
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
