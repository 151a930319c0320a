"""The plan as rich tables: the model and method, one full replica's memory, and per-GPU memory per strategy."""

from __future__ import annotations

from trainer.plan.memory import GIB


def _gib(x: float) -> str:
    return f"{x / GIB:,.2f}"


def render_text(result: dict, console=None) -> None:
    """Rich tables on ``console`` (stdout by default)."""
    from rich.console import Console
    from rich.table import Table

    if console is None:
        console = Console(width=max(Console().width, 120))
    m, p, b, act = result["model"], result["params"], result["bytes"], result["activations"]
    method = "full fine-tuning"
    if m["lora"]:
        lora = m["lora"]
        targets = lora["target_modules"] if isinstance(lora["target_modules"], str) else ",".join(lora["target_modules"])
        method = f"{'DoRA' if lora['use_dora'] else 'LoRA'} r={lora['r']} alpha={lora['alpha']} {targets}"
    if m["quant"]:
        q = m["quant"]
        method = f"Q{method} · 4-bit {q['quant_type']}{' double-quant' if q['double_quant'] else ''}"
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold")
    head.add_column()
    head.add_row("recipe", " + ".join(result["recipe"]))
    model_line = f"{m['class']} ({m['model_type']}) · {m['arch_config'] or m['name_or_path']}"
    if m["tiny"]:
        model_line += " · tiny (debug)"
    if m["num_labels"]:
        model_line += f" · {m['task']}, num_labels={m['num_labels']}"
    head.add_row("model", model_line)
    head.add_row("method", f"{method} · weights {m['dtype']} · precision {result['precision']}"
                 + (" · gradient checkpointing" if m["gradient_checkpointing"] else ""))
    head.add_row("params", f"total {p['total']:,d} · trainable {p['trainable']:,d}"
                 + (f" · 4-bit {p['four_bit']:,d}" if p["four_bit"] else ""))
    head.add_row("PEFT", p["peft_line"])
    if m["quant"]:
        head.add_row("unquantized", f"{p['unquantized_linear_modules']} Linear modules kept in the compute dtype "
                     f"(skip patterns: {', '.join(sorted(p['quantization_skip_patterns'])) or 'none'})")
    bt = result["batch"]
    effective = bt["effective_global_batch_size"]
    rounded = effective not in (None, bt["global_batch_size"])  # rounding: floor
    head.add_row("batch", f"global {bt['global_batch_size']}"
                 + (f" [yellow](effective {effective}: rounding floor)[/yellow]" if rounded else "")
                 + f" · micro {bt['micro_batch_size']} · seq len "
                 f"{bt['seq_len']} ({bt['seq_len_source']})")
    w = result["world"]
    acc = result["accumulation"]
    acc_text = (f"accumulate_grad_batches = {acc['accumulate_grad_batches']}" if acc["error"] is None
                else "[red]the global batch does not divide (below)[/red]")
    head.add_row("world", f"{w['gpus']} GPU(s) x {w['nodes']} node(s) = {w['world_size']} · {acc_text}")
    console.print(head)
    if acc["error"] is not None:
        console.print(f"[red]accumulation: {acc['error']}[/red]", soft_wrap=True, markup=True, highlight=False)

    mem = Table(title="Memory of one full replica (before sharding)", title_justify="left")
    mem.add_column("part")
    mem.add_column("detail")
    mem.add_column("params", justify="right")
    mem.add_column("GiB", justify="right")
    for dtype, nbytes in sorted(b["weights_by_dtype"].items()):
        detail = "4-bit packed + quantization constants" if dtype == "4bit" else dtype
        mem.add_row("weights", detail, f"{b['params_by_dtype'][dtype]:,d}", _gib(nbytes))
    mem.add_row("gradients", "trainable parameters, their dtype", f"{p['trainable']:,d}", _gib(b["gradients"]))
    mem.add_row("optimizer", result["optimizer"], "", _gib(b["optimizer"]))
    ck = "checkpointing: 2sbh per layer + one layer" if act["gradient_checkpointing"] else "no recomputation"
    mem.add_row("activations", f"{act['layers_count']} layers · b={act['micro_batch']} s={act['seq_len']} "
                f"h={act['hidden']} · {ck}", "", _gib(b["activations_layers"]))
    loss = (f"head output + its gradient; fp32 loss over {act['vocab']:,d} tokens in chunks of "
            f"{act['loss_chunk_positions']:,d} positions" if act["vocab"] else "classifier outputs")
    mem.add_row("logits", loss, "", _gib(b["logits"]))
    console.print(mem)

    st = Table(title=f"Per GPU, world size {w['world_size']} ({result['gpu_memory_gib']:g} GiB each)",
               title_justify="left")
    for col in ("strategy", "weights", "grads", "optimizer", "act.+logits", "buffers", "overhead", "total GiB",
                "fits"):
        st.add_column(col, justify="left" if col in ("strategy", "fits") else "right", no_wrap=True)
    for name, entry in result["strategies"].items():
        x = entry["bytes"]
        fits = "[green]yes[/green]" if entry["fits"] else "[red]no[/red]"
        st.add_row(name, _gib(x["weights"]), _gib(x["gradients"]), _gib(x["optimizer"]), _gib(x["activations"]),
                   _gib(x["buffers"]), _gib(x["overhead"]), f"{entry['gib_per_gpu']:,.2f}", fits)
    console.print(st)
    for name, entry in result["strategies"].items():
        for note in entry["notes"]:
            console.print(f"  {name}: {note}")
    rec = result["recommended"]
    if rec:
        console.print(f"[bold]recommended:[/bold] {rec} (the simplest preset that fits; "
                      f"tuneloop fit ... --trainer.strategy={rec})")
    else:
        console.print("[bold red]no preset fits[/bold red]: lower data.batch.micro_batch_size or --seq-len, enable "
                      "backbone.gradient_checkpointing, use QLoRA, or add GPUs")
    a = result["assumptions"]
    console.print(f"[dim]assumptions: {a['overhead']}; {a['activations']}; {a['deepspeed']}. "
                  "Details: trainer/plan/memory.py.[/dim]")
