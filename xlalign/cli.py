"""The ``xlalign`` command: argument parsing only; each subcommand calls one job (:mod:`xlalign.jobs`,
:mod:`xlalign.closed_loop`). Input errors (:class:`~probes.errors.XlalignError`, and ``OSError``) exit with status 2
and one line naming what is wrong; Ctrl-C exits with 130 and says what was kept; any other exception is a bug and
keeps its traceback."""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import sys
import warnings
from pathlib import Path
from typing import Sequence

from probes import __version__
from probes.choices import (
    ALL_METRICS, BACKENDS, BATCH_SIZE, COMPONENTS, DEVICE_MAPS, DEVICES, DTYPES, IMPORTANCE, LINEAR_COMPONENTS,
    MAX_LENGTH, NEURON_POOLINGS, PADDING_SIDE, POOLINGS,
)
from probes.errors import XlalignError
from steer.choices import FIND_KINDS, INCLINE_SIGMAS, REGISTRY
from xlalign.arg_types import count, csv_list, finite, floats, ints, language, languages, span
from xlalign.choices import DEFAULT_K, LOSS_SENTENCES, PROMPTS
from xlalign.errors import Notice
from xlalign.export.commands import COMMANDS as EXPORT_COMMANDS, add_export_commands, run_export_command
from xlalign.presets import PresetError, names_for, preset_options


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
BUG = ("this is a bug in xlalign, not in your input: please report it with the command line and this traceback "
       "on the project's issue tracker")
SPLIT_COMMANDS = {"capture", "find", "run"}  # the commands that split their work under torchrun
PIVOT = "the language every other one is compared with (ISO 639-3)"
POOLING = "how each sentence's tokens become one vector (weighted: MEXA's position weights)"


def _model(command: argparse.ArgumentParser) -> None:
    command.add_argument("--model", default="default", help="default, random:FAMILY, a .gguf file, a directory or a hub id")
    command.add_argument("--device", default="cpu", choices=DEVICES, help="auto: CUDA, then MPS, then the CPU")
    command.add_argument("--dtype", default="float32", choices=DTYPES,
                         help="auto: bfloat16 on a GPU that supports it or a CPU with native bfloat16 (AVX-512 "
                              "BF16, AMX)")
    command.add_argument("--device-map", choices=DEVICE_MAPS,
                         help="split the model's layers over every visible GPU (accelerate); replaces --device")
    command.add_argument("--backend", default="hf", choices=BACKENDS,
                         help="hf: xlalign's hooks; tl: a TransformerLens bridge's hook points; nnsight: nnsight traces")
    command.add_argument("--batch-size", type=int, default=BATCH_SIZE, help="texts per forward pass")
    command.add_argument("--max-length", type=int, default=MAX_LENGTH, help="tokens per text (longer: cut)")
    command.add_argument("--padding-side", choices=("right", "left"), default=PADDING_SIDE,
                         help="which side pads a batch (results are the same either way)")
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
    parser = argparse.ArgumentParser(prog="xlalign", description="Measure and raise cross-lingual alignment in LMs.",
                                     formatter_class=_Formatter)  # fmt: skip
    parser.add_argument("--version", action="version", version=f"xlalign {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    parser.subcommands = {}

    def add(name: str, text: str) -> argparse.ArgumentParser:
        command = parser.subcommands[name] = commands.add_parser(name, help=text, description=text,
                                                                 formatter_class=_Formatter)  # fmt: skip
        if names_for(name):
            command.add_argument("--preset", choices=names_for(name),
                                 help="set every option as that paper's released code does (explicit options win)")
        return command

    capture = add("capture", "capture pooled activations of a parallel corpus into a resumable store")
    _model(capture)
    _corpus(capture)
    capture.add_argument("--remote", action="store_true",
                         help="with --backend nnsight: run on NDIF (--model a hub id it hosts; key from NDIF_API_KEY)")
    capture.add_argument("--pooling", choices=POOLINGS,
                         help=f"{POOLING} (default: weighted, as MEXA; mean when router sites are captured)")
    capture.add_argument("--sites", default="hidden", help=f"components ({','.join(COMPONENTS)}) or sites (resid.7); "
                         "hidden = output_hidden_states, the last after the final norm, as MEXA reads them")
    capture.add_argument("--layers", type=ints, help="restrict components to these layers (default: all)")
    capture.add_argument("--shard-size", type=int, default=256,
                         help="sentences per shard file: the unit of resuming and of splitting under torchrun")
    capture.add_argument("--out", required=True, type=Path, help="store directory (resumed if it exists)")

    check = add("check", "verify every shard of a store (checksums, languages, rows, model); exit 1 if damaged")
    check.add_argument("store", type=Path, help="a store made by xlalign capture")

    measure = add("measure", "alignment metrics per layer and language from a store")
    measure.add_argument("store", type=Path, help="a store made by xlalign capture")
    measure.add_argument("--pivot", default="eng", type=language, help=PIVOT)
    measure.add_argument("--metrics", type=csv_list, default="retrieval_top1,mexa",
                         help=f"comma-separated, or 'all'; activations: {', '.join(ALL_METRICS)}; a store of mlp_gate "
                              + "; ".join(f"pooled '{pooling}': {', '.join(metrics)}"
                                          for pooling, metrics in NEURON_POOLINGS.items()))
    measure.add_argument("--component", choices=COMPONENTS,
                         help="which sites to measure (default: the store's only component; of several, hidden, else "
                              "resid); router: routing divergence (jsd, jsd_norm) and top-k expert overlap instead")
    measure.add_argument("--importance", default="weight", choices=IMPORTANCE,
                         help="router: expert importance; weight = top-k renormalised weights, the released code of "
                              "Bandarkar et al.; prob = softmax over all experts, the paper's description")  # fmt: skip
    measure.add_argument("--ci", action="store_true", help="add 95%% bootstrap intervals (ci_low, ci_high)")
    measure.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    measure.add_argument("--out", required=True, type=Path, help="CSV file: layer,language,metric,value")
    measure.add_argument("--overwrite", action="store_true", help="replace --out if it exists")

    find = add("find", "fit one method and save what it finds (neurons, shift vectors, maps, an eraser)")
    find.add_argument("kind", nargs="?", choices=tuple(FIND_KINDS),
                      help="what to find (optional with --method; each kind's default method: "
                      + ", ".join(f"{kind}: {name}" for kind, name in FIND_KINDS.items()) + ")")
    _model(find)
    _corpus(find)
    find.add_argument("--method", help=f"one of {','.join(REGISTRY)} (those that save an artifact)")
    find.add_argument("--pivot", default="eng", type=language, help=PIVOT)
    find.add_argument("--k", type=int, help=f"ap: units per language (default {DEFAULT_K['ap']}); claim: heads, "
                                            f"ranked by held-out log-likelihood (default {DEFAULT_K['claim']})")
    find.add_argument("--bottom-k", type=int, default=0, help="ap: also the units of lowest AP (Kojima et al.: 1000)")
    find.add_argument("--components", type=csv_list, help="ap: components whose units are ranked together; linear = "
                      f"every linear projection ({','.join(LINEAR_COMPONENTS)}, those the model has), as Kojima et "
                      "al. (default: mlp_act; several: one file per component in the --out directory)")
    find.add_argument("--pooling", choices=("mean", "max"), default="mean",
                      help="ap: sentence pooling of the responses (mean: Kojima et al.; max: Suau et al.)")
    find.add_argument("--out", required=True, type=Path, help="neurons, eraser: a .safetensors file; shift/map: a directory")
    find.add_argument("--overwrite", action="store_true", help="replace existing artifacts")

    ablate = add("ablate", "zero each language's neurons in turn; next-token loss of every language (resumable)")
    ablate.add_argument("neurons", type=Path, help="a NeuronSet made by xlalign find neurons")
    _model(ablate)
    _corpus(ablate)
    ablate.add_argument("--out", required=True, type=Path, help="CSV: zeroed,evaluated,loss_before,loss_after")
    ablate.add_argument("--overwrite", action="store_true", help="start again instead of resuming or refusing")

    steer = add("steer", "generate with an artifact applied (off vs on)")
    steer.add_argument("--artifact", required=True, type=Path, action="append",
                       help="a shift vector, map or NeuronSet file; repeat to apply several at once")
    _model(steer)
    steer.add_argument("--prompt", required=True, action="append", help="repeat for several prompts")
    steer.add_argument("--language", type=language,
                       help="NeuronSet: whose neurons (LAPE) or experts (AP) to use; others: must be the artifact's")
    steer.add_argument("--strength", type=finite,
                       help="alpha (shift), sigma (map) or erasure strength; not for NeuronSets (default: 1)")
    steer.add_argument("--layers", type=ints, help="where to apply a shift or map (default: the artifact's recommended)")
    steer.add_argument("--max-new-tokens", type=int, default=30, help="tokens to generate per prompt")

    for name, text in (("evaluate", "closed loop: fit on train, steer and evaluate on held-out sentences"),
                       ("run", "the main job: measure, find, steer, evaluate, report.md")):  # fmt: skip
        command = add(name, text)
        _model(command)
        _corpus(command)
        if name == "run":
            command.add_argument("--pooling", choices=POOLINGS,
                                 help=f"{POOLING} (default: weighted, as MEXA; mean in MoE models)")
            command.add_argument("--steer-langs", type=languages, help="languages to steer (default: the 3 least aligned)")
        command.add_argument("--pivot", default="eng", type=language, help=PIVOT)
        command.add_argument("--methods", type=csv_list, help=f"subset of {','.join(REGISTRY)} (default: those that apply, pca and logistic aside)")
        command.add_argument("--test-fraction", type=finite, default=0.2, help="share of sentences held out")
        command.add_argument("--loss-sentences", type=count(1), default=LOSS_SENTENCES,
                             help="held-out texts per language for the loss")
        command.add_argument("--prompts", type=count(1), default=PROMPTS, help="held-out prompts per language for fidelity")
        command.add_argument("--translations", type=count(0), default=0,
                             help="held-out sentences per language translated into the pivot (3-shot, chrF); 0: none")
        command.add_argument("--incline-sigmas", type=floats, default=list(INCLINE_SIGMAS),
                             help="INCLINE strengths, released rule c + sigma c W (its scripts sweep -1..1 by 0.1); "
                                  "the interpolation runs at 0.5")  # fmt: skip
        if name == "evaluate":
            command.add_argument("--sweep", action="store_true",
                                 help="diffmean, erase and sandwich over layers and strengths (the Pareto front)")
            command.add_argument("--gate-by-detection", action="store_true",
                                 help="also gate each setting on the language the model itself detects")
        command.add_argument("--out", required=True, type=Path, help="output directory (report.md, CSVs, figures)")
        command.add_argument("--overwrite", action="store_true",
                             help="replace the results of another run in --out (the same run resumes without it)")
    parser.subcommands.update(add_export_commands(commands))
    return parser


def _tokenization(args):
    from probes.capture import Tokenization

    return Tokenization(batch_size=args.batch_size, max_length=args.max_length, padding_side=args.padding_side,
                        add_special_tokens=not args.no_special_tokens, exclude_bos=args.exclude_bos,
                        chat_template=args.chat_template)  # fmt: skip


def _loading(args) -> dict:
    """The model, its loading options (one value, built once) and the tokenisation every model command takes."""
    from probes.model import Loading

    loading = Loading(device=args.device, device_map=args.device_map, dtype=args.dtype, backend=args.backend)
    return dict(model=args.model, loading=loading, tokenization=_tokenization(args))


def _corpus_of(args):
    from xlalign.jobs import open_corpus

    return open_corpus(args.corpus, langs=args.langs, max_sentences=args.max_sentences, rows=args.sentences)


def _run(args) -> str:
    from xlalign import closed_loop, jobs, steering

    if args.command in EXPORT_COMMANDS:
        return run_export_command(args)
    progress = not getattr(args, "no_progress", False)
    if args.command == "capture":
        store = jobs.capture(args.out, corpus=_corpus_of(args), sites=args.sites, layers=args.layers,
                             pooling=args.pooling, shard_size=args.shard_size, remote=args.remote, progress=progress,
                             **_loading(args))  # fmt: skip
        return f"wrote {store.path}: {len(store.sites)} sites x {len(store.languages)} languages x {len(store)} sentences"
    if args.command == "check":
        problems = jobs.check(args.store)
        if problems:
            lines = [f"{path}: {problem}" for path, problem in problems.items()]
            from probes.capture.store import REPAIR

            raise _Damaged("\n".join([*lines, f"{len(problems)} damaged or missing shards. {REPAIR}"]))
        return f"{args.store}: every shard verified, the store is good"
    if args.command == "measure":
        table = jobs.measure(args.store, args.out, pivot=args.pivot, metrics=args.metrics, component=args.component,
                             importance=args.importance, ci=args.ci, n_boot=args.n_boot, overwrite=args.overwrite)  # fmt: skip
        return f"wrote {args.out}: {len(table)} rows"
    if args.command == "find":
        from xlalign.finding import find

        written = find(args.kind, args.out, method=args.method, corpus=_corpus_of(args), pivot=args.pivot,
                            k=args.k, bottom_k=args.bottom_k, components=args.components, pooling=args.pooling,
                            overwrite=args.overwrite, progress=progress, **_loading(args))  # fmt: skip
        return "\n".join(f"wrote {steering.describe_artifact(path)}" for path in written)
    if args.command == "ablate":
        table = jobs.ablate(args.neurons, args.out, corpus=_corpus_of(args), overwrite=args.overwrite,
                            progress=progress, **_loading(args))  # fmt: skip
        table["increase"] = table["loss_after"] - table["loss_before"]
        lines = [f"zeroed {lang}: " + " ".join(f"{e}:{d:+.3f}" for e, d in zip(part["evaluated"], part["increase"]))
                 for lang, part in table.groupby("zeroed", sort=False)]  # fmt: skip
        return "\n".join([*lines, f"wrote {args.out}"])
    if args.command == "steer":
        table = steering.steer(args.artifact, args.prompt, language=args.language, strength=args.strength,
                           layers=args.layers, max_new_tokens=args.max_new_tokens, **_loading(args))  # fmt: skip
        return "\n".join(f"prompt: {r.prompt}\n  off: {r.off}\n  on:  {r.on}" for r in table.itertuples())
    options = dict(corpus=_corpus_of(args), pivot=args.pivot, methods=args.methods, test_fraction=args.test_fraction,
                   n_loss=args.loss_sentences, n_prompts=args.prompts, n_translations=args.translations,
                   incline_sigmas=args.incline_sigmas, overwrite=args.overwrite, progress=progress, **_loading(args))
    if args.command == "evaluate":
        report = closed_loop.evaluate(args.out, sweep=args.sweep, gate_by_detection=args.gate_by_detection, **options)
        return f"wrote {report}"
    report = closed_loop.run(args.out, pooling=args.pooling, steer_langs=args.steer_langs, **options)
    return f"wrote {report} (figures, CSVs and the store beside it)"


class _Damaged(Exception):
    """A check that found damage (exit status 1, not an input error)."""


def _keep_freed_memory() -> None:
    """Let glibc keep freed memory instead of mapping every large block afresh: each large-vocabulary logits
    tensor is hundreds of MB, and mapping it anew costs a page fault per 4 KB (in ``xlalign run`` 16 M faults and
    a minute of system time; without them next-token loss is 11% faster). A no-op where glibc is absent."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # malloc.h
    mallopt(M_MMAP_MAX, 0)
    mallopt(M_TRIM_THRESHOLD, 2**31 - 1)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; a ``--preset`` becomes the defaults of its command, so explicit options still win."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "preset", None):
        try:
            options = preset_options(args.preset, args.command, getattr(args, "kind", None))
        except PresetError as error:
            parser.subcommands[args.command].error(str(error))
        parser.subcommands[args.command].set_defaults(**options)
        args = parser.parse_args(argv)
    return args


def _notes_as_lines(command: str) -> None:
    """Show each :class:`~xlalign.errors.Notice` as one ``xlalign COMMAND: note: ...`` line on stderr."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, Notice):
            print(f"xlalign {command}: note: {message}", file=sys.stderr)
        else:
            shown(message, category, filename, lineno, file, line)

    warnings.showwarning = show


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    _keep_freed_memory()
    with warnings.catch_warnings():  # restores the warning display after the command
        _notes_as_lines(args.command)
        return _main(args)


def _main(args: argparse.Namespace) -> int:
    from probes.capture.distributed import RankError, leave, ranks

    try:
        if ranks().world > 1 and args.command not in SPLIT_COMMANDS:
            raise RankError(f"{args.command} does not split its work across processes: run it without torchrun "
                            f"(these do: {', '.join(sorted(SPLIT_COMMANDS))})")  # fmt: skip
        result = _run(args)
        if ranks().is_main:
            print(result)
        return 0
    except _Damaged as damage:
        print(damage, file=sys.stderr)
        return 1
    except (XlalignError, OSError) as error:  # an input xlalign cannot use; a full disk or a missing file
        if args.debug:
            raise
        print(f"xlalign {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        kept = {"capture": "finished shards are kept; repeat the command to resume",
                "ablate": "finished languages are kept; repeat the command to resume",
                "evaluate": "finished evaluation rows are kept; repeat the command to resume",
                "run": "the store's finished shards and evaluation rows are kept; repeat the command to resume",
                }.get(args.command, "")  # fmt: skip
        print(f"xlalign {args.command}: interrupted{'; ' + kept if kept else ''}", file=sys.stderr)
        return 130
    except Exception:
        print(f"xlalign {args.command}: {BUG}", file=sys.stderr)
        raise
    finally:
        leave()


if __name__ == "__main__":
    sys.exit(main())
