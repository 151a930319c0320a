"""``tuneloop fit|validate|test|predict``: Lightning's CLI with tuneloop's run directory, scaling rules,
W&B default and artifact callbacks.

Configs stack with ``-c`` (a recipe, then overlays such as ``configs/debug.yaml``); ``--print_config``
prints the resolved config. The model and data are chosen by ``class_path`` in the recipe.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from jsonargparse import Namespace
from lightning.pytorch import Trainer
from lightning.pytorch.callbacks import ModelCheckpoint, ProgressBar
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback

from datamodules.base import TuneloopDataModule
from modules.base import TuneloopModule
from trainer.callbacks import AdapterExport, PredictionWriter, RunArtifacts, best_checkpoint
from trainer.summary import CompactModelSummary
from trainer.resume import FinalLastCheckpoint, ResumeState, trained_steps
from trainer.progress import progress_bar
from trainer.loggers import wandb_logger_config, wandb_offline
from trainer.run import (RunDirGuard, RunSpec, check_checkpoint, check_fit_target, is_launch_leader, publish_version,
                         resolve_version, run_dir_from_checkpoint)
from datamodules.batch import BatchSizeError
from trainer.logs import ensure_logging, quiet_libraries, verbosity
from trainer.wandb_artifacts import WandbArtifacts

log = logging.getLogger(__name__)


class RunConfigSaver(SaveConfigCallback):
    """Writes the resolved config to ``<run dir>/config.yaml`` (``config.<stage>.yaml`` for evaluation runs)
    and logs it to the experiment tracker."""

    def setup(self, trainer: Trainer, pl_module, stage: str) -> None:
        if self.already_saved:
            return
        if trainer.is_global_zero:
            out = Path(trainer.default_root_dir)
            out.mkdir(parents=True, exist_ok=True)
            stage = stage.value if isinstance(stage, TrainerFn) else stage
            name = "config.yaml" if stage == "fit" else f"config.{stage}.yaml"
            self.parser.save(self.config, out / name, skip_none=False, overwrite=True, multifile=False)
            if trainer.logger is not None:
                import yaml

                trainer.logger.log_hyperparams(yaml.safe_load(self.parser.dump(self.config, skip_none=False)))
        self.already_saved = True


class TuneloopCLI(LightningCLI):
    """The Lightning CLI with tuneloop's conventions (see module docstring)."""

    def __init__(self, args=None, run: bool = True):
        self._ckpt_run_dir: Path | None = None  # the run directory of --ckpt_path (before_instantiate_classes)
        self._strategy: dict | str | None = None  # the strategy preset's Trainer value, if one is named
        self._run_guard: RunDirGuard | None = None  # rank zero: undoes a failed start (before_instantiate_classes)
        ensure_logging()
        quiet_libraries()  # Lightning's tips and info lines, datasets' bars: back with -v
        try:
            self._init_cli(args, run)
        except BaseException:
            if self._run_guard is not None:  # a start that fails before training leaves the run directory as it was
                self._run_guard.failed(started=trained_steps(getattr(self, "trainer", None)) > 0)
            raise
        if self._run_guard is not None:
            self._run_guard.close()

    def _init_cli(self, args, run: bool) -> None:
        super().__init__(
            model_class=TuneloopModule,
            datamodule_class=TuneloopDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=RunConfigSaver,
            trainer_defaults={"callbacks": []},  # fresh callbacks per run: before_instantiate_classes
            auto_configure_optimizers=False,
            parser_kwargs={"description": "tuneloop: one scaling-aware fine-tuning loop for many tasks."},
            args=args,
            run=run,
        )

    def _parse_ckpt_path(self) -> None:
        """Lightning overlays the hyperparameters stored in ``--ckpt_path`` on top of the parsed config, so a
        checkpoint would silently override the command line (e.g. ``--model.init_args.prediction_mode=rank``
        when testing a model fitted in ``generate`` mode). tuneloop always runs with the recipe's config:
        what the user passes wins, and the checkpoint supplies only weights and training state."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_class_arguments(RunSpec, "run", help="Run directory, W&B project and post-fit testing.")

    def _subconfig(self) -> Namespace:
        return self.config[self.subcommand] if self.subcommand else self.config

    def before_instantiate_classes(self) -> None:
        cfg = self._subconfig()
        run = cfg.run
        if cfg.get("ckpt_path") == "last":
            cfg.ckpt_path = newest_checkpoint(run, dict(os.environ))
        self._ckpt_run_dir = run_dir_from_checkpoint(cfg.get("ckpt_path"))
        from_ckpt = self._ckpt_run_dir if self.subcommand not in (None, "fit") else None
        if run.version is None and from_ckpt is not None:
            out, version = from_ckpt, from_ckpt.name
        else:
            root = Path(run.root) / run.experiment
            version = resolve_version(run.version, root, dict(os.environ))
            out = root / version
        check_checkpoint(cfg.get("ckpt_path"), self.subcommand or "fit")  # before anything is built or written
        if is_launch_leader(dict(os.environ)):
            fit = self.subcommand in (None, "fit")
            if fit:
                check_fit_target(out, cfg.get("ckpt_path"), run.overwrite)
            self._run_guard = RunDirGuard.open(out, overwrite=fit and run.overwrite,
                                               resume_from=cfg.get("ckpt_path") if fit else None)
        publish_version(version)
        run.version = version
        cfg.trainer.default_root_dir = str(out)
        if cfg.trainer.logger is None or cfg.trainer.logger is True:
            offline = wandb_offline(dict(os.environ))
            logger = wandb_logger_config(out, run.project, run.experiment, version, offline,
                                         tags=run.tags, job_type=run.job_type or self.subcommand or "fit")
            cfg.trainer.logger = Namespace(class_path=logger["class_path"], init_args=Namespace(**logger["init_args"]))
            if offline:  # W&B's own banner is silenced (trainer/logs.py): say where its files go
                log.info(f"W&B offline (no API key): {out}/wandb; upload with `wandb sync {out}/wandb/offline-run-*`")
        if cfg.trainer.accumulate_grad_batches not in (None, 1):
            raise BatchSizeError(
                "trainer.accumulate_grad_batches is derived from data.batch (global / (micro x world size)); "
                "set data.batch.global_batch_size instead"
            )
        self._strategy = self._apply_strategy_preset(cfg)
        callbacks = [RunArtifacts(), PredictionWriter(), AdapterExport(),
                     WandbArtifacts(run.log_artifacts, run.experiment, version), ResumeState(), FinalLastCheckpoint()]
        user_callbacks = cfg.trainer.callbacks or []
        from trainer.guards import NonFiniteGuard  # a guard the config names (its policy) replaces the default

        if not _names_callback(user_callbacks, NonFiniteGuard):
            callbacks.insert(1, NonFiniteGuard())  # before AdapterExport: a fit it fails at the end exports nothing
        from trainer.perf import Throughput  # one the config names (its peak_tflops) replaces the default

        if not _names_callback(user_callbacks, Throughput):
            callbacks.append(Throughput())  # before the progress bar, whose plain lines read its tokens/s
        has_bar = _names_callback(user_callbacks, ProgressBar)
        if cfg.trainer.enable_progress_bar is not False and not has_bar:
            callbacks.append(progress_bar())
        if cfg.trainer.enable_model_summary is not False and verbosity() != "verbose":
            callbacks.append(CompactModelSummary())  # one line; -v: Lightning's table
        if self.subcommand in ("test", "validate"):
            cfg.verbose = verbosity() == "verbose"  # Lightning's metrics table; tuneloop prints its own
        self.trainer_defaults["callbacks"] = callbacks

    def instantiate_classes(self) -> None:
        super().instantiate_classes()
        if isinstance(self.datamodule, TuneloopDataModule):  # before the logger can start a run (W&B: at setup)
            self.datamodule.check_files(self.subcommand or "fit")
        # RunConfigSaver logs the resolved config, which holds the model's and data's arguments: Lightning would
        # log the module's hyperparameters a second time at the top level of the tracker's config.
        for obj in (self.model, self.datamodule):
            if obj is not None:
                obj._log_hyperparams = False
        if isinstance(self.model, TuneloopModule):
            self.model.checkpoint_run_dir = self._ckpt_run_dir
            if isinstance(self.datamodule, TuneloopDataModule):
                self.datamodule.use_preprocessing(self.model.tokenizer, self.model.processor)

    def _apply_strategy_preset(self, cfg: Namespace) -> dict | str | None:
        """Check a preset named in ``trainer.strategy`` before anything is built; returns its Trainer
        strategy value (see ``trainer.strategies.preset_config``), or ``None`` when no preset is named.

        The config keeps the name (so the saved config.yaml reruns the same way); the Strategy object is
        made in ``instantiate_trainer``. QLoRA under parameter sharding gets its 4-bit storage dtype set to
        the compute dtype here, before the model exists.
        """
        import torch

        from trainer.strategies import PRESETS, StrategyError, preset_config, quant_storage_for

        name = cfg.trainer.strategy
        if not isinstance(name, str) or name not in PRESETS:
            return None
        cuda = torch.cuda.is_available() and cfg.trainer.accelerator in ("auto", "gpu", "cuda")
        value = preset_config(name, cuda=cuda)  # raises StrategyError with advice when it cannot run here
        quant = cfg.model.get("init_args", Namespace()).get("quant") if cfg.get("model") else None
        storage = quant_storage_for(name, quant.compute_dtype) if quant else None
        if storage:
            if quant.quant_storage not in (None, storage):
                raise StrategyError(f"strategy {name!r} shards parameters: model.quant.quant_storage must equal "
                                    f"compute_dtype ({storage}), got {quant.quant_storage}")
            if quant.quant_storage is None:
                quant.quant_storage = storage
                log.info(f"{name} shards the 4-bit base: quant_storage set to {storage}")
        return value

    def instantiate_trainer(self, **kwargs) -> Trainer:
        strategy = self._strategy
        if strategy is not None:
            from lightning.pytorch.cli import instantiate_class

            from trainer.strategies import collective_timeout, with_fault_handling

            strategy = with_fault_handling(strategy, collective_timeout(dict(os.environ)))  # bounded collectives
            kwargs["strategy"] = instantiate_class((), strategy) if isinstance(strategy, dict) else strategy
        trainer = super().instantiate_trainer(**kwargs)
        from trainer.checkpoint_io import use_atomic_checkpoints

        use_atomic_checkpoints(trainer)  # checkpoints written atomically, loaded with weights_only=True
        if isinstance(self.datamodule, TuneloopDataModule):
            trainer.accumulate_grad_batches = self.datamodule.batch.accumulation(trainer.world_size)
        for cb in trainer.checkpoint_callbacks:
            if isinstance(cb, ModelCheckpoint) and cb.dirpath is None:
                cb.dirpath = str(Path(trainer.default_root_dir) / "checkpoints")
        return trainer

    def after_fit(self) -> None:
        """Test the best checkpoint (the final weights when nothing is monitored). The exported ``adapter/`` (and
        an encoder's ``model/``) is written from the weights that evaluation loads, so it is exactly the tested
        model; without a post-fit test, the best checkpoint is loaded by a validation pass to export it."""
        best = best_checkpoint(self.trainer)
        if best:
            for cb in self.trainer.callbacks:
                if isinstance(cb, AdapterExport):
                    cb.export_loaded_weights()
        if self._subconfig().run.test_after_fit:
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best" if best else None,
                              verbose=verbosity() == "verbose")  # tuneloop's table below has the test metrics
        elif best and isinstance(self.model, TuneloopModule) and (self.model.has_adapter or self.model.exports_model):
            self.trainer.validate(self.model, datamodule=self.datamodule, ckpt_path="best", verbose=False)
        for cb in self.trainer.callbacks:
            if isinstance(cb, RunArtifacts):
                cb.print_final(self.trainer)  # one table: the best checkpoint's validation and test metrics


def newest_checkpoint(run: Namespace, env: dict[str, str]) -> str:
    """What ``--ckpt_path last`` names: the newest checkpoint (by modification time; ``last.ckpt`` where the
    recipe saves one) of the run being resumed: ``--run.version``, or the launcher's job id (torchrun's run id,
    a requeued SLURM job). Without such a run, or in a run without checkpoints, it stops: ``last`` never
    starts from scratch."""
    from trainer.run import CheckpointError

    root = Path(run.root) / run.experiment
    version = run.version or resolve_version(None, root, env)  # a new version when no launcher names one
    directory = root / version / "checkpoints"
    if not run.version and not directory.parent.exists():
        raise CheckpointError("--ckpt_path last: no run to resume; pass --run.version or a checkpoint path")
    found = sorted(directory.glob("*.ckpt"), key=lambda p: p.stat().st_mtime_ns)
    if not found:
        raise CheckpointError(f"--ckpt_path last: no checkpoint in {directory} to resume",
                              "pass a checkpoint path, or leave --ckpt_path out to start a new fit")
    return str(found[-1])


def _names_callback(callbacks: list, kind: type) -> bool:
    """Whether the config's ``trainer.callbacks`` hold one of ``kind`` (which then replaces tuneloop's default)."""
    return any(issubclass(_callback_class(c), kind) for c in callbacks)


def _callback_class(callback) -> type:
    """The class of a callback given in the config (an instance, or a ``class_path`` namespace)."""
    if isinstance(callback, Namespace):
        import importlib

        module, _, name = callback.class_path.rpartition(".")
        return getattr(importlib.import_module(module), name)
    return type(callback)


def run_cli(args: list[str] | None = None, run: bool = True) -> TuneloopCLI:
    return TuneloopCLI(args=args, run=run)
