"""The ``qexport`` command: a thin layer over the Python API.

qexport SRC --to tflite,onnx -o OUT     convert (the default command, no verb needed)
qexport inspect model.qir               print an IR file readably
qexport check OUT                       verify an output directory
qexport --version
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from qexport import __version__
from qexport.errors import QExportError

try:  # typer >= 0.20 vendors click as typer._click (its exceptions are not click's)
    from typer._click import ClickException
except ImportError:  # older typer runs on click itself
    from click import ClickException  # type: ignore[no-redef]

console = Console(stderr=True, highlight=False)
out_console = Console(highlight=False)  # the terminal's width; $COLUMNS (else 80) when piped


class _DefaultToConvert(TyperGroup):
    """Route ``qexport SRC ...`` to the ``convert`` command: no verb before SRC."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = ["convert", *args]
        return super().parse_args(ctx, args)

    def format_usage(self, ctx: Any, formatter: Any) -> None:
        formatter.write("Usage: qexport SRC [--to tflite,onnx,torch] [-o OUT] [OPTIONS]\n")
        formatter.write("       qexport inspect FILE.qir | check OUT | --version\n")


app = typer.Typer(
    cls=_DefaultToConvert,
    add_completion=False,
    pretty_exceptions_enable=False,
    no_args_is_help=True,
    help="Convert a trained PyTorch model (BERT family) into quantized deployables "
    "(TFLite, ONNX, PyTorch, ExecuTorch) from one IR, and check their parity with fp32.\n\n"
    "Example: qexport builtin:all-MiniLM-L6-v2 -o out/minilm",
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        out_console.print(f"qexport {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version and exit.")
    ] = False,
) -> None:
    """qexport — one quantized IR, many deployables."""


@contextmanager
def _step(label: str) -> Iterator[None]:
    """A spinner on stderr while a long step runs, then a tick. The step may show its progress
    with ``.update(text)`` on what the context yields."""
    with console.status(f"[bold]{label}…") as status:
        yield _Progress(status)
    console.print(f"[green]✓[/] {label}")


class _Progress:
    def __init__(self, status: Any) -> None:
        self._status = status

    def update(self, text: str) -> None:
        self._status.update(f"[bold]{text}…")


@app.command(
    "convert",
    help="Convert SRC into one artifact per backend in OUT, each from the IR of its target's fast recipe "
    "(model.qir, model.<recipe>.qir), then check their parity with fp32. SRC is a Hugging Face model "
    "directory, builtin:all-MiniLM-L6-v2, a torch.export program, a TorchScript archive, a state_dict "
    "with --config, or a pickled nn.Module with --trust-pickle; files are recognised by content. A model "
    "PyTorch quantized with quantize_dynamic (its state_dict or pickle), trained with eager QAT (its "
    "state_dict) or quantized by pt2e (its torch.export .pt2) keeps its own int8 weights and scales.",
)
def convert_cmd(
    src: Annotated[str, typer.Argument(help="Model source (see above).", show_default=False, metavar="SRC")],
    to: Annotated[
        str | None,
        typer.Option(
            "--to",
            help="Comma-separated backends (tflite, onnx, torch, executorch, torch-aoti); default: "
            "tflite, onnx and torch. Only when named: executorch (a .pte for phones) and torch-aoti "
            "(the .pt2 compiled by AOTInductor for this CPU: fastest torch file, needs a C++ compiler). "
            "none: model.qir only.",
        ),
    ] = None,
    out: Annotated[
        Path, typer.Option("-o", "--out", help="Output directory (created; files replaced atomically).")
    ] = Path("qexport-out"),
    seq_len: Annotated[
        int, typer.Option("--seq-len", help="Sequence length for capture and fixed-shape artifacts.")
    ] = 128,
    calib: Annotated[
        Path | None,
        typer.Option("--calib", help="Calibration data: text file (one example per line) or .npz."),
    ] = None,
    tokenizer: Annotated[
        Path | None,
        typer.Option("--tokenizer", help="Tokenizer directory for --calib text (default: the model's own)."),
    ] = None,
    recipe: Annotated[
        str | None,
        typer.Option(
            "--recipe",
            help="One recipe for every target: int8 (static), int8-full (int8 Linear outputs too; files "
            "compute the float ops before each quantizer with the IR's bits, at a latency cost), "
            "dynamic (run-time activation scales), int8-mixed, int16x8, weight-only, fp32, the "
            "full-integer npu-int16, npu-mixed, npu-int8, or a "
            ".toml/.json file. Default: each target's fast recipe (tflite, executorch: dynamic; onnx, "
            "torch: int8), one model.qir per recipe. executorch takes dynamic or npu-int8.",
            show_default=False,
        ),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", help="config.json for a state_dict SRC.")] = None,
    trust_pickle: Annotated[
        bool,
        typer.Option("--trust-pickle", help="Allow unpickling a whole nn.Module (runs code from the file!)."),
    ] = False,
    integer_io: Annotated[
        bool,
        typer.Option(
            "--integer-io",
            help="TFLite: integer inputs and outputs for micro-controllers (refused, naming the float "
            "ops, unless the recipe quantizes every op).",
        ),
    ] = False,
    torch_gemm: Annotated[
        str,
        typer.Option(
            "--torch-gemm",
            help="torch, torch-aoti: how integer Linears multiply. int8 = torch._int_mm (fast on x86 with AVX-512 "
            "VNNI or AMX, a slow scalar loop elsewhere); float = float32 matmuls of the same integers "
            "(same results, any CPU, a little slower than fp32 eager); auto = int8 if this CPU has VNNI, else float.",
        ),
    ] = "auto",
    onnx_linears: Annotated[
        str,
        typer.Option(
            "--onnx-linears",
            help="onnx: how integer Linears are written. integer = a Gemm of the integers, then one "
            "rescale Mul: the same bits whether or not the runtime fuses QDQ (onnxruntime with "
            "optimizations on or off); qdq = plain QDQ, scales inside the DequantizeLinears: "
            "onnxruntime's QGemm rescales in its kernel (~5-8 % faster), but an unfused run rounds "
            "every product (38 dB from the fused result on MiniLM).",
        ),
    ] = "integer",
    device: Annotated[
        str,
        typer.Option(
            "--for",
            help="cpu: files fast on CPUs (float islands where CPU kernels are fast). npu: full-integer "
            "files for NPUs, DSPs and micro-controllers, every value between ops int8 or int16 "
            "(recipe npu-int16 unless --recipe; npu-mixed and npu-int8 are the other integer recipes).",
        ),
    ] = "cpu",
    learn: Annotated[
        bool,
        typer.Option(
            "--learn",
            help="Learn the quantization from the calibration data against the float model: GPTQ "
            "weight rounding, then (static recipes) each encoder layer fitted in turn to the float "
            "layer's output. Same recipe, same scales, same backends, --for npu too. Wants thousands "
            "of examples (without --calib: 2561 built-in sentences); MiniLM int8 24.2 -> 28.0 dB on 3219 sentences, "
            "~5 min on 2 cores (docs/learning.md).",
        ),
    ] = False,
    strict_params: Annotated[
        bool,
        typer.Option(
            "--strict-params",
            help="A model PyTorch quantized (QAT, pt2e) whose params a backend cannot keep exactly (7-bit "
            "reduce_range activations, int8 weights at -128) is refused, naming the tensor, instead of "
            "re-quantized with its measured cost in the manifest's notes.",
        ),
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check", help="Run the parity check on the artifacts (exit 1 below threshold)."
        ),
    ] = True,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    from qexport.convert import ConvertOptions, convert, parse_targets

    opts = ConvertOptions(
        to=parse_targets(to),
        seq_len=seq_len,
        recipe=recipe,
        calib=calib,
        tokenizer=tokenizer,
        config=config,
        trust_pickle=trust_pickle,
        integer_io=integer_io,
        torch_gemm=torch_gemm,
        onnx_linears=onnx_linears,
        device=device,
        learn=learn,
        strict_params=strict_params,
    )
    if trust_pickle:
        console.print("[yellow]warning:[/] --trust-pickle: unpickling runs code from the model file")
    manifest = convert(src, out, opts, step=_step)
    console.print(
        f"[green]✓[/] wrote {out}/: model.qir ({manifest['ir']['bytes']:,} bytes)"
        + "".join(f", {a['file']} ({a['bytes']:,} bytes)" for a in manifest["artifacts"])
    )
    from qexport.report.notes import applies_here

    for entry in manifest["notes"]:
        if entry["text"] and applies_here(entry):
            console.print(f"[yellow]note:[/] {escape(entry['text'])}", soft_wrap=True)
    if not manifest["artifacts"]:
        from qexport.backends import available

        console.print(
            "[dim]no backend artifacts requested"
            + ("" if available() else " (no backends are installed in this build yet)")
            + "[/]"
        )
    captured = manifest.pop("_captured")
    if check:
        from qexport.parity.check import check_outdir, load_thresholds

        thresholds = load_thresholds(Path("pyproject.toml"))
        doc = check_outdir(out, thresholds=thresholds, captured=captured, tokenizer=tokenizer, step=_step)
        _print_parity(doc)
        if not doc["passed"]:
            raise typer.Exit(1)


@app.command(
    "inspect",
    help="Summarize a .qir file on one screen: recipe, inputs, outputs, ops, sizes, and how each layer "
    "is quantized. --full lists every node with its inputs and quant params; --json prints the raw graph.",
)
def inspect_cmd(
    file: Annotated[Path, typer.Argument(help="A .qir file.", show_default=False, metavar="FILE")],
    full: Annotated[bool, typer.Option("--full", help="List every node.")] = False,
    json_out: Annotated[bool, typer.Option("--json", help="Print the raw graph.json instead.")] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    from qexport.ir import serde
    from qexport.report.inspect import render

    graph = serde.load(file)
    if json_out:
        import zipfile

        with zipfile.ZipFile(file) as zf:
            sys.stdout.write(zf.read(serde.GRAPH_MEMBER).decode())
        return
    render(graph, file, out_console, full=full)


@app.command(
    "check",
    help="Run every artifact in OUT with its real runtime on evaluation data and compare it with torch fp32 "
    "and the IR simulation; writes parity.json, junit.xml and report.md. Exit 0 pass, 1 below a threshold, "
    "2 bad input. Thresholds: flags, else [tool.qexport.check] in ./pyproject.toml, else the defaults.",
)
def check_cmd(
    out: Annotated[
        Path,
        typer.Argument(help="An output directory written by qexport.", show_default=False, metavar="OUT"),
    ],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="Evaluation data: text file or .npz (default: built-in sentences)."),
    ] = None,
    min_cos: Annotated[
        float | None, typer.Option("--min-cos", help="Minimum mean cosine vs fp32 (default 0.995).")
    ] = None,
    min_sqnr: Annotated[
        float | None, typer.Option("--min-sqnr", help="Minimum SQNR in dB vs fp32 (default 20).")
    ] = None,
    min_agreement: Annotated[
        float | None,
        typer.Option("--min-agreement", help="Minimum top-1 agreement for logits (default 0.99)."),
    ] = None,
    tokenizer: Annotated[
        Path | None, typer.Option("--tokenizer", help="Tokenizer directory for text --data.")
    ] = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="config.json for a state_dict source.")
    ] = None,
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Allow unpickling a pickled source module.")
    ] = False,
    bisect: Annotated[
        bool,
        typer.Option(
            "--bisect/--no-bisect", help="Trace SQNR value by value, plot it, name where the error opens up."
        ),
    ] = True,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks.")] = False,
) -> None:
    from qexport.parity.check import check_outdir, load_thresholds

    thresholds = load_thresholds(
        Path("pyproject.toml"), min_cos=min_cos, min_sqnr=min_sqnr, min_agreement=min_agreement
    )
    doc = check_outdir(
        out,
        data=data,
        thresholds=thresholds,
        tokenizer=tokenizer,
        config=config,
        trust_pickle=trust_pickle,
        step=_step,
        bisect=bisect,
    )
    _print_parity(doc)
    for name, b in (doc.get("bisect") or {}).items():
        v = b["verdict"]
        console.print(
            f"bisect {name}: "
            + (
                "no value below the floor"
                if v["kind"] == "none"
                else f"error opens up at {v['value']} ({v['layer']}): {v['kind']}"
            )
            + f" — plot {b['plot']}"
        )
    if not doc["passed"]:
        raise typer.Exit(1)


def _print_parity(doc: dict[str, Any]) -> None:
    from rich.table import Table

    top1 = any("top1_agreement" in r for r in doc["comparisons"])
    columns = ["reference", "candidate", "output", "cos mean", "cos min", "SQNR dB"]
    table = Table(*columns, *(["top-1"] if top1 else []), "gate", box=None)
    for r in doc["comparisons"]:
        gate = "" if "pass" not in r else ("[green]pass[/]" if r["pass"] else "[red]FAIL[/]")
        cells = [_side(r["reference"]), _side(r["candidate"]), r["output"]]
        cells += [f"{r['cos_mean']:.5f}", f"{r['cos_min']:.5f}", f"{r['sqnr_db']:.2f}"]
        if top1:
            cells.append(f"{r['top1_agreement']:.4f}" if "top1_agreement" in r else "")
        table.add_row(*cells, gate)
    console.print(table)
    for r in doc["comparisons"]:
        if r.get("failures"):
            console.print(f"[red]FAIL[/] {r['candidate']}.{r['output']}: {escape('; '.join(r['failures']))}")
    verdict = "[green]✓ parity passed[/]" if doc["passed"] else "[red]✗ parity below threshold[/]"
    console.print(verdict + " — details in parity.json, junit.xml, report.md")


def _side(name: str) -> str:
    """A comparison side as the console names it: ``ir_simulated:int8`` is ``IR int8``, so a
    table piped at 80 columns (a CI log) keeps the two IRs apart instead of cutting both to
    ``ir_simulated…``; parity.json and report.md keep the full names."""
    if name.startswith("ir_simulated"):
        return "IR " + name.partition(":")[2] if ":" in name else "IR"
    return {"ir_float": "IR float", "torch_fp32": "torch fp32"}.get(name, name)


def main(argv: list[str] | None = None) -> None:
    """Entry point: one line and exit 2 for any QExportError; tracebacks only with --debug."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    logging.basicConfig(level=logging.WARNING, format="qexport: %(levelname)s: %(message)s")
    if not debug:  # third-party warnings (torch, transformers) are noise to a CLI user
        warnings.filterwarnings("ignore")
        # torchao (ExecuTorch's, imported by transformers when present) logs the CUDA kernels it
        # cannot load; torch a pytree deprecation on import
        for name in ("torchao", "torch.utils._pytree"):
            logging.getLogger(name).setLevel(logging.ERROR)
    try:
        code = app(args=args, prog_name="qexport", standalone_mode=False)
        if isinstance(code, int) and code:  # typer.Exit(n) is returned, not raised, in this mode
            sys.exit(code)
    except QExportError as exc:
        if debug:
            raise
        console.print(f"[red]qexport: error:[/] {escape(str(exc))}", soft_wrap=True)
        sys.exit(2)
    except (typer.Abort, KeyboardInterrupt):
        console.print("qexport: interrupted")
        sys.exit(130)
    except ClickException as exc:  # usage errors: unknown option, bad value, missing SRC
        exc.show()
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except Exception as exc:  # a bug in qexport: still one line unless --debug
        if debug:
            raise
        console.print(
            f"[red]qexport: internal error:[/] {type(exc).__name__}: {escape(str(exc).splitlines()[0] if str(exc) else '')} "
            "(re-run with --debug for the traceback, and please report it)",
            soft_wrap=True,
        )
        sys.exit(3)
