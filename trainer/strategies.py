"""Strategy presets usable by name: ``--trainer.strategy=fsdp`` (or ``-c configs/strategy/fsdp.yaml``).

=========================== ============================================================ ========
preset                      what it is                                                   devices
=========================== ============================================================ ========
ddp                         DistributedDataParallel (Lightning ``ddp``)                  CPU, GPU
fsdp                        FSDP2 (``fully_shard``) per decoder layer, full shard over   CPU, GPU
                            all processes; bf16 mixed precision on GPU
fsdp1                       Lightning ``FSDPStrategy`` (FSDP1), one FSDP unit per        GPU
                            transformer block (``NoSplitModulesPolicy``) plus the root
deepspeed_zero2             DeepSpeed ZeRO-2 (optimizer states + gradients sharded)      GPU
deepspeed_zero3             DeepSpeed ZeRO-3 (parameters sharded too)                    GPU
deepspeed_zero3_offload     ZeRO-3 with optimizer states and parameters on CPU memory    GPU
=========================== ============================================================ ========

Micro batch, accumulation (derived from the recipe's global batch), gradient clipping and precision come
from the recipe and the Trainer, so every preset runs the same optimization. Every preset's process group has
a bounded collective timeout (``TUNELOOP_COLLECTIVE_TIMEOUT`` seconds, default 1800: see
:func:`collective_timeout`), and ``ddp``/``fsdp`` report which rank failed and never leave a rank hanging
(``trainer/faults.py``). The DeepSpeed presets use
:class:`TuneloopDeepSpeedStrategy`, which fixes the one place where Lightning's DeepSpeed integration does
not (gradients were divided by the accumulation steps twice).
"""

from __future__ import annotations

import weakref
from datetime import timedelta
from typing import Any

from lightning.pytorch.strategies import DDPStrategy, DeepSpeedStrategy, ModelParallelStrategy
from lightning.pytorch.strategies.launchers.subprocess_script import _SubprocessScriptLauncher
from torch import Tensor, nn

from datamodules.base import TuneloopDataModule

PRESETS = ("ddp", "fsdp", "fsdp1", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload")
CUDA_ONLY = ("fsdp1", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload")
# Presets that shard parameters: a 4-bit base must store its packed weights in the compute dtype.
SHARDS_PARAMETERS = ("fsdp", "fsdp1", "deepspeed_zero3", "deepspeed_zero3_offload")
# The presets from the simplest to the most involved: ``tuneloop plan`` recommends the first that fits (never
# fsdp1, which needs the same memory as fsdp).
RECOMMEND_ORDER = ("ddp", "fsdp", "deepspeed_zero2", "deepspeed_zero3", "deepspeed_zero3_offload")


class StrategyError(ValueError):
    """A preset cannot run as configured; the message says what to use instead."""


TIMEOUT_ENV = "TUNELOOP_COLLECTIVE_TIMEOUT"
DEFAULT_TIMEOUT = timedelta(minutes=30)
RENDEZVOUS_TIMEOUT = timedelta(minutes=10)  # at least this long for all processes to meet, whatever the timeout


def collective_timeout(env: dict[str, str]) -> timedelta:
    """How long a collective may wait for a silent peer before it fails: ``TUNELOOP_COLLECTIVE_TIMEOUT`` seconds
    (read from ``env`` by the CLI), default 30 minutes (torch's default; long enough for a rank-0-only save of
    a large checkpoint while the others wait at a barrier). The first rendezvous of the processes waits at
    least :data:`RENDEZVOUS_TIMEOUT` (processes start at different times)."""
    raw = env.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(raw)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise StrategyError(f"{TIMEOUT_ENV}={raw!r}: expected a positive number of seconds")
    return timedelta(seconds=seconds)


def with_fault_handling(value: dict | str, timeout: timedelta) -> dict | str:
    """A preset's Trainer strategy value (:func:`preset_config`) with the collective ``timeout``; ``ddp`` becomes
    :class:`TuneloopDDPStrategy` (Lightning's DDP with the failure reporting of ``trainer/faults.py``)."""
    if value == "ddp":
        return {"class_path": "trainer.strategies.TuneloopDDPStrategy", "init_args": {"timeout": timeout}}
    if isinstance(value, dict):
        return {**value, "init_args": {**value.get("init_args", {}), "timeout": timeout}}
    return value


class FaultReporting:
    """Strategy mixin (``ddp``, ``fsdp``): a heartbeat in the process group's store, a one-line report naming
    the failed rank on any exception, and a launcher that ends its local ranks (``trainer/faults.py``)."""

    _heartbeat = None

    def setup_environment(self) -> None:
        import torch.distributed as dist

        from trainer.faults import Heartbeat

        # Processes start at different times (a launched rank imports everything after rank 0 did): the rendezvous
        # waits up to RENDEZVOUS_TIMEOUT, then collectives get the configured timeout.
        collective = self._timeout
        fresh = dist.is_available() and not dist.is_initialized()
        if fresh and collective is not None:
            self._timeout = max(collective, RENDEZVOUS_TIMEOUT)
        try:
            super().setup_environment()
        finally:
            self._timeout = collective
        if not (self.world_size > 1 and dist.is_available() and dist.is_initialized()):
            return
        if fresh and collective is not None and collective < RENDEZVOUS_TIMEOUT:
            dist.distributed_c10d._set_pg_timeout(collective)
        if self._heartbeat is None:
            self._heartbeat = Heartbeat.start(self.global_rank, self.world_size, collective or DEFAULT_TIMEOUT)

    def _configure_launcher(self) -> None:
        super()._configure_launcher()
        if type(self._launcher) is _SubprocessScriptLauncher:
            from trainer.faults import WatchedLauncher

            self._launcher = WatchedLauncher(self.cluster_environment, self.num_processes, self.num_nodes)

    def on_exception(self, exception: BaseException) -> None:
        super().on_exception(exception)
        from trainer.faults import report_failure

        report_failure(self, exception)

    def teardown(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        super().teardown()


class TuneloopDDPStrategy(FaultReporting, DDPStrategy):
    """Lightning's ``DDPStrategy`` (the ``ddp`` preset) with :class:`FaultReporting`."""


class FSDP2Strategy(FaultReporting, ModelParallelStrategy):
    """FSDP2 over every process: a one-dimensional data-parallel mesh of devices x nodes.

    The LightningModule applies ``fully_shard`` in ``configure_model`` (see ``TuneloopModule.shard``).

    Args:
        save_distributed_checkpoint: Each rank writes its shard (True) or rank 0 writes one full checkpoint
            (False, the default: loadable anywhere, and LoRA checkpoints are small anyway).
        process_group_backend: ``nccl`` on GPU, ``gloo`` on CPU (default: chosen by the accelerator).
    """

    def __init__(self, save_distributed_checkpoint: bool = False, process_group_backend: str | None = None,
                 timeout: timedelta | None = None):
        kwargs = {"timeout": timeout} if timeout is not None else {}
        super().__init__(data_parallel_size=1, tensor_parallel_size=1,
                         save_distributed_checkpoint=save_distributed_checkpoint,
                         process_group_backend=process_group_backend, **kwargs)

    def setup_environment(self) -> None:
        self._data_parallel_size = self.num_nodes * self.num_processes
        self._tensor_parallel_size = 1
        super().setup_environment()


class NoSplitModulesPolicy:
    """FSDP1 ``auto_wrap_policy``: one FSDP unit per transformer block, the blocks being the classes the model
    itself declares unsplittable (``_no_split_modules`` of any submodule, e.g. ``LlamaDecoderLayer`` on the
    inner model of a PEFT-wrapped Llama), the same rule as the FSDP2 preset (``TuneloopModule.shard``).

    A callable in torch's FSDP1 protocol ``policy(module, recurse, nonwrapped_numel) -> bool`` (see
    ``torch.distributed.fsdp.wrap._module_wrap_policy``): it always recurses, and wraps a module whose class
    name is a block. The strategy exists before the model (built in ``configure_model``), so the block names
    are read from the root module FSDP calls the policy with first; a later root (another model) is read
    again. Usable by class path (``trainer.strategies.NoSplitModulesPolicy``) in a config.

    Args:
        block_names: Class names to wrap; ``None`` (the default): read them from the model.
    """

    def __init__(self, block_names: list[str] | None = None):
        self.block_names = list(block_names) if block_names else None
        self._names = frozenset(self.block_names or ())
        self._tree: weakref.WeakSet = weakref.WeakSet()  # modules of the root the names were read from

    def __call__(self, module: nn.Module, recurse: bool, nonwrapped_numel: int) -> bool:
        if recurse:
            if self.block_names is None and module not in self._tree:
                self._read_blocks(module)
            return True
        return type(module).__name__ in self._names

    def _read_blocks(self, root: nn.Module) -> None:
        names = {n for m in root.modules() for n in (getattr(m, "_no_split_modules", None) or [])}
        if not any(type(m).__name__ in names for m in root.modules() if m is not root):
            raise TypeError(f"{type(root).__name__} declares no transformer blocks (_no_split_modules) to wrap; "
                            "pass NoSplitModulesPolicy(block_names=[...]) or use another strategy")
        self._names = frozenset(names)
        self._tree = weakref.WeakSet(root.modules())

    def __repr__(self) -> str:
        return f"{type(self).__name__}(block_names={self.block_names or sorted(self._names) or None})"


class TuneloopDeepSpeedStrategy(DeepSpeedStrategy):
    """Lightning's ``DeepSpeedStrategy`` with the recipe's optimization (the DeepSpeed presets).

    Lightning writes the run-dependent part of the DeepSpeed config once, at fit time (``_format_config``,
    first called from ``model_sharded_context`` around ``configure_model``, after the Trainer and the data
    are attached): ``gradient_accumulation_steps`` is ``trainer.accumulate_grad_batches`` (set by the CLI from
    ``data.batch``), ``gradient_clipping`` is ``trainer.gradient_clip_val`` (applied once, by DeepSpeed:
    Lightning's own clipping is a no-op under ``DeepSpeedPrecision``), ``bf16``/``fp16`` follow the Trainer
    precision, and ``train_micro_batch_size_per_gpu`` is the train loader's batch size. Changes:

    * **Loss scaling.** Lightning divides each micro batch's loss by ``accumulate_grad_batches``, and
      ``DeepSpeedEngine.backward`` divides it again by ``gradient_accumulation_steps`` (``scale_wrt_gas``):
      gradients came out ``1/accumulation`` of the mean over the global batch, and clipping compared a norm
      that much too small. Under automatic optimization the engine is told not to scale again.
    * **Micro batch** from the recipe (``data.batch.micro_batch_size``) rather than from an extra
      ``train_dataloader()`` call and its batch sampler.
    * **Offloaded optimizer**: DeepSpeed refuses a client optimizer (the recipe's, e.g. ``torch.optim.AdamW``)
      when optimizer states live on the CPU unless ``zero_force_ds_cpu_optimizer`` is false; it is set false
      (unless the config says otherwise), so the recipe's optimizer steps the CPU copy.
    """

    def backward(self, closure_loss: Tensor, optimizer: Any, *args: Any, **kwargs: Any) -> Tensor:
        module = self.lightning_module
        if module is not None and module.automatic_optimization:
            kwargs.setdefault("scale_wrt_gas", False)  # the loss is already divided by accumulate_grad_batches
        return super().backward(closure_loss, optimizer, *args, **kwargs)

    def _format_batch_size_and_grad_accum_config(self) -> None:
        if self.lightning_module is not None:
            datamodule = self.lightning_module.trainer.datamodule
            if isinstance(datamodule, TuneloopDataModule):
                self.config.setdefault("train_micro_batch_size_per_gpu", datamodule.batch.micro_batch_size)
        super()._format_batch_size_and_grad_accum_config()

    def _format_config(self) -> None:
        super()._format_config()
        offload = (self.config.get("zero_optimization") or {}).get("offload_optimizer") or {}
        if offload.get("device", "none") != "none":
            self.config.setdefault("zero_force_ds_cpu_optimizer", False)


def preset_config(name: str, *, cuda: bool, quantized: bool = False) -> dict | str:
    """The Trainer ``strategy`` value of a preset (a registry name or a class_path/init_args dict, whose
    ``init_args`` may hold objects: the CLI builds it with ``instantiate_class``).

    Raises :class:`StrategyError` for presets that need CUDA when ``cuda`` is false; ``cuda=True`` builds
    any preset's value (constructing the strategy object needs no GPU, only running it does).
    """
    if name not in PRESETS:
        raise StrategyError(f"unknown strategy preset {name!r}; presets: {', '.join(PRESETS)}")
    if name in CUDA_ONLY and not cuda:
        raise StrategyError(
            f"strategy {name!r} needs CUDA GPUs and none is available; on CPU use --trainer.strategy=fsdp "
            "(FSDP2) or --trainer.strategy=ddp"
        )
    if name == "ddp":
        return "ddp"
    if name == "fsdp":
        return {"class_path": "trainer.strategies.FSDP2Strategy",
                "init_args": {"process_group_backend": "nccl" if cuda else "gloo"}}
    if name == "fsdp1":
        return {"class_path": "lightning.pytorch.strategies.FSDPStrategy",
                "init_args": {"sharding_strategy": "FULL_SHARD", "auto_wrap_policy": NoSplitModulesPolicy(),
                              "use_orig_params": True, "state_dict_type": "full"}}
    stage = 2 if name == "deepspeed_zero2" else 3
    offload = name == "deepspeed_zero3_offload"
    return {"class_path": "trainer.strategies.TuneloopDeepSpeedStrategy",
            "init_args": {"stage": stage, "offload_optimizer": offload, "offload_parameters": offload}}


def quant_storage_for(name: str, compute_dtype: str) -> str | None:
    """QLoRA under parameter sharding needs the packed 4-bit storage dtype equal to the compute dtype (FSDP
    and ZeRO-3 flatten parameters of one dtype); ``None`` when the preset does not shard parameters."""
    return compute_dtype if name in SHARDS_PARAMETERS else None
