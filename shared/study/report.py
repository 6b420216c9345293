"""The report side of a study: claims quoted from the paper, the statistics that test them, verdicts by explicit rules,
and the report's Markdown / HTML / JSON renderings (the driver's :meth:`~shared.study.driver.Study.publish` writes and
logs them). Pure: no MLflow, no files written."""
from __future__ import annotations

import base64
import dataclasses
import html
import math
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Sequence

from .settings import _show

if TYPE_CHECKING:
    from .driver import ChildRun


HOLDS, FAILS, INCONCLUSIVE, NOT_TESTED = "holds", "does not hold", "inconclusive at this scale", "not tested"
VERDICTS = (HOLDS, FAILS, INCONCLUSIVE, NOT_TESTED)


@dataclass(frozen=True)
class PaperClaim:
    """One central claim of the paper, kept in the repository: where the paper makes it, the sentence quoted, and the
    report's claims that test it (none: ``why_not`` says why this study does not)."""

    name: str
    where: str  # section, figure or poster panel
    quote: str  # verbatim
    tested_by: tuple[str, ...] = ()
    why_not: str = ""


@dataclass(frozen=True)
class Paper:
    """The paper a study reproduces: its reference and its central claims."""

    reference: str  # authors, title, venue, year
    claims: tuple[PaperClaim, ...]

    def claim(self, name: str) -> PaperClaim:
        return next(c for c in self.claims if c.name == name)


@dataclass
class Precondition:
    """A check of the study's own design that a verdict needs (a student that mimics its teacher, a loss that fell,
    a control without signal): where it fails, the claim is "not tested", never holds or fails."""

    name: str
    measured: str
    rule: str
    ok: bool

    def text(self) -> str:
        return f"{self.name}: {self.measured} ({self.rule}) {'ok' if self.ok else 'FAILED'}"


@dataclass
class Claim:
    """One claim tested: the statistic, what was measured, its null (the same statistic where the claim's cause is
    absent) measured in the same study, the design's preconditions, and the verdict of the stated rule. A failed
    precondition turns any verdict into ``not tested`` (``reason`` says which)."""

    name: str
    quote: str  # verbatim from the paper, or the hypothesis in the study's words (``hypothesis``)
    source: str  # where the paper says it (section, figure), or "study hypothesis"
    statistic: str
    measured: str  # the value with its spread, as text
    rule: str  # the explicit rule that turns the numbers into the verdict
    verdict: str
    value: float | None = None  # the headline number (logged as metric claim_<name>)
    null: str = ""  # what the null is, and its measured value with its spread
    null_value: float | None = None
    preconditions: list[Precondition] = field(default_factory=list)
    hypothesis: bool = False  # the study's own hypothesis, not a sentence of the paper
    reason: str = ""  # why not tested

    def __post_init__(self) -> None:
        failed = [p for p in self.preconditions if not p.ok]
        if failed:
            self.verdict = NOT_TESTED
            self.reason = "; ".join(p.text() for p in failed)

    @property
    def verdict_text(self) -> str:
        return f"{self.verdict}: {self.reason}" if self.verdict == NOT_TESTED and self.reason else self.verdict


def verdict_vs_null(measured: Sequence[float], null: Sequence[float], *, min_effect: float = 0.0,
                    larger: bool = True) -> tuple[str, list[float]]:
    """The verdict of a claim that the measured statistic exceeds its null (``larger``; else: falls below it),
    paired by replicate (run or seed): d_i = ±(measured_i − null_i).

    * holds: the effect is larger than the replicates' spread -- the 95% t-intervals of the two arms' means do not
      overlap, the paired 95% t-interval of d lies above 0, and the mean of d is at least ``min_effect``;
    * does not hold: the paired interval lies wholly below ``min_effect`` (the effect is absent, smaller than the
      smallest that counts, or the other way);
    * else inconclusive (also with fewer than 2 pairs, or a non-finite value).

    Two arms drawn from one distribution (seed-only differences) give "holds" in about 0.25% of draws whatever n
    (measured in the tests), and identical arms never. Returns the verdict and the differences."""
    pairs = [(a, b) for a, b in zip(measured, null) if a is not None and b is not None
             and math.isfinite(a) and math.isfinite(b)]
    sign = 1.0 if larger else -1.0
    d = [sign * (a - b) for a, b in pairs]
    if len(d) < 2 or len(d) < len(list(measured)):
        return INCONCLUSIVE, d
    m, _, lo, hi = mean_ci(d)
    _, _, a_lo, a_hi = mean_ci([sign * a for a, _ in pairs])
    _, _, b_lo, b_hi = mean_ci([sign * b for _, b in pairs])
    if lo > 0 and a_lo > b_hi and m >= min_effect:
        return HOLDS, d
    if hi < min_effect:
        return FAILS, d
    return INCONCLUSIVE, d


def verdict_by_interval(lo: float, hi: float, threshold: float, *, above_holds: bool = True) -> str:
    """``holds`` when the whole interval lies on the claim's side of ``threshold``, ``does not hold`` when it lies
    wholly on the other side, else inconclusive (also when the interval is undefined)."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return INCONCLUSIVE
    if (lo > threshold) if above_holds else (hi < threshold):
        return HOLDS
    if (hi < threshold) if above_holds else (lo > threshold):
        return FAILS
    return INCONCLUSIVE


def verdict_by_p(p: float | None, effect: float | None, alpha: float = 0.05, *, positive: bool = True) -> str:
    """``holds`` when p < alpha and the effect has the claimed sign; ``does not hold`` when p < alpha with the other
    sign; else inconclusive."""
    if p is None or effect is None or not (math.isfinite(p) and math.isfinite(effect)):
        return INCONCLUSIVE
    if p < alpha:
        return HOLDS if (effect > 0) == positive else FAILS
    return INCONCLUSIVE


def spearman(xs: Sequence[float], ys: Sequence[float]) -> tuple[float | None, float | None]:
    """Spearman's rho and its two-sided p-value (scipy); (None, None) when a column is constant."""
    from scipy.stats import spearmanr

    if len(set(xs)) < 2 or len(set(ys)) < 2:
        return None, None
    r = spearmanr(xs, ys)
    rho, p = float(r.statistic), float(r.pvalue)
    return (None, None) if math.isnan(rho) else (rho, p)


def mean_ci(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float, float]:
    """Mean, standard deviation (ddof 1), and Student's t interval mean ± t(level, n-1) sd / sqrt(n) (nan for n < 2)."""
    import numpy as np
    from scipy.stats import t as student_t

    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return math.nan, math.nan, math.nan, math.nan
    m = float(v.mean())
    if v.size < 2:
        return m, math.nan, math.nan, math.nan
    sd = float(v.std(ddof=1))
    half = float(student_t.ppf(0.5 + level / 2, v.size - 1)) * sd / math.sqrt(v.size)
    return m, sd, m - half, m + half


def fmt_spread(values: Sequence[float], digits: int = 3) -> str:
    m, sd, lo, hi = mean_ci(values)
    if not math.isfinite(m):
        return "n/a"
    if not math.isfinite(sd):
        return f"{m:.{digits}g} (n = 1)"
    return f"{m:.{digits}g} ± {sd:.{digits}g} (sd, n = {len(values)}; 95% t-interval {lo:.{digits}g} .. {hi:.{digits}g})"


@dataclass
class Report:
    title: str
    project: str
    scale: str
    summary: str  # what was run, and what the scale reduced
    claims: list[Claim] = field(default_factory=list)
    tables: list[tuple[str, list[str], list[list[Any]]]] = field(default_factory=list)  # (title, header, rows)
    figures: dict[str, Any] = field(default_factory=dict)  # name -> matplotlib figure
    captions: dict[str, str] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    children: list[ChildRun] = field(default_factory=list)
    paper: Paper | None = None
    hardware: dict[str, str] = field(default_factory=dict)  # shared.hardware.describe() of the machine that ran it
    spent: str = ""  # how the scale's budget was spent

    def as_dict(self) -> dict:
        return {"title": self.title, "project": self.project, "scale": self.scale, "summary": self.summary,
                "paper": dataclasses.asdict(self.paper) if self.paper else None, "hardware": self.hardware,
                "settings": {k: _show(v) for k, v in self.settings.items()},
                "claims": [dataclasses.asdict(c) for c in self.claims],
                "tables": [{"title": t, "header": h, "rows": [[_cell(c) for c in r] for r in rows]}
                           for t, h, rows in self.tables],
                "children": [dataclasses.asdict(c) for c in self.children], "figures": list(self.figures)}

    def verdict_rows(self) -> list[list[str]]:
        return [[c.name + (" (study hypothesis)" if c.hypothesis else ""), f"“{c.quote}”", c.statistic, c.measured,
                 c.null or "–", "; ".join(p.text() for p in c.preconditions) or "–", c.verdict_text]
                for c in self.claims]

    def paper_rows(self) -> list[list[str]]:
        """The paper's central claims: tested (by which claims, with their verdicts) or not, and why."""
        by = {c.name: c for c in self.claims}
        rows = []
        for pc in self.paper.claims if self.paper else ():
            tested = [n for n in pc.tested_by if n in by]
            rows.append([pc.name, pc.where, f"“{pc.quote}”",
                         "; ".join(f"{n}: {by[n].verdict}" for n in tested) if tested else
                         f"not tested: {pc.why_not or 'no child of this scale measures it'}"])
        return rows

    def _sections(self) -> list[tuple[str, str, list[str], list[list[Any]]]]:
        """(heading, text, header, rows) in report order, shared by both renderings."""
        s = [("Settings", f"Scale `{self.scale}`. {self.summary}", ["setting", "value"],
              [[k, _show(v)] for k, v in self.settings.items()]),
             ("Hardware", "The machine that ran this report's children: runs repeat exactly only on the same "
                          "hardware and library versions.", ["", "value"],
              [[k, v] for k, v in self.hardware.items()]),
             ("Verdicts", "Each verdict is computed from the numbers by the rule given with it, against its null "
                          "(the same statistic where the claim's cause is absent), measured in this study. A claim "
                          "whose precondition fails is not tested.",
              ["claim", "quoted from the paper", "statistic", "measured", "null", "preconditions", "verdict"],
              self.verdict_rows())]
        if self.paper:
            s.insert(1, ("The paper's claims", f"{self.paper.reference}. Its central claims, and which of them this "
                                               "study tests." + (f" {self.spent}" if self.spent else ""),
                         ["claim", "where", "quoted", "tested by (verdict)"], self.paper_rows()))
        for c in self.claims:
            s.append((f"Claim `{c.name}`", f"Source: {c.source}. "
                                           + ("A hypothesis of this study, not a claim of the paper. " if c.hypothesis
                                              else "") + f"Quote: “{c.quote}”. Statistic: {c.statistic}. "
                                           f"Measured: {c.measured}. Null: {c.null or 'none'}. "
                                           + "".join(f"Precondition {p.text()}. " for p in c.preconditions)
                                           + f"Rule: {c.rule}. **Verdict: {c.verdict_text}.**", [], []))
        for title, header, rows in self.tables:
            s.append((title, "", header, rows))
        s.append(("Child runs", "Reused: finished by an earlier invocation of the same study command.",
                  ["child", "command", "run", "reused", "resumed from"],
                  [[c.name, c.command, c.run_id, "yes" if c.reused else "no", c.resumed_from or ""]
                   for c in self.children]))
        return s

    def markdown(self) -> str:
        lines = [f"# {self.title}", ""]
        for heading, text, header, rows in self._sections():
            lines += [f"## {heading}", ""]
            if text:
                lines += [text, ""]
            if header:
                lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                lines += ["| " + " | ".join(_cell(c).replace("|", "\\|").replace("\n", " ") for c in r) + " |"
                          for r in rows]
                lines.append("")
        lines += ["## Figures", ""]
        for name in self.figures:
            lines += [f"![{name}](figures/{name}.png)", "", self.captions.get(name, ""), ""]
        return "\n".join(lines)

    def html(self, pngs: dict[str, bytes]) -> str:
        def esc(s: Any) -> str:
            t = html.escape(_cell(s))
            return re.sub(r"\*\*(.+?)\*\*", r"<b>\1</b>", re.sub(r"`([^`]+)`", r"<code>\1</code>", t))

        body = [f"<h1>{esc(self.title)}</h1>"]
        for heading, text, header, rows in self._sections():
            body.append(f"<h2>{esc(heading)}</h2>")
            if text:
                body.append(f"<p>{esc(text)}</p>")
            if header:
                body.append("<table><tr>" + "".join(f"<th>{esc(h)}</th>" for h in header) + "</tr>"
                            + "".join("<tr>" + "".join(f"<td>{esc(c)}</td>" for c in r) + "</tr>" for r in rows)
                            + "</table>")
        body.append("<h2>Figures</h2>")
        for name, data in pngs.items():
            b64 = base64.b64encode(data).decode()
            body.append(f"<figure><img alt='{esc(name)}' src='data:image/png;base64,{b64}'>"
                        f"<figcaption>{esc(name)}: {esc(self.captions.get(name, ''))}</figcaption></figure>")
        style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto}table{border-collapse:collapse;"
                 "margin:1em 0}td,th{border:1px solid #bbb;padding:4px 8px;vertical-align:top}img{max-width:100%}"
                 "code{background:#f3f3f3}")
        return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(self.title)}</title>"
                f"<style>{style}</style></head><body>{''.join(body)}</body></html>")


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return "n/a" if not math.isfinite(v) else f"{v:.4g}"
    if isinstance(v, (tuple, list)):
        return ",".join(map(_cell, v))
    return "" if v is None else str(v)
