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
from typing import Sequence

from probes.errors import XlalignError
from xlalign.errors import Notice
from xlalign.export.commands import COMMANDS as EXPORT_COMMANDS, run_export_command
from xlalign.presets import PresetError, preset_options
from xlalign.cli_parser import BUG, SPLIT_COMMANDS, build_parser


def _tokenization(args):
    from probes.capture import Tokenization

    return Tokenization(
        batch_size=args.batch_size,
        max_length=args.max_length,
        padding_side=args.padding_side,
        add_special_tokens=not args.no_special_tokens,
        exclude_bos=args.exclude_bos,
        chat_template=args.chat_template,
    )


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
        store = jobs.capture(
            args.out,
            corpus=_corpus_of(args),
            sites=args.sites,
            layers=args.layers,
            pooling=args.pooling,
            shard_size=args.shard_size,
            remote=args.remote,
            progress=progress,
            **_loading(args),
        )
        return (
            f"wrote {store.path}: {len(store.sites)} sites x {len(store.languages)} languages x {len(store)} sentences"
        )
    if args.command == "check":
        problems = jobs.check(args.store)
        if problems:
            lines = [f"{path}: {problem}" for path, problem in problems.items()]
            from probes.capture.store import REPAIR

            raise _Damaged("\n".join([*lines, f"{len(problems)} damaged or missing shards. {REPAIR}"]))
        return f"{args.store}: every shard verified, the store is good"
    if args.command == "measure":
        table = jobs.measure(
            args.store,
            args.out,
            pivot=args.pivot,
            metrics=args.metrics,
            component=args.component,
            importance=args.importance,
            ci=args.ci,
            n_boot=args.n_boot,
            overwrite=args.overwrite,
        )
        return f"wrote {args.out}: {len(table)} rows"
    if args.command == "find":
        from xlalign.finding import find

        written = find(
            args.kind,
            args.out,
            method=args.method,
            corpus=_corpus_of(args),
            pivot=args.pivot,
            k=args.k,
            bottom_k=args.bottom_k,
            components=args.components,
            pooling=args.pooling,
            overwrite=args.overwrite,
            progress=progress,
            **_loading(args),
        )
        return "\n".join(f"wrote {steering.describe_artifact(path)}" for path in written)
    if args.command == "ablate":
        table = jobs.ablate(
            args.neurons,
            args.out,
            corpus=_corpus_of(args),
            overwrite=args.overwrite,
            progress=progress,
            **_loading(args),
        )
        table["increase"] = table["loss_after"] - table["loss_before"]
        lines = [
            f"zeroed {lang}: " + " ".join(f"{e}:{d:+.3f}" for e, d in zip(part["evaluated"], part["increase"]))
            for lang, part in table.groupby("zeroed", sort=False)
        ]
        return "\n".join([*lines, f"wrote {args.out}"])
    if args.command == "steer":
        table = steering.steer(
            args.artifact,
            args.prompt,
            language=args.language,
            strength=args.strength,
            layers=args.layers,
            max_new_tokens=args.max_new_tokens,
            **_loading(args),
        )
        return "\n".join(f"prompt: {r.prompt}\n  off: {r.off}\n  on:  {r.on}" for r in table.itertuples())
    options = dict(
        corpus=_corpus_of(args),
        pivot=args.pivot,
        methods=args.methods,
        test_fraction=args.test_fraction,
        n_loss=args.loss_sentences,
        n_prompts=args.prompts,
        n_translations=args.translations,
        incline_sigmas=args.incline_sigmas,
        overwrite=args.overwrite,
        progress=progress,
        **_loading(args),
    )
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
    """Show each :class:`~xlalign.errors.Notice` as one ``xlalign COMMAND: note: ...`` line on stderr, and each
    FutureWarning of xlalign (an old option or method name) as one ``... warning: ...`` line."""
    shown = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, Notice):
            print(f"xlalign {command}: note: {message}", file=sys.stderr)
        elif issubclass(category, FutureWarning) and "xlalign" in str(filename):
            print(f"xlalign {command}: warning: {message}", file=sys.stderr)
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
            raise RankError(
                f"{args.command} does not split its work across processes: run it without torchrun "
                f"(these do: {', '.join(sorted(SPLIT_COMMANDS))})"
            )
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
        kept = {
            "capture": "finished shards are kept; repeat the command to resume",
            "ablate": "finished languages are kept; repeat the command to resume",
            "evaluate": "finished evaluation rows are kept; repeat the command to resume",
            "run": "the store's finished shards and evaluation rows are kept; repeat the command to resume",
        }.get(args.command, "")
        print(f"xlalign {args.command}: interrupted{'; ' + kept if kept else ''}", file=sys.stderr)
        return 130
    except Exception:
        print(f"xlalign {args.command}: {BUG}", file=sys.stderr)
        raise
    finally:
        leave()


if __name__ == "__main__":
    sys.exit(main())
