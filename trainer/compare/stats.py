"""``tuneloop compare summarize``: the two score columns of a judgments file compared like a spreadsheet's
analysis toolpak (descriptive statistics, paired two-sample t-test for means, F-test for variances)."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from trainer.compare.records import NOTHING, CompareError, load_question_texts
from trainer.compare.scores import load_scores

STAT_KEYS = ("n", "mean_a", "mean_b", "var_a", "var_b", "sd_a", "sd_b", "sem_a", "sem_b", "pearson_r", "t_stat",
             "df", "p_one_tail", "p_two_tail", "t_crit_one_tail", "t_crit_two_tail", "f_stat", "p_f_one_tail",
             "f_crit_one_tail")


def paired_statistics(a: list[float], b: list[float], alpha: float = 0.05) -> dict:
    """Compare two paired score columns as a spreadsheet's analysis toolpak does (Excel's "t-Test: Paired Two
    Sample for Means" and "F-Test Two-Sample for Variances"), with scipy.

    Returns a dict with the keys :data:`STAT_KEYS`:

    - ``n``; ``mean_*``; ``var_*`` sample variance (ddof 1); ``sd_*``; ``sem_*`` = sd / sqrt(n);
      ``pearson_r`` between the columns.
    - Paired t-test of mean(a - b) = 0: ``t_stat``, ``df`` = n - 1, ``p_one_tail`` (the tail beyond |t|),
      ``p_two_tail`` (twice that), ``t_crit_one_tail`` = t quantile 1 - alpha, ``t_crit_two_tail`` = t
      quantile 1 - alpha/2.
    - F-test: ``f_stat`` = var_a / var_b with df n - 1 and n - 1. As Excel: if F > 1, ``p_f_one_tail`` =
      P(F_dist > F) and ``f_crit_one_tail`` = the 1 - alpha quantile; otherwise (F <= 1) ``p_f_one_tail`` =
      P(F_dist < F) and ``f_crit_one_tail`` = the alpha quantile.

    Degenerate inputs: fewer than 2 pairs (or columns of different length) raise ``ValueError``. Where
    Excel shows #DIV/0! the value is NaN: ``pearson_r`` when either column is constant; ``t_stat`` and its
    p-values when every difference a - b is the same; ``f_stat`` and its p-value and critical value when
    var_b is 0 (var_a = 0 < var_b gives F = 0, p = 0). Critical values depend only on n and alpha.
    """
    import numpy as np
    from scipy import stats

    if len(a) != len(b):
        raise ValueError(f"paired columns must have the same length, got {len(a)} and {len(b)}")
    n = len(a)
    if n < 2:
        raise ValueError(f"the paired statistics need at least 2 pairs, got {n}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be between 0 and 1, got {alpha}")
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ValueError("scores must be finite numbers")
    nan = float("nan")
    df = n - 1
    var_a, var_b = float(x.var(ddof=1)), float(y.var(ddof=1))
    sd_a, sd_b = math.sqrt(var_a), math.sqrt(var_b)
    pearson_r = float(stats.pearsonr(x, y).statistic) if var_a > 0 and var_b > 0 else nan

    diff = x - y
    if float(diff.var(ddof=1)) > 0:
        t_stat = float(stats.ttest_rel(x, y).statistic)
        p_one = float(stats.t.sf(abs(t_stat), df))
        p_two = 2 * p_one
    else:
        t_stat = p_one = p_two = nan

    if var_b > 0:
        f_stat = var_a / var_b
        if f_stat > 1:
            p_f, f_crit = float(stats.f.sf(f_stat, df, df)), float(stats.f.ppf(1 - alpha, df, df))
        else:
            p_f, f_crit = float(stats.f.cdf(f_stat, df, df)), float(stats.f.ppf(alpha, df, df))
    else:
        f_stat = p_f = f_crit = nan

    return {
        "n": n, "mean_a": float(x.mean()), "mean_b": float(y.mean()), "var_a": var_a, "var_b": var_b,
        "sd_a": sd_a, "sd_b": sd_b, "sem_a": sd_a / math.sqrt(n), "sem_b": sd_b / math.sqrt(n),
        "pearson_r": pearson_r, "t_stat": t_stat, "df": df, "p_one_tail": p_one, "p_two_tail": p_two,
        "t_crit_one_tail": float(stats.t.ppf(1 - alpha, df)),
        "t_crit_two_tail": float(stats.t.ppf(1 - alpha / 2, df)),
        "f_stat": f_stat, "p_f_one_tail": p_f, "f_crit_one_tail": f_crit,
    }


def json_value(value: Any) -> Any:
    """NaN and infinities are not JSON: they are written as null."""
    return None if isinstance(value, float) and not math.isfinite(value) else value


def fmt(value: Any) -> str:
    """A figure as the console and Markdown show it: 6 significant digits, #DIV/0! where undefined."""
    if isinstance(value, int):
        return str(value)
    return "#DIV/0!" if not math.isfinite(value) else f"{value:.6g}"


def toolpak_sections(s: dict) -> list[tuple[str, list[tuple[str, Any, Any]]]]:
    """The statistics as Excel's toolpak lays them out (MISSION §2, the team's Tables 5-6): ``(title, rows)``
    per table, a row ``(label, value of a, value of b)`` with ``None`` for an empty cell. The console, Markdown
    and CSV outputs of ``summarize`` all print these."""
    return [
        ("Descriptive statistics", [
            ("Mean", s["mean_a"], s["mean_b"]), ("Variance", s["var_a"], s["var_b"]),
            ("Standard Deviation", s["sd_a"], s["sd_b"]), ("Standard Error", s["sem_a"], s["sem_b"]),
            ("Observations", s["n"], s["n"]),
        ]),
        ("t-Test: Paired Two Sample for Means", [
            ("Mean", s["mean_a"], s["mean_b"]), ("Variance", s["var_a"], s["var_b"]),
            ("Observations", s["n"], s["n"]), ("Pearson Correlation", s["pearson_r"], None),
            ("Hypothesized Mean Difference", 0, None), ("df", s["df"], None), ("t Stat", s["t_stat"], None),
            ("P(T<=t) one-tail", s["p_one_tail"], None), ("t Critical one-tail", s["t_crit_one_tail"], None),
            ("P(T<=t) two-tail", s["p_two_tail"], None), ("t Critical two-tail", s["t_crit_two_tail"], None),
        ]),
        ("F-Test Two-Sample for Variances", [
            ("Mean", s["mean_a"], s["mean_b"]), ("Variance", s["var_a"], s["var_b"]),
            ("Observations", s["n"], s["n"]), ("df", s["df"], s["df"]), ("F", s["f_stat"], None),
            ("P(F<=f) one-tail", s["p_f_one_tail"], None), ("F Critical one-tail", s["f_crit_one_tail"], None),
        ]),
    ]


CLOSER_TITLE = "Closer to the reference (questions)"


def summary_heading(s: dict, a: str, b: str, alpha: float, path: str) -> str:
    return f"tuneloop compare summarize: {path}, {a} vs {b}, {s['n']} paired questions, alpha {alpha}"


def print_summary(s: dict, closer: dict[str, int] | None, a: str, b: str, alpha: float, path: str) -> None:
    """The figures laid out like Excel's toolpak output, the two models side by side; the closer counts when the
    file has them (``closer`` not None)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(summary_heading(s, a, b, alpha, path), markup=False, highlight=False)
    for title, rows in toolpak_sections(s):
        t = Table(title=title, title_justify="left")
        t.add_column("")
        t.add_column(a, justify="right")
        t.add_column(b, justify="right")
        for label, va, vb in rows:
            t.add_row(label, "" if va is None else fmt(va), "" if vb is None else fmt(vb))
        console.print(t)
    if closer is None:
        return
    closer_table = Table(title=CLOSER_TITLE, title_justify="left")
    for name in closer:
        closer_table.add_column(name, justify="right")
    closer_table.add_row(*(str(v) for v in closer.values()))
    console.print(closer_table)


def run_summarize(args: argparse.Namespace) -> dict:
    """Paired statistics of ``--judgments`` (a score file of either shape, :mod:`trainer.compare.scores`): printed
    (tables or ``--json``) and, with ``--out``, written as files (:func:`trainer.compare.tables.write_summary`).
    Returns the JSON object (statistics and ``closer``: the counts, or None when the file has no closer)."""
    if not 0 < args.alpha < 1:
        raise CompareError(f"--alpha must be between 0 and 1, got {args.alpha}")
    if args.questions and not args.out:
        raise CompareError("--questions fills the question column of per_question.* under --out DIR; give --out")
    scores = load_scores(args.judgments, args.a, args.b)
    judged = scores.questions
    texts = load_question_texts(args.questions) if args.questions else scores.texts
    if texts is not None:
        unknown = [q.id for q in judged if q.id not in texts]
        if unknown:
            shown = ", ".join(repr(i) for i in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
            raise CompareError(f"--questions {args.questions}: no question for {len(unknown)} judged id(s): {shown}")
    closer = None
    if scores.has_closer:
        closer = {args.a: 0, args.b: 0, NOTHING: 0}
        for q in judged:
            closer[q.closer] += 1
    try:
        stats = paired_statistics([q.score_a for q in judged], [q.score_b for q in judged], args.alpha)
    except ValueError as e:
        raise CompareError(f"{args.judgments}: {e}") from None
    result = {**{k: json_value(v) for k, v in stats.items()}, "closer": closer}
    if args.json:
        print(json.dumps(result, ensure_ascii=False))
    else:
        print_summary(stats, closer, args.a, args.b, args.alpha, args.judgments)
    if args.out:
        from trainer.compare.tables import write_summary

        written = write_summary(Path(args.out), stats, closer, judged, texts, args)
        if not args.json:
            print("-> " + ", ".join(str(p) for p in written))
    return {**stats, "closer": closer}
