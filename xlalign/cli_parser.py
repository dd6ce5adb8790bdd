"""The command line's parser: every command, its options and their help (argparse only, nothing heavy is
imported, so ``xlalign --help`` answers at once)."""

from __future__ import annotations

import argparse
from pathlib import Path

from probes import __version__
from probes.choices import (
    ALL_METRICS,
    BACKENDS,
    BATCH_SIZE,
    COMPONENTS,
    DEVICE_MAPS,
    DEVICES,
    DTYPES,
    IMPORTANCE,
    LINEAR_COMPONENTS,
    MAX_LENGTH,
    NEURON_POOLINGS,
    PADDING_SIDE,
    POOLINGS,
)
from steer.choices import FIND_KINDS, INCLINE_SIGMAS, REGISTRY
from xlalign.arg_types import count, csv_list, finite, floats, ints, language, languages, span
from xlalign.choices import DEFAULT_K, LOSS_SENTENCES, PROMPTS
from xlalign.export.commands import add_export_commands
from xlalign.presets import names_for


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default (unless it names it already, or it is an on/off flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        flag = isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction))
        if "(default" in text or flag or action.default in (None, argparse.SUPPRESS) or not action.option_strings:
            return text
        default = ",".join(map(str, action.default)) if isinstance(action.default, (list, tuple)) else action.default
        return f"{text} (default: {default})".strip()


# Printed before the traceback of an exception that is not an XlalignError or an OSError.
BUG = (
    "this is a bug in xlalign, not in your input: please report it with the command line and this traceback "
    "on the project's issue tracker"
)
SPLIT_COMMANDS = {"capture", "find", "run"}  # the commands that split their work under torchrun
PIVOT = "the language every other one is compared with (ISO 639-3)"
POOLING = "how each sentence's tokens become one vector (weighted: MEXA's position weights)"


def _model(command: argparse.ArgumentParser, engines: tuple[str, ...] = ()) -> None:
    command.add_argument(
        "--model", default="default", help="default, random:FAMILY, a .gguf file, a directory or a hub id"
    )
    command.add_argument("--device", default="cpu", choices=DEVICES, help="auto: CUDA, then MPS, then the CPU")
    command.add_argument(
        "--dtype",
        default="float32",
        choices=DTYPES,
        help="auto: bfloat16 on a GPU that supports it or a CPU with native bfloat16 (AVX-512 BF16, AMX)",
    )
    command.add_argument(
        "--device-map",
        choices=DEVICE_MAPS,
        help="split the model's layers over every visible GPU (accelerate); replaces --device",
    )
    command.add_argument(
        "--backend",
        default="hf",
        choices=(*BACKENDS, *engines),
        help="hf: xlalign's hooks; tl: a TransformerLens bridge's hook points; nnsight: nnsight traces"
        + ("; vllm: generation in a vLLM engine (docs/vllm.md)" if "vllm" in engines else ""),
    )
    command.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="texts per forward pass")
    command.add_argument("--max-length", type=int, default=MAX_LENGTH, help="tokens per text (longer: cut)")
    command.add_argument(
        "--padding-side",
        choices=("right", "left"),
        default=PADDING_SIDE,
        help="which side pads a batch (results are the same either way)",
    )
    command.add_argument("--exclude-bos", action="store_true", help="pooling and statistics skip the BOS token")
    command.add_argument("--no-special-tokens", action="store_true", help="do not add the tokenizer's BOS/EOS")
    command.add_argument("--chat-template", action="store_true", help="wrap each text as one chat user turn")


def _corpus(command: argparse.ArgumentParser) -> None:
    command.add_argument("--corpus", default="demo", help="demo, an NTREX or FLORES directory, a .tsv or .jsonl file")
    command.add_argument("--langs", type=languages, help="comma-separated language codes (default: all)")
    command.add_argument("--max-sentences", type=int, help="use the first N sentences (default: all)")
    command.add_argument("--sentences", type=span, help="then use sentences START:STOP (e.g. held-out rows)")
    command.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="xlalign", description="Measure and raise cross-lingual alignment in LMs.", formatter_class=_Formatter
    )
    parser.add_argument("--version", action="version", version=f"xlalign {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    parser.subcommands = {}

    def add(name: str, text: str) -> argparse.ArgumentParser:
        command = parser.subcommands[name] = commands.add_parser(
            name, help=text, description=text, formatter_class=_Formatter
        )
        if names_for(name):
            command.add_argument(
                "--preset",
                choices=names_for(name),
                help="set every option as that paper's released code does (explicit options win)",
            )
        return command

    capture = add("capture", "capture pooled activations of a parallel corpus into a resumable store")
    _model(capture)
    _corpus(capture)
    capture.add_argument(
        "--remote",
        action="store_true",
        help="with --backend nnsight: run on NDIF (--model a hub id it hosts; key from NDIF_API_KEY)",
    )
    capture.add_argument(
        "--pooling",
        choices=POOLINGS,
        help=f"{POOLING} (default: weighted, as MEXA; mean when router sites are captured)",
    )
    capture.add_argument(
        "--sites",
        default="hidden",
        help=f"components ({','.join(COMPONENTS)}) or sites (resid.7); "
        "hidden = output_hidden_states, the last after the final norm, as MEXA reads them",
    )
    capture.add_argument("--layers", type=ints, help="restrict components to these layers (default: all)")
    capture.add_argument(
        "--shard-size",
        type=int,
        default=256,
        help="sentences per shard file: the unit of resuming and of splitting under torchrun",
    )
    capture.add_argument("--out", required=True, type=Path, help="store directory (resumed if it exists)")

    check = add("check", "verify every shard of a store (checksums, languages, rows, model); exit 1 if damaged")
    check.add_argument("store", type=Path, help="a store made by xlalign capture")

    measure = add("measure", "alignment metrics per layer and language from a store")
    measure.add_argument("store", type=Path, help="a store made by xlalign capture")
    measure.add_argument("--pivot", default="eng", type=language, help=PIVOT)
    measure.add_argument(
        "--metrics",
        type=csv_list,
        default="retrieval_top1,mexa",
        help=f"comma-separated, or 'all'; activations: {', '.join(ALL_METRICS)}; a store of mlp_gate "
        + "; ".join(f"pooled '{pooling}': {', '.join(metrics)}" for pooling, metrics in NEURON_POOLINGS.items()),
    )
    measure.add_argument(
        "--component",
        choices=COMPONENTS,
        help="which sites to measure (default: the store's only component; of several, hidden, else "
        "resid); router: routing divergence (jsd, jsd_norm) and top-k expert overlap instead",
    )
    measure.add_argument(
        "--importance",
        default="weight",
        choices=IMPORTANCE,
        help="router: expert importance; weight = top-k renormalised weights, the released code of "
        "Bandarkar et al.; prob = softmax over all experts, the paper's description",
    )
    measure.add_argument("--ci", action="store_true", help="add 95%% bootstrap intervals (ci_low, ci_high)")
    measure.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    measure.add_argument("--out", required=True, type=Path, help="CSV file: layer,language,metric,value")
    measure.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    find = add("find", "fit one method and save what it finds (neurons, shift vectors, maps, an eraser)")
    find.add_argument(
        "kind",
        nargs="?",
        choices=tuple(FIND_KINDS),
        help="what to find (optional with --method; each kind's default method: "
        + ", ".join(f"{kind}: {name}" for kind, name in FIND_KINDS.items())
        + ")",
    )
    _model(find)
    _corpus(find)
    find.add_argument("--method", help=f"one of {','.join(REGISTRY)} (those that save an artifact)")
    find.add_argument("--pivot", default="eng", type=language, help=PIVOT)
    find.add_argument(
        "--k",
        type=int,
        help=f"ap: units per language (default {DEFAULT_K['ap']}); claim: heads, "
        f"ranked by held-out log-likelihood (default {DEFAULT_K['claim']})",
    )
    find.add_argument("--bottom-k", type=int, default=0, help="ap: also the units of lowest AP (Kojima et al.: 1000)")
    find.add_argument(
        "--components",
        type=csv_list,
        help="ap: components whose units are ranked together; linear = "
        f"every linear projection ({','.join(LINEAR_COMPONENTS)}, those the model has), as Kojima et "
        "al. (default: mlp_act; several: one file per component in the --out directory)",
    )
    find.add_argument(
        "--pooling",
        choices=("mean", "max"),
        default="mean",
        help="ap: sentence pooling of the responses (mean: Kojima et al.; max: Suau et al.)",
    )
    find.add_argument(
        "--out", required=True, type=Path, help="neurons, eraser: a .safetensors file; shift/map: a directory"
    )
    find.add_argument("--overwrite", action="store_true", help="replace existing artifacts")

    ablate = add("ablate", "zero each language's neurons in turn; next-token loss of every language (resumable)")
    ablate.add_argument("neurons", type=Path, help="a NeuronSet made by xlalign find neurons")
    _model(ablate)
    _corpus(ablate)
    ablate.add_argument("--out", required=True, type=Path, help="CSV: zeroed,evaluated,loss_before,loss_after")
    ablate.add_argument("--overwrite", action="store_true", help="start again instead of resuming or refusing")

    steer = add("steer", "generate with an artifact applied (off vs on)")
    steer.add_argument(
        "--artifact",
        required=True,
        type=Path,
        action="append",
        help="a shift vector, map or NeuronSet file; repeat to apply several at once",
    )
    _model(steer, engines=("vllm",))
    steer.add_argument("--prompt", required=True, action="append", help="repeat for several prompts")
    steer.add_argument(
        "--language",
        type=language,
        help="NeuronSet: whose neurons (LAPE) or experts (AP) to use; others: must be the artifact's",
    )
    steer.add_argument(
        "--strength",
        type=finite,
        help="alpha (shift), sigma (map) or erasure strength; not for NeuronSets (default: 1)",
    )
    steer.add_argument(
        "--layers", type=ints, help="where to apply a shift or map (default: the artifact's recommended)"
    )
    steer.add_argument("--max-new-tokens", type=int, default=30, help="tokens to generate per prompt")

    for name, text in (
        ("evaluate", "closed loop: fit on train, steer and evaluate on held-out sentences"),
        ("run", "the main job: measure, find, steer, evaluate, report.md"),
    ):
        command = add(name, text)
        _model(command)
        _corpus(command)
        if name == "run":
            command.add_argument(
                "--pooling", choices=POOLINGS, help=f"{POOLING} (default: weighted, as MEXA; mean in MoE models)"
            )
            command.add_argument(
                "--steer-langs", type=languages, help="languages to steer (default: the 3 least aligned)"
            )
        command.add_argument("--pivot", default="eng", type=language, help=PIVOT)
        command.add_argument(
            "--methods",
            type=csv_list,
            help=f"subset of {','.join(REGISTRY)} (default: those that apply, pca and logistic aside)",
        )
        command.add_argument("--test-fraction", type=finite, default=0.2, help="share of sentences held out")
        command.add_argument(
            "--loss-sentences", type=count(1), default=LOSS_SENTENCES, help="held-out texts per language for the loss"
        )
        command.add_argument(
            "--prompts", type=count(1), default=PROMPTS, help="held-out prompts per language for fidelity"
        )
        command.add_argument(
            "--translations",
            type=count(0),
            default=0,
            help="held-out sentences per language translated into the pivot (3-shot, chrF); 0: none",
        )
        command.add_argument(
            "--incline-sigmas",
            type=floats,
            default=list(INCLINE_SIGMAS),
            help="INCLINE strengths, released rule c + sigma c W (its scripts sweep -1..1 by 0.1); "
            "the interpolation runs at 0.5",
        )
        if name == "evaluate":
            command.add_argument(
                "--sweep",
                action="store_true",
                help="diffmean, erase and sandwich over layers and strengths (the Pareto front)",
            )
            command.add_argument(
                "--gate-by-detection",
                action="store_true",
                help="also gate each setting on the language the model itself detects",
            )
        command.add_argument("--out", required=True, type=Path, help="output directory (report.md, CSVs, figures)")
        command.add_argument(
            "--overwrite",
            action="store_true",
            help="replace the results of another run in --out (the same run resumes without it)",
        )
    parser.subcommands.update(add_export_commands(commands))
    return parser
