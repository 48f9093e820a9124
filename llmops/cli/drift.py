"""`llmops drift embeddings|tokens REF CUR`: drift tests from files, with a report and exit code 1 on drift."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(help="Drift between a reference set and current traffic (exit code 1 when drift is detected).", no_args_is_help=True)

_OUT = typer.Option(Path("drift-report"), "--out", help="Folder for summary.json and report.html.")
_BACKEND = typer.Option("auto", "--backend", help="auto, cpu (numpy), gpu (cupy) or triton.")
_MODEL = typer.Option(None, "--model", help="Registry reference of the model version whose traffic this is (tags the MLflow run).")
_NO_MLFLOW = typer.Option(False, "--no-mlflow", help="Do not log an MLflow run.")
_TEXT_FIELD = typer.Option(None, "--text-field", help="Field holding text in Parquet/JSONL inputs (default: text, prompt, ...).")


def register(root_app: typer.Typer) -> None:
    """Attach the `drift` group to the root app."""
    root_app.add_typer(app, name="drift")


def _finish(kind: str, summary: dict, plots: list[str], reference: Path, current: Path, out: Path, model: Optional[str], no_mlflow: bool) -> None:
    from llmops.drift.report import log_to_mlflow, write_report

    paths = write_report(out, kind, summary, plots, {"reference": str(reference), "current": str(current)})
    typer.echo(f"report: {paths['html']}  summary: {paths['summary']}")
    if not no_mlflow:
        run_id = log_to_mlflow(kind, summary, paths, model)
        typer.echo(f"mlflow run: {run_id} (experiment llmops-drift)")
    if summary["drift"]:
        raise typer.Exit(1)


def _run_reporting_warnings(fn, *args, **kwargs):
    """Call a drift test, showing its DriftWarnings (e.g. NaN rows dropped) as `warning: ...` lines."""
    import warnings

    from llmops.drift import DriftWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", DriftWarning)
        result = fn(*args, **kwargs)
    for warning in caught:
        if issubclass(warning.category, DriftWarning):
            typer.echo(f"warning: {warning.message}", err=True)
        else:
            warnings.showwarning(warning.message, warning.category, warning.filename, warning.lineno)
    return result


def _table(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in rows:
        table.add_row(name, value)
    Console().print(table)


@app.command()
def embeddings(
    reference: Path = typer.Argument(..., help="Reference set: .npy (rows x dims), Parquet or JSONL (embedding or text field)."),
    current: Path = typer.Argument(..., help="Current set, same formats."),
    out: Path = _OUT,
    permutations: int = typer.Option(1000, "--permutations", help="Permutations of the MMD test."),
    bandwidth: str = typer.Option("median", "--bandwidth", help="RBF σ, or 'median' for the median heuristic."),
    alpha: float = typer.Option(0.05, "--alpha", help="Significance level: drift when p < alpha."),
    backend: str = _BACKEND,
    seed: int = typer.Option(0, "--seed"),
    encoder: str = typer.Option("minilm", "--encoder", help="For text inputs: 'minilm' (packaged sentence encoder) or a local HF model folder (mean-pooled hidden states)."),
    text_field: Optional[str] = _TEXT_FIELD,
    model: Optional[str] = _MODEL,
    no_mlflow: bool = _NO_MLFLOW,
) -> None:
    """Embedding drift: MMD² (RBF kernel) with a permutation test, and centroid distance."""
    from llmops.drift import DriftInputError, mmd_test
    from llmops.drift.io import load_embeddings
    from llmops.drift.report import null_plot, pca_2d, scatter_plot

    ref = load_embeddings(reference, text_field=text_field, encoder=encoder)
    cur = load_embeddings(current, text_field=text_field, encoder=encoder)
    try:
        sigma = bandwidth if bandwidth == "median" else float(bandwidth)
    except ValueError:
        raise DriftInputError(f"--bandwidth must be a number or 'median', got {bandwidth!r}") from None
    result = _run_reporting_warnings(mmd_test, ref, cur, permutations=permutations, bandwidth=sigma, backend=backend, seed=seed, alpha=alpha)
    summary = result.to_dict()
    _table("Embedding drift (MMD² permutation test)", [
        ("MMD² (unbiased)", f"{result.mmd2:.6g}"), ("p-value", f"{result.p_value:.4g}"),
        ("drift", "YES" if result.drift else "no"), ("centroid distance", f"{result.centroid_distance:.4g}"),
        ("bandwidth σ", f"{result.bandwidth:.4g}"), ("rows (reference / current)", f"{result.n_reference} / {result.n_current}"),
        ("permutations", str(result.permutations)), ("backend", result.backend), ("seconds", f"{result.seconds:.3f}"),
    ])
    import numpy as np

    ref_rows, cur_rows = (a[np.isfinite(a).all(axis=1)] for a in (np.asarray(ref, np.float32), np.asarray(cur, np.float32)))
    plots = [null_plot(result.null, result.mmd2, "MMD²"), scatter_plot(*pca_2d(ref_rows, cur_rows, seed=seed))]
    _finish("embeddings", summary, plots, reference, current, out, model, no_mlflow)


def _token_report(ref_docs, cur_docs, size: int, tok, **options):
    """Run the token drift test and print its table; returns the result."""
    from llmops.drift import token_drift

    result = _run_reporting_warnings(token_drift, ref_docs, cur_docs, size, tokenizer=tok, **options)
    rows = [("Jensen-Shannon (bits)", f"{result.js_divergence:.4g}"),
            ("JS permutation p-value", "n/a" if result.js_p_value is None else f"{result.js_p_value:.4g}"),
            ("PSI", f"{result.psi:.4g}"), ("χ² p-value / Cramér's V", f"{result.chi2_p_value:.3g} / {result.cramers_v:.3g}"),
            ("length KS p-value", "n/a" if result.length_p_value is None else f"{result.length_p_value:.3g}"),
            ("unseen-token rate", f"{result.unseen_rate:.3%}"),
            ("unknown-token rate (ref / cur)", "n/a" if result.unknown_rate_current is None else f"{result.unknown_rate_reference:.3%} / {result.unknown_rate_current:.3%}"),
            ("tokens (reference / current)", f"{result.n_reference_tokens} / {result.n_current_tokens}"),
            ("drift", "YES" if result.drift else "no"), ("backend", result.backend)]
    rows += [(f"over-represented {i + 1}", f"{row['text'] if row['text'] is not None else row['id']!r}: {row['reference_share']:.3%} -> {row['current_share']:.3%}")
             for i, row in enumerate(result.over_represented[:5])]
    _table("Token drift", rows)
    return result


@app.command()
def tokens(
    reference: Path = typer.Argument(..., help="Reference tokens: .npy ids, Parquet/JSONL with a token_ids or text field."),
    current: Path = typer.Argument(..., help="Current tokens, same formats."),
    out: Path = _OUT,
    tokenizer: Optional[Path] = typer.Option(None, "--tokenizer", help="Local tokenizer/model folder: tokenizes text, decodes top tokens, gives the vocabulary size."),
    vocab_size: Optional[int] = typer.Option(None, "--vocab-size", help="Vocabulary size (default: the tokenizer's)."),
    permutations: int = typer.Option(200, "--permutations", help="Document permutations for the JS p-value (0: none)."),
    alpha: float = typer.Option(0.05, "--alpha"),
    js_threshold: float = typer.Option(0.1, "--js-threshold", help="Drift threshold on JS (bits) when no permutation test can run."),
    top_k: int = typer.Option(10, "--top-k"),
    backend: str = _BACKEND,
    seed: int = typer.Option(0, "--seed"),
    text_field: Optional[str] = _TEXT_FIELD,
    model: Optional[str] = _MODEL,
    no_mlflow: bool = _NO_MLFLOW,
) -> None:
    """Token drift: Jensen-Shannon, PSI, χ², document lengths and unknown tokens."""
    from llmops.drift import DriftInputError
    from llmops.drift.io import load_token_documents, load_tokenizer
    from llmops.drift.report import null_plot, token_bar_plot

    tok = load_tokenizer(tokenizer) if tokenizer else None
    size = vocab_size or (len(tok) if tok is not None else None)
    if size is None:
        raise DriftInputError("give --vocab-size or --tokenizer so the vocabulary size is known")
    ref_docs = load_token_documents(reference, tokenizer=tok, text_field=text_field)
    cur_docs = load_token_documents(current, tokenizer=tok, text_field=text_field)
    result = _token_report(ref_docs, cur_docs, size, tok, top_k=top_k, permutations=permutations, alpha=alpha,
                           js_threshold=js_threshold, backend=backend, seed=seed)
    plots = [null_plot(result.js_null, result.js_divergence, "Jensen-Shannon divergence"),
             token_bar_plot(result.over_represented, result.under_represented)]
    _finish("tokens", result.to_dict(), plots, reference, current, out, model, no_mlflow)


@app.command()
def traffic(
    model: str = typer.Option(..., "--model", help="Registry ref whose current version's captured traffic is checked."),
    reference: Path = typer.Option(..., "--reference", help="JSONL reference rows: messages, a text field, or fields for --prompt."),
    since: str = typer.Option("24h", "--since", help="Captured traffic at or after: a duration (30m, 24h, 7d) or an ISO time."),
    capture_dir: str = typer.Option("traffic", "--capture-dir", help="The gateway's capture.path: a folder or a URI (s3://bucket/prefix)."),
    prompt: Optional[str] = typer.Option(None, "--prompt", help="Registry prompt that renders reference rows (as the gateway did)."),
    out: Path = _OUT,
    permutations: int = typer.Option(200, "--permutations", help="Document permutations for the JS p-value."),
    alpha: float = typer.Option(0.05, "--alpha"),
    js_threshold: float = typer.Option(0.1, "--js-threshold"),
    backend: str = _BACKEND,
    seed: int = typer.Option(0, "--seed"),
    no_mlflow: bool = _NO_MLFLOW,
) -> None:
    """Token drift of the traffic the gateway captured for a model version, against reference data."""
    from llmops.drift.report import null_plot, token_bar_plot
    from llmops.drift.traffic import traffic_documents

    docs = traffic_documents(model, reference, since, capture_dir, prompt)
    typer.echo(f"{docs.records} captured requests of {docs.model_version} since {since}")
    result = _token_report(docs.reference, docs.current, len(docs.tokenizer), docs.tokenizer, top_k=10,
                           permutations=permutations, alpha=alpha, js_threshold=js_threshold, backend=backend, seed=seed)
    plots = [null_plot(result.js_null, result.js_divergence, "Jensen-Shannon divergence"),
             token_bar_plot(result.over_represented, result.under_represented)]
    from llmops.traffic.location import redact

    _finish("traffic", result.to_dict(), plots, reference, redact(capture_dir), out, docs.model_version, no_mlflow)
