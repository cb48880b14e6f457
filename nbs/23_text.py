# ---
# jupyter:
#   kernelspec:
#     display_name: python3
#     language: python
#     name: python3
# ---

# %%
#| default_exp text

# %% [markdown]
# # The paper's words, bound to the runs
#
# > `paper/numbers.tex` generated from the run directories, prose that uses only its macros, and a check that it does.

# %% [markdown]
# `paper/main.tex` was tables and figures without a paper: a reader with five minutes had to find
# the finding alone. This notebook writes the words. Every number a sentence states is a LaTeX
# macro (`\numRefPredictor`, ...) defined in `paper/numbers.tex`, which `make paper` generates from
# the same run directories as the tables: re-running the arc on other data or weights rewrites the
# numbers, never the sentences. `prose_problems` is the check: a digit in the prose outside a macro
# (years, "95\%" and experiment ids excepted) or a macro used but not generated is an error, and
# tests/test_paper.py runs it on the committed `paper/`.
#
# The headline run is EXP-004 (the arc's held-out-family experiment) on the first backbone that
# ran, a paper backbone before an offline stand-in; the prose names it through `\numBackbone`.

# %%
#| export
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from derma_jepa.data import atomic_write_bytes, experiments_dir
from derma_jepa.report import ANCHORS, backbone_label, in_arc, mean_sd_ci, scorer_label, sweep_deltas, tex_text

# %%
from fastcore.test import test_eq, test_fail


# %% [markdown]
# ## Formatting
#
# Numbers are set in `\ensuremath` so that a minus sign is a minus in text and in math; an interval
# is one macro (`\numRefPredictorCI` → [0.637, 0.688], `tex_ci`); a missing value (a run that could not be
# made) is "n/a", which the prose then shows as such.

# %%
#| export
def fmt(v, signed: bool = False, digits: int = 3) -> str:
    "A number as the prose shows it: `\\ensuremath{...}`, `n/a` when missing."
    if v is None or (isinstance(v, float) and not np.isfinite(v)): return "n/a"
    return f"\\ensuremath{{{v:+.{digits}f}}}" if signed else f"\\ensuremath{{{v:.{digits}f}}}"


def tex_ci(lo, hi, signed: bool = False) -> str:
    "An interval as the prose shows it (13_report's `fmt_ci` is the tables' value-and-interval cell)."
    if any(v is None or not np.isfinite(v) for v in (lo, hi)): return "n/a"
    f = (lambda v: f"{v:+.3f}") if signed else (lambda v: f"{v:.3f}")
    return f"\\ensuremath{{[{f(lo)}, {f(hi)}]}}"


def tex_words(s) -> str:
    "Text for a macro body (13_report's `tex_text`), `n/a` when missing."
    return "n/a" if s is None else tex_text(s)


# %%
test_eq([fmt(0.6631), fmt(-0.0491, True), fmt(float("nan")), tex_ci(0.1, 0.2), tex_ci(-0.07, -0.02, True)],
        ["\\ensuremath{0.663}", "\\ensuremath{-0.049}", "n/a", "\\ensuremath{[0.100, 0.200]}", "\\ensuremath{[-0.070, -0.020]}"])
test_eq(tex_words("color_texture (offline stand-in)"), "color\\_texture (offline stand-in)")

# %% [markdown]
# ## The numbers
#
# `paper_numbers(long)` reads the long table (13_report `collect`) and the headline runs' own files
# (`audit.json`, `config.yaml`, `metrics.json`) and returns macro name → (body, what it is). Data over
# code: the per-protocol numbers are one table, `PER_PROTOCOL`, of (name, scorer, column).

# %%
#| export
HEADLINE = "EXP-004"
PROTOCOL_PREFIX = {"reference": "Ref", "symmetric": "Sym"}
# (macro suffix, scorer, column of the long table): test AUROC on the synthetic endpoint, and on the re-photographs
PER_PROTOCOL = (("Predictor", "predictor", "auroc"), ("TargetProbe", "target_only_probe", "auroc"),
                ("ContextProbe", "context_only_probe", "auroc"), ("BiasOnly", "bias_only", "auroc"),
                ("RawCosine", "identity", "auroc"), ("Pixel", "pixel_l2", "auroc"), ("SSIM", "ssim", "auroc"),
                ("PredictorRephoto", "predictor", "rephoto_auroc"), ("RawCosineRephoto", "identity", "rephoto_auroc"),
                ("PixelRephoto", "pixel_l2", "rephoto_auroc"), ("SSIMRephoto", "ssim", "rephoto_auroc"))
CI_COLUMNS = {"auroc": ("auroc_lo", "auroc_hi"), "rephoto_auroc": ("rephoto_lo", "rephoto_hi")}
FAMILY_NAME = {"strong": "Strong", "strong_held_out": "HeldOut", "strong_held_out_2": "HeldOutTwo"}


def headline(long: pd.DataFrame, experiment: str = HEADLINE) -> pd.DataFrame:
    "Test rows of `experiment`'s arc runs on one backbone: the first that ran, a paper backbone before a stand-in."
    t = long[in_arc(long) & long.experiment.eq(experiment) & long.status.eq("run")] if len(long) else long
    t = t[t.split.eq("test")] if "split" in t else t.iloc[:0]
    if t.empty: return t
    first = t.drop_duplicates("backbone").sort_values("stand_in", kind="stable").backbone.iloc[0]
    return t[t.backbone.eq(first)]


def _row(t: pd.DataFrame, protocol: str, scorer: str):
    r = t[t.protocol.eq(protocol) & t.scorer.eq(scorer)]
    return None if r.empty else r.iloc[0]


def _get(r, col):
    return None if r is None or col not in r or pd.isna(r[col]) else float(r[col])


def data_digest(metadata_csv) -> str:
    "SHA-256 over the metadata file's SHA-256 and every image's (sorted): names the data copy by content."
    from derma_jepa.data import load_records
    folder = Path(metadata_csv).parent
    rec = load_records(folder)
    h = hashlib.sha256(hashlib.sha256(Path(metadata_csv).read_bytes()).hexdigest().encode())
    for s in sorted(rec.sha256[rec.sha256.ne("")]): h.update(s.encode())
    return h.hexdigest()


# %%
#| export
def _data_numbers(t: pd.DataFrame, digest: bool, memo: dict | None = None) -> dict:
    if t.empty:
        return {k: ("n/a", "no headline run") for k in ("Images", "Lesions", "MultiLesions", "ImageSize", "DataDigest", "Split",
                                                       "PairsPerSplit", "NBoot", "RephotoVal", "RephotoTest")}
    run = Path(t.run_dir.iloc[0])
    audit, cfg = json.loads((run / "audit.json").read_text()), yaml.safe_load((run / "config.yaml").read_text())
    reph = json.loads((run / "metrics.json").read_text()).get("rephoto", {}).get("pairs", {})
    sizes = list(audit.get("image_sizes", {}))
    size = sizes[0].replace("x", "\\times ") if len(sizes) == 1 else "mixed sizes"
    return {"Split": ("/".join(f"{round(100 * f)}" for f in cfg["split_fractions"]), "split fractions of lesions (%)"),
            "Images": (f"{audit['n_images']:,}", "images read"), "Lesions": (f"{audit['n_lesions']:,}", "lesions"),
            "MultiLesions": (f"{audit['lesions_multi_image']:,}", "lesions with two or more photographs"),
            "ImageSize": (f"\\ensuremath{{{size}}}", "image size of the copy (pixels)"),
            "DataDigest": (digest_text(audit["metadata_csv"], memo) if digest else "not computed", "SHA-256 of the data copy (16 hex)"),
            "PairsPerSplit": (f"{cfg['pairs_per_split']:,}", "stable (and changing) pairs per split"),
            "NBoot": (f"{cfg['n_boot']:,}", "bootstrap resamples"),
            "RephotoVal": (str(reph.get("val", {}).get("lesions", "n/a")), "re-photo lesions, val"),
            "RephotoTest": (str(reph.get("test", {}).get("lesions", "n/a")), "re-photo lesions, test")}


def digest_text(metadata_csv, memo: dict | None = None) -> str:
    "`data_digest`'s first 16 hex digits (or why it could not be computed); `memo` keeps it for the next caller."
    memo = {} if memo is None else memo
    if str(metadata_csv) not in memo:
        try: memo[str(metadata_csv)] = data_digest(metadata_csv)[:16]
        except Exception as e: memo[str(metadata_csv)] = f"not computed ({type(e).__name__})"
    return memo[str(metadata_csv)]


def _protocol_numbers(t: pd.DataFrame) -> dict:
    out = {}
    for prot, pre in PROTOCOL_PREFIX.items():
        for name, scorer, col in PER_PROTOCOL:
            r = _row(t, prot, scorer)
            out[pre + name] = (fmt(_get(r, col)), f"{prot}: {scorer_label(scorer)}, test AUROC ({col})")
            out[pre + name + "CI"] = (tex_ci(_get(r, CI_COLUMNS[col][0]), _get(r, CI_COLUMNS[col][1])), f"its 95% interval")
        p = _row(t, prot, "predictor")
        out[pre + "Baseline"] = (tex_words(None if p is None else scorer_label(p.strongest_baseline)), f"{prot}: strongest baseline")
        out[pre + "Delta"] = (fmt(_get(p, "delta"), True), f"{prot}: predictor − strongest baseline")
        out[pre + "DeltaCI"] = (tex_ci(_get(p, "delta_lo"), _get(p, "delta_hi"), True), "its interval")
        out[pre + "Verdict"] = (tex_words(None if p is None else p.verdict), f"{prot}: synthetic verdict")
        out[pre + "RephotoBaseline"] = (tex_words(None if p is None or pd.isna(p.rephoto_baseline) else scorer_label(p.rephoto_baseline)),
                                        f"{prot}: re-photo comparator (chosen on val)")
        out[pre + "RephotoDelta"] = (fmt(_get(p, "rephoto_delta_best"), True), f"{prot}: re-photo Δ vs that comparator")
        out[pre + "RephotoDeltaCI"] = (tex_ci(_get(p, "rephoto_delta_best_lo"), _get(p, "rephoto_delta_best_hi"), True), "its interval")
        out[pre + "RephotoVerdict"] = (tex_words(None if p is None else p.rephoto_verdict), f"{prot}: re-photo verdict")
    return out


# %%
#| export
def _sweep_numbers(long: pd.DataFrame) -> dict:
    d = sweep_deltas(long) if len(long) else pd.DataFrame(columns=["endpoint", "protocol", "comparison", "value", "seed"])
    out, summaries = {}, {}
    for name, endpoint, prot, comp in (("SweepSynthRefMinusSym", "synthetic", "reference − symmetric", "predictor"),
                                       ("SweepRephotoRefMinusSym", "re-photo", "reference − symmetric", "predictor"),
                                       ("SweepRephotoSymMinusRaw", "re-photo", "symmetric", "predictor − raw cosine"),
                                       ("SweepRefTargetProbe", "synthetic", "reference", "target-only probe"),
                                       ("SweepSymTargetProbe", "synthetic", "symmetric", "target-only probe")):
        v = d[d.endpoint.eq(endpoint) & d.protocol.eq(prot) & d.comparison.eq(comp)].value.to_numpy(float)
        s = mean_sd_ci(v) if len(v) >= 2 else {}
        summaries[name] = s
        signed = "probe" not in comp
        out[name] = (fmt(s.get("mean"), signed), f"sweep, {endpoint}, {prot}, {comp}: mean over seeds")
        out[name + "SD"] = (fmt(s.get("sd")), "its SD over seeds")
        out[name + "CI"] = (tex_ci(s.get("ci_low"), s.get("ci_high"), signed), "Student-t 95% interval of the mean")
    seeds = sorted(set(d.seed)) if len(d) else []
    out["SweepN"] = (str(len(seeds)) if seeds else "n/a", "seeds in the sweep")
    out["SweepAgreement"] = (agreement(*(summaries.get(k) for k in ("SweepSynthRefMinusSym", "SweepRephotoRefMinusSym"))),
                             "what the two endpoints' reference − symmetric intervals say together")
    return out


def agreement(synthetic: dict | None, rephoto: dict | None) -> str:
    "A sentence on whether the two endpoints rank the protocols alike, read off their intervals."
    sign = lambda s: 0 if not s or s["ci_low"] <= 0 <= s["ci_high"] else (1 if s["ci_low"] > 0 else -1)
    a, b = sign(synthetic), sign(rephoto)
    if not synthetic or not rephoto: return "the sweep did not run"
    if a and b: return "the two endpoints rank the protocols " + ("alike" if a == b else "in opposite order")
    return "at least one endpoint does not separate the protocols"


def _ablation_numbers(long: pd.DataFrame) -> dict:
    t = long[long.ablation.ne("") & long.split.eq("test") & long.status.eq("run")] if "split" in long and len(long) else long.iloc[:0]
    get = lambda step, scorer: _get(_row(t[t.ablation.eq(step)], "reference", scorer), "auroc")
    probe = {s: get(s, "target_only_probe") for s in ("reference", "+ processing")}
    before, after = get("+ streams", "predictor"), get("+ selection", "predictor")
    ssim = get("+ processing", "ssim")
    return {"AblProbeBefore": (fmt(probe["reference"]), "ablation: target-only probe under reference"),
            "AblProbeAfter": (fmt(probe["+ processing"]), "ablation: the probe once both sides are processed"),
            "AblSSIMAfter": (fmt(ssim), "ablation: SSIM once both sides are processed"),
            "AblSelection": (fmt(None if before is None or after is None else after - before, True),
                             "ablation: the predictor's change from dx-matched selection")}


def _lofo_numbers(long: pd.DataFrame) -> dict:
    t = long[long.lofo.ne("") & long.split.eq("test") & long.status.eq("run")] if "split" in long and len(long) else long.iloc[:0]
    out = {}
    for fam, name in FAMILY_NAME.items():
        g = t[t.lofo.eq(fam)]
        for col, suffix in (("auroc", ""), ("rephoto_auroc", "Rephoto")):
            for scorer, sn in (("predictor", "Predictor"), ("ssim", "SSIM"), ("pixel_l2", "Pixel")):
                out[f"Lofo{name}Sym{sn}{suffix}"] = (fmt(_get(_row(g, "symmetric", scorer), col)),
                                                     f"LOFO holding out {fam}, symmetric, {scorer} ({col})")
    return out


def _interval_numbers(t: pd.DataFrame) -> dict:
    p = _row(t, "symmetric", "predictor")
    w = lambda lo, hi: None if _get(p, lo) is None or _get(p, hi) is None else _get(p, hi) - _get(p, lo)
    pair, ctx, two = w("pair_lo", "pair_hi"), w("auroc_lo", "auroc_hi"), w("two_way_lo", "two_way_hi")
    ratio = lambda a: None if a is None or not pair else a / pair
    return {"TwoWayRatio": (fmt(ratio(two), digits=2), "two-way / pair-level interval width (symmetric predictor)"),
            "ContextRatio": (fmt(ratio(ctx), digits=2), "context-lesion / pair-level width")}


def _anchor_numbers(long: pd.DataFrame) -> dict:
    pub = {(which, scorer): v for _, v, which, scorer in ANCHORS}
    a = long[long.anchor.ne("") & long.experiment.eq(HEADLINE) & long.split.eq("test")] if "split" in long and len(long) else long.iloc[:0]
    return {"PublishedPixel": (fmt(float(pub["baseline", "pixel_l2"])), "published EXP-004 pixel L2 (release)"),
            "PublishedViT": (pub["anchor", "predictor"].replace("–", "--"), "published DINOv2/CLIP predictors (release)"),
            "PublishedDermLIP": (fmt(float(pub["dermlip_vitb16", "predictor"])), "published DermLIP predictor (release)"),
            "RandomViTRef": (fmt(_get(_row(a, "reference", "predictor"), "auroc")), "random-init ViT-B/16 predictor, reference"),
            "RandomViTSym": (fmt(_get(_row(a, "symmetric", "predictor"), "auroc")), "random-init ViT-B/16 predictor, symmetric")}


def paper_numbers(long: pd.DataFrame, digest: bool = True, memo: dict | None = None) -> dict[str, tuple[str, str]]:
    "Macro name (without `\\num`) -> (LaTeX body, what it is), from the long table and the headline runs' files."
    t = headline(long)
    out = {"Backbone": (tex_words(backbone_label(t.backbone.iloc[0], bool(t.stand_in.iloc[0]))) if len(t) else "n/a",
                        "the headline runs' backbone")}
    out.update(_data_numbers(t, digest, memo))
    for part in (_protocol_numbers(t), _sweep_numbers(long), _ablation_numbers(long), _lofo_numbers(long),
                 _interval_numbers(t), _anchor_numbers(long)):
        out.update(part)
    return out


def numbers_tex(numbers: dict) -> str:
    "`paper/numbers.tex`: one `\\newcommand` per number, with what it is."
    lines = ["% Generated by derma_jepa.text.paper_numbers from the run directories (make paper): do not edit."]
    lines += [f"\\newcommand{{\\num{k}}}{{{v}}}  % {what}" for k, (v, what) in numbers.items()]
    return "\n".join(lines) + "\n"


# %% [markdown]
# ## The prose, and its check
#
# `PROSE` is the paper's text: abstract, introduction, methods, results, limitations and how to
# reproduce it. It is LaTeX with the macros only; `prose_problems` lists what breaks the rule.

# %%
#| export
ALLOWED = (r"EXP-\d{3}[ab]?", r"95\\%", r"\b(?:19|20)\d{2}\b", r"ViT-[STB]/\d+", r"SHA-256", r"DINOv2", r"HAM10000", r"\bL2\b",
           r"\\texttt\{[^}]*\}",
           r"\\ref\{[^}]*\}", r"\\label\{[^}]*\}",
           r"\\input\{[^}]*\}", r"\\IfFileExists\{[^}]*\}", r"\\cite\{[^}]*\}")


def prose_problems(tex: str, defined) -> list[str]:
    "Digits outside macros (bar ALLOWED: experiment ids, 95%, years, model and metric names, code) and `\\num...` macros not in `defined`."
    body = "\n".join(re.sub(r"(?<!\\)%.*", "", l) for l in tex.splitlines())          # comments dropped
    used = set(re.findall(r"\\num([A-Za-z]+)", body))
    out = [f"macro \\num{m} is used but not generated" for m in sorted(used - set(defined))]
    stripped = re.sub(r"\\[A-Za-z]+", " ", re.sub("|".join(ALLOWED), " ", body))
    for m in re.finditer(r"[^\s]*\d[^\s]*", stripped):
        line = body[:body.find(m.group(0))].count("\n") + 1 if m.group(0) in body else "?"
        out.append(f"a number outside a macro: {m.group(0)!r} (line {line})")
    return out


# %%
test_eq(prose_problems("EXP-004 gives \\numRefPredictor{} (95\\% CI \\numRefPredictorCI) in 2018 on ViT-B/16.",
                       {"RefPredictor", "RefPredictorCI"}), [])
test_eq(prose_problems("the predictor reached 0.663 here", {}), ["a number outside a macro: '0.663' (line 1)"])
test_eq(prose_problems("\\numNowhere", {}), ["macro \\numNowhere is used but not generated"])
test_eq(prose_problems("% a comment with 12 numbers\ntext", {}), [])

# %%
#| export
PROSE = r"""
\begin{abstract}
DermaJEPA trains a latent predictor on a frozen vision backbone to tell a stable skin lesion (the same lesion under
acquisition nuisance) from a changing one (another lesion of the same diagnosis and site) on HAM10000, with nuisance
families held out between training and test. Its public release processes every stable target and no changing pair,
so whether a target was processed answers the label. We re-run the arc under the release's protocol and under a
symmetric one that processes every side alike. On EXP-004 (\numBackbone), a probe that sees only the target reaches
AUROC \numRefTargetProbe{} under the release's protocol and \numSymTargetProbe{} under the symmetric one. With the leak
closed, a synthetic stable pair is two draws on one photograph, which pixel metrics separate by construction: SSIM
reaches \numSymSSIM{}. On the honest endpoint, real re-photographs of a lesion against matched changing pairs, pixel L2
reaches \numSymPixelRephoto{} and SSIM \numSymSSIMRephoto{}; the predictor reaches \numRefPredictorRephoto{}
(reference) and \numSymPredictorRephoto{} (symmetric), ``\numRefRephotoVerdict'' and ``\numSymRephotoVerdict''
against the comparator chosen on validation. Over \numSweepN{} seeds, reference minus symmetric is
\numSweepRephotoRefMinusSym{} \numSweepRephotoRefMinusSymCI{} on re-photographs and \numSweepSynthRefMinusSym{}
\numSweepSynthRefMinusSymCI{} on synthetic pairs: \numSweepAgreement.
\end{abstract}

\section{Introduction}
A predictor that maps the embedding of a lesion's photograph to the embedding of its next photograph would let a
follow-up visit be scored by how far the new image lies from the predicted one. DermaJEPA proposes such a predictor on
frozen backbones (DINOv2, OpenAI CLIP, BiomedCLIP, DermLIP) and reports a DermLIP predictor at AUROC
\numPublishedDermLIP{} where pixel L2 reaches \numPublishedPixel{}. Its release builds every stable target by
processing an image and leaves every changing pair untouched, so ``was the target processed?'' answers the label
before lesion identity enters (Section~\ref{sec:leak}). This re-run names a protocol for every run:
\texttt{reference} reproduces the release, quirks included; \texttt{symmetric} processes both sides of both labels
alike, draws every pair from its own random stream and matches the pairs' diagnosis mix. It then asks what survives on
the only realistic stable pairs in the data, two different photographs of one lesion.

\section{Methods}
\paragraph{Data.} HAM10000: \numImages{} images of \numLesions{} lesions, \numMultiLesions{} of them photographed
more than once. The outputs here were made on a copy at \numImageSize{} pixels, recompressed (SHA-256 over the
metadata and every image: \texttt{\numDataDigest}); absolute numbers on it are not the published ones. The split is
the release's lesion-aware split (\numSplit{} per cent of lesions, seeded), with identical files kept together under
the symmetric protocol.
\paragraph{Pairs and families.} Each split holds \numPairsPerSplit{} stable and as many changing pairs. Three
disjoint nuisance families (photometric and geometric; hue, posterisation, sharpening, motion blur and erasing;
gamma, colour temperature, vignette, salt and pepper) are tables of operations and parameter bands; EXP-004 trains on
the first two and tests on the third. The specification (\texttt{nbs/protocol.md}) defines both protocols and the
arc, EXP-001 to EXP-009 (Table~\ref{tab:experiments}).
\input{tables/experiments.tex}
\paragraph{Endpoints.} Beside each protocol's synthetic pairs, every run scores the real re-photographs: per lesion
with two photographs, a re-photo pair and a changing pair that keeps the same context photograph and takes another
lesion of the same diagnosis and site (\numRephotoVal{} lesions on validation, \numRephotoTest{} on test), the same
pairs under both protocols.
\paragraph{Statistics.} AUROC with percentile bootstrap intervals (\numNBoot{} resamples). Under the symmetric protocol
and on the re-photo endpoint the resampling unit is the lesion, shared by every scorer, so a difference $\Delta$ has
its own paired interval; under the reference protocol, the release's resamples of pairs. Table~\ref{tab:intervals}
compares the units. Verdicts are read off $\Delta$'s interval against the baseline chosen on validation (the release's
fixed thresholds under its protocol's synthetic endpoint, labelled so). The seed sweep reports within-seed paired
differences with Student-$t$ intervals of the mean.

\section{Results}
\paragraph{The leak and its mechanism.}\label{sec:leak} Under the reference protocol the target-only probe reaches
\numRefTargetProbe{} \numRefTargetProbeCI{} and the context-only probe \numRefContextProbe{}; one side alone carries no
label when a probe sits at chance. The predictor reaches \numRefPredictor{} \numRefPredictorCI{} and its bias-only
control (the context plus the mean training displacement) \numRefBiasOnly{}: where the two agree, the fit learned a
translation, which is how a processing cue enters the score. Processing both sides alone takes the probe from
\numAblProbeBefore{} to \numAblProbeAfter{} and SSIM to \numAblSSIMAfter{} (Table~\ref{tab:ablation}); dx-matched
selection then moves the predictor by \numAblSelection.
\paragraph{The synthetic endpoint under the symmetric protocol.} The target-only probe reaches \numSymTargetProbe{};
the predictor \numSymPredictor{} \numSymPredictorCI{}, the raw cosine \numSymRawCosine{}, pixel L2 \numSymPixel{} and
SSIM \numSymSSIM{}. $\Delta$ against \numSymBaseline{} is \numSymDelta{} \numSymDeltaCI{}: ``\numSymVerdict''. A
synthetic stable pair is one photograph twice, and the held-out family is photometric.
\paragraph{The re-photo endpoint.} On real re-photographs pixel L2 reaches \numSymPixelRephoto{} and SSIM
\numSymSSIMRephoto. The predictor reaches \numRefPredictorRephoto{} \numRefPredictorRephotoCI{} (reference) and
\numSymPredictorRephoto{} \numSymPredictorRephotoCI{} (symmetric); against the comparator chosen on validation
(\numRefRephotoBaseline{} and \numSymRephotoBaseline) $\Delta$ is \numRefRephotoDelta{} \numRefRephotoDeltaCI{}
(``\numRefRephotoVerdict'') and \numSymRephotoDelta{} \numSymRephotoDeltaCI{} (``\numSymRephotoVerdict'')
(Table~\ref{tab:rephoto}).
\paragraph{Every held-out family.} Under the symmetric protocol, holding out the third family SSIM reaches
\numLofoHeldOutTwoSymSSIM{} and the predictor \numLofoHeldOutTwoSymPredictor; holding out the first (photometric and
geometric), SSIM \numLofoStrongSymSSIM{} and the predictor \numLofoStrongSymPredictor; on that fold's re-photographs,
SSIM \numLofoStrongSymSSIMRephoto{} and the predictor \numLofoStrongSymPredictorRephoto{} (Table~\ref{tab:lofo}).
\paragraph{Seeds.} Over \numSweepN{} seeds (a seed changes the split and every pair), reference minus symmetric for
the predictor is \numSweepSynthRefMinusSym{} \numSweepSynthRefMinusSymCI{} on the synthetic endpoint and
\numSweepRephotoRefMinusSym{} \numSweepRephotoRefMinusSymCI{} on the re-photographs; the symmetric predictor minus the
raw cosine on the re-photographs is \numSweepRephotoSymMinusRaw{} \numSweepRephotoSymMinusRawCI{}. The swept
target-only probe is \numSweepRefTargetProbe{} \numSweepRefTargetProbeCI{} (reference) and \numSweepSymTargetProbe{}
(symmetric) (Table~\ref{tab:sweep_deltas}).
\paragraph{Intervals.} Resampling both lesions of a pair makes the predictor's interval \numTwoWayRatio{} times as wide
as the release's pair-level one; resampling the context lesion alone, \numContextRatio{} times (Table~\ref{tab:intervals}).
\paragraph{Anchors.} The release published pixel L2 at \numPublishedPixel{} (here \numRefPixel{} under its protocol)
and DINOv2 and CLIP predictors at \numPublishedViT; a random-init ViT-B/16 reaches \numRandomViTRef{} here under the
reference protocol and \numRandomViTSym{} under the symmetric one (Table~\ref{tab:anchors}). EXP-009 asks whether
self-supervised pretraining on dermoscopy, on a corpus audited against HAM10000's images (not its lesions), learns
what DermLIP learned (its own section).

\section{Limitations}
The hub backbones' weights could not be fetched on the machine that made these outputs, so the arc's rows name an
offline stand-in (\numBackbone) or say why they did not run; the code paths for the hub weights exist and are tested
on checkpoints with the hub files' layout. The data is a downscaled, recompressed copy. EXP-009's overlap audit is
image-level: a lesion photographed for both HAM10000 and the ISIC test sets can be in both. Its pretraining is
CPU-scale (a ViT-Tiny at low resolution, one seed per objective): a pilot, not a verdict on the objectives.

\section{Reproduction}
\texttt{make paper} (with \texttt{HAM10000\_DIR} set) re-runs the arc, the seed sweep, the leave-one-family-out folds,
the ablation and the anchors from the experiment files, reusing complete runs, and rewrites every table, figure and
number of this paper, \texttt{numbers.tex} included; \texttt{make exp009} does the same for EXP-009. Each number is
read from a run directory that holds the executed notebook that produced it (\texttt{runs.md}).
"""


# %% [markdown]
# ## The experiments, defined
#
# One table the prose cites, from the experiment files themselves (`nbs/experiments/*.yaml`): what
# each experiment trains and tests on, its partner policy, backbone and predictor.

# %%
#| export
def experiments_table() -> pd.DataFrame:
    "EXP-001 ... EXP-009 as their YAML files define them."
    rows = []
    for f in sorted(experiments_dir().glob("exp0*.yaml")):
        if f.stem.startswith("exp009_pretrain"): continue        # EXP-009's pretraining settings (CPU and GPU), not a run
        c = yaml.safe_load(f.read_text())
        fams = c.get("train_families", "")
        rows.append({"experiment": c.get("experiment", f.stem.upper()),
                     "train families": ", ".join(fams) if isinstance(fams, list) else str(fams).replace(",", ", "),
                     "test family": c.get("eval_family", ""), "changing partner": c.get("changing_policy", "strict"),
                     "backbone": backbone_label(c["backbone"], False) if c.get("backbone") else
                                 "ViTs self-pretrained on non-HAM10000 dermoscopy (exp009_pretrain.yaml)", "predictor / optimiser": f"{c.get('predictor', 'linear')} / {c.get('optimizer', 'sgd')}"})
    return pd.DataFrame(rows).set_index("experiment")


# %%
experiments_table()

# %% [markdown]
# ## Provenance
#
# `paper/provenance.json` says where every number comes from: for each run behind the paper (the
# arc, sweep, folds, ablation and anchors), its directory, the SHA-256 of its `config.yaml`, seed,
# the git commit and package versions it ran with, the device and precision (its
# `environment.json`); for each data folder, the content digest of `data_digest`; and for each
# macro of `numbers.tex`, the runs it was read from.

# %%
#| export
PARTS = {"headline": ("Backbone", "Images", "Lesions", "MultiLesions", "ImageSize", "DataDigest", "Split", "PairsPerSplit", "NBoot",
                      "Rephoto", "Ref", "Sym", "TwoWay", "ContextRatio"),
         "sweep": ("Sweep",), "ablation": ("Abl",), "lofo": ("Lofo",), "anchors": ("Published", "RandomViT")}


def _part_runs(long: pd.DataFrame) -> dict[str, list[str]]:
    ran = long[long.status.eq("run")] if len(long) else long
    h = headline(long)
    return {"headline": sorted(set(h.run_dir)) if len(h) else [],
            "sweep": sorted(set(ran.run_dir[ran.sweep.astype(bool)])), "ablation": sorted(set(ran.run_dir[ran.ablation.ne("")])),
            "lofo": sorted(set(ran.run_dir[ran.lofo.ne("")])), "anchors": sorted(set(ran.run_dir[ran.anchor.ne("")]))}


def provenance(long: pd.DataFrame, numbers: dict, digest: bool = True, memo: dict | None = None) -> dict:
    "Runs (config hash, seed, commit, versions, device, precision), data digests, and each number's runs."
    ran = long[long.status.eq("run")].drop_duplicates("run_dir") if len(long) else long
    runs, data = [], {}
    for r in ran.itertuples():
        d = Path(r.run_dir)
        env = json.loads((d / "environment.json").read_text()) if (d / "environment.json").exists() else {}
        audit = json.loads((d / "audit.json").read_text()) if (d / "audit.json").exists() else {}
        csv = audit.get("metadata_csv", "")
        if csv and csv not in data: data[csv] = digest_text(csv, memo) if digest else "not computed"
        runs.append({"run_dir": str(d), "experiment": r.experiment, "protocol": r.protocol, "seed": int(r.seed),
                     "backbone": r.backbone, "config_sha256": hashlib.sha256((d / "config.yaml").read_bytes()).hexdigest(),
                     "git_commit": env.get("git_commit", ""), "versions": env.get("versions", {}), "device": env.get("device", ""),
                     "device_model": env.get("device_model", ""), "dtype": env.get("dtype", ""), "data": csv})
    parts = _part_runs(long)
    part_of = lambda name: next((p for p, prefixes in PARTS.items() if name.startswith(prefixes)), "headline")
    return {"data": data, "runs": runs, "numbers": {k: parts[part_of(k)] for k in numbers}}


# %% [markdown]
# ## Writing
#
# `write_text(long, paper_dir)` writes `numbers.tex`, `prose.tex` (which `main.tex` inputs when it
# exists), `provenance.json`, `tables/experiments.{md,tex}` and `finding.md` (the three sentences README opens with),
# refusing first if the prose breaks the rule. With `readme=`, README's block between
# `<!-- finding -->` markers is replaced by the same sentences, so the two cannot drift.

# %%
#| export
FINDING = ("On EXP-004 ({Backbone}), a probe that sees only the target of a pair reaches AUROC {RefTargetProbe} under "
           "the release's protocol, which processes stable targets only, and {SymTargetProbe} under the symmetric one "
           "(chance: one half). With the leak closed, synthetic stable pairs are two draws on one photograph (SSIM "
           "{SymSSIM}); on real re-photographs of a lesion SSIM reaches {SymSSIMRephoto} and the predictor "
           "{SymPredictorRephoto}, \"{SymRephotoVerdict}\" against the comparator chosen on validation. Over {SweepN} "
           "seeds, reference minus symmetric is {SweepRephotoRefMinusSym} {SweepRephotoRefMinusSymCI} on re-photographs and "
           "{SweepSynthRefMinusSym} {SweepSynthRefMinusSymCI} on synthetic pairs: {SweepAgreement}.")


def plain(body: str) -> str:
    "A macro body as Markdown text."
    return re.sub(r"\\ensuremath\{(.*)\}", r"\1", body).replace("\\_", "_").replace("\\times ", "×")


def finding_text(numbers: dict) -> str:
    return FINDING.format(**{k: plain(v) for k, (v, _) in numbers.items()})


def write_text(long: pd.DataFrame, paper_dir="paper", readme=None, digest: bool = True) -> dict:
    "numbers.tex, prose.tex, tables/experiments.* and finding.md into `paper_dir`; README's finding block when `readme` is given."
    from derma_jepa.report import to_latex, to_markdown
    memo = {}                             # the data digest, computed once for the numbers and the provenance
    nums = paper_numbers(long, digest, memo)
    bad = prose_problems(PROSE, nums)
    if bad: raise ValueError("the paper's prose breaks its rule: " + "; ".join(bad))
    out = Path(paper_dir)
    exps = experiments_table()
    files = {"numbers.tex": numbers_tex(nums), "prose.tex": PROSE.lstrip(), "finding.md": finding_text(nums) + "\n",
             "provenance.json": json.dumps(provenance(long, nums, digest, memo), indent=1, sort_keys=True) + "\n",
             "tables/experiments.md": to_markdown(exps),
             "tables/experiments.tex": to_latex(exps, "The experiments, as their files define them.", "tab:experiments")}
    for name, text in files.items(): atomic_write_bytes(out / name, text.encode())
    if readme is not None:
        r = Path(readme).read_text()
        new = re.sub(r"(<!-- finding -->\n).*?(\n<!-- /finding -->)", lambda m: m.group(1) + files["finding.md"].strip() + m.group(2),
                     r, flags=re.S)
        if new != r: atomic_write_bytes(Path(readme), new.encode())
    return {"numbers": nums, "files": sorted(files)}


# %% [markdown]
# A synthetic long table checks the binding: every macro the prose uses is generated, numbers land
# in their macros, a missing run reads "n/a".

# %%
def _fake_long():
    rows = []
    for prot, shift in (("reference", 0.0), ("symmetric", 0.03)):
        for sc, a, ra in (("predictor", 0.66, 0.61), ("identity", 0.64, 0.61), ("bias_only", 0.66, 0.61),
                          ("pixel_l2", 0.57, 0.63), ("ssim", 0.33, 0.57), ("target_only_probe", 0.82, 0.50),
                          ("context_only_probe", 0.50, 0.50)):
            rows.append(dict(experiment="EXP-004", experiments="EXP-004", protocol=prot, seed=20260422, sweep=False, lofo="",
                             ablation="", anchor="", backbone="color_texture", stand_in=True, status="run", run_dir="",
                             split="test", scorer=sc, auroc=a + shift, auroc_lo=a + shift - 0.02, auroc_hi=a + shift + 0.02,
                             rephoto_auroc=ra, rephoto_lo=ra - 0.04, rephoto_hi=ra + 0.04, strongest_baseline="pixel_l2",
                             delta=-0.1, delta_lo=-0.12, delta_hi=-0.08, verdict="worse", rephoto_baseline="pixel_l2",
                             rephoto_verdict="matched", rephoto_delta_best=-0.02, rephoto_delta_best_lo=-0.06,
                             rephoto_delta_best_hi=0.02, pair_lo=np.nan, pair_hi=np.nan, two_way_lo=np.nan, two_way_hi=np.nan))
    return pd.DataFrame(rows)

_nums = paper_numbers(_fake_long().iloc[:0], digest=False)
test_eq(_nums["RefPredictor"][0], "n/a")                                    # nothing ran: every number says so ...
test_eq(prose_problems(PROSE, _nums), [])                                   # ... and every macro still exists
import tempfile
_run = Path(tempfile.mkdtemp())
(_run / "audit.json").write_text(json.dumps({"n_images": 12, "n_lesions": 9, "lesions_multi_image": 3, "image_sizes": {"200x150": 12},
                                             "metadata_csv": str(_run / "none.csv")}))
(_run / "config.yaml").write_text(yaml.safe_dump({"pairs_per_split": 10, "n_boot": 50, "split_fractions": [0.7, 0.15, 0.15]}))
(_run / "metrics.json").write_text(json.dumps({"rephoto": {"pairs": {"val": {"lesions": 4}, "test": {"lesions": 5}}}}))
_nums = paper_numbers(_fake_long().assign(run_dir=str(_run)), digest=False)
test_eq(prose_problems(PROSE, _nums), [])
test_eq([_nums[k][0] for k in ("RefPredictor", "SymSSIMRephoto", "SymRephotoVerdict", "RefDeltaCI", "ImageSize", "Split", "RephotoTest")],
        ["\\ensuremath{0.660}", "\\ensuremath{0.570}", "matched", "\\ensuremath{[-0.120, -0.080]}", "\\ensuremath{200\\times 150}",
         "70/15/15", "5"])
test_eq(_nums["PublishedPixel"][0], "\\ensuremath{0.580}")
(_run / "environment.json").write_text(json.dumps({"git_commit": "abc", "versions": {"torch": "2"}, "device": "cpu", "dtype": "fp32"}))
_prov = provenance(_fake_long().assign(run_dir=str(_run)), _nums, digest=False)
test_eq((len(_prov["runs"]), _prov["runs"][0]["git_commit"], _prov["numbers"]["RefPredictor"], _prov["numbers"]["SweepN"]),
        (1, "abc", [str(_run)], []))
test_eq(_prov["runs"][0]["config_sha256"], hashlib.sha256((_run / "config.yaml").read_bytes()).hexdigest())
_s = lambda lo, hi: {"ci_low": lo, "ci_high": hi}
test_eq([agreement(_s(-0.07, -0.02), _s(0.003, 0.02)), agreement(_s(0.01, 0.02), _s(0.003, 0.02)),
         agreement(_s(-0.07, 0.02), _s(0.003, 0.02)), agreement({}, _s(0.003, 0.02))],
        ["the two endpoints rank the protocols in opposite order", "the two endpoints rank the protocols alike",
         "at least one endpoint does not separate the protocols", "the sweep did not run"])
print(finding_text(_nums))
len(re.sub(r"\\[a-zA-Z]+|[{}]", " ", PROSE.split("\\end{abstract}")[0]).split())                 # the abstract's words (at most 200)


# %% [markdown]
# ## The PDF
#
# `build_pdf(paper_dir)` (`make paper-pdf`) compiles `main.tex` with Debian's TeX Live and latexmk
# (`.ci/run` installs them) in a scratch copy, so `paper/` gains only `main.pdf`; pdfTeX is told the
# date (`SOURCE_DATE_EPOCH`), so the same sources give the same bytes. It returns the problems the
# build log shows: an undefined reference or citation, or an overfull box wider than 10 pt.

# %%
#| export
def log_problems(log: str, max_overfull_pt: float = 10.0) -> list[str]:
    "Undefined references/citations and overfull boxes over `max_overfull_pt` in a LaTeX log."
    out = [l.strip() for l in log.splitlines() if re.search(r"(Reference|Citation) `[^']*' on page .* undefined", l)]
    out += [m.group(0) for m in re.finditer(r"Overfull \\[hv]box \((\d+(?:\.\d+)?)pt too \w+\)[^\n]*", log)
            if float(m.group(1)) > max_overfull_pt]
    return out


POPPLER_BOX = 0.88     # pdftotext's word box height / font size for Computer Modern (the 11 pt body: 9.69 pt boxes, measured)
PRINT_FLOOR_PT = 8     # no table or prose text below it (21_render checks the figures' own text, drawn in DejaVu Sans)


def small_print(pdf, floor: float = PRINT_FLOOR_PT) -> list[str]:
    "Words of `pdf` set below `floor` pt (from poppler's word boxes), each with its page and size; [] when none."
    import subprocess
    html = subprocess.run(["pdftotext", "-bbox", str(pdf), "-"], capture_output=True, text=True, check=True).stdout
    out = []
    for page, body in enumerate(html.split("<page ")[1:], 1):
        words = [(float(a), float(b), float(c), float(d), w) for a, b, c, d, w in
                 re.findall(r'xMin="([\d.]+)" yMin="([\d.]+)" xMax="([\d.]+)" yMax="([\d.]+)">([^<]*)<', body)]
        column = {}    # words of one x extent but of several heights (their lengths) are set vertically (a rotated label):
        for x0, y0, x1, y1, w in words: column.setdefault((round(x0, 2), round(x1, 2)), set()).add(round(y1 - y0, 1))
        for x0, y0, x1, y1, w in words:    # their size is the box's width, not its height
            pt = ((x1 - x0) if len(column[round(x0, 2), round(x1, 2)]) > 1 else (y1 - y0)) / POPPLER_BOX
            if pt < floor - 0.1: out.append(f"page {page}: {w!r} at {pt:.1f} pt")
    return out


def build_pdf(paper_dir="paper", out=None) -> dict:
    "Compile `paper_dir`/main.tex in a scratch copy; write main.pdf to `out` (default `paper_dir`/main.pdf)."
    import os, shutil, subprocess, tempfile
    from derma_jepa.data import DataError
    for tool in ("latexmk", "pdflatex"):
        if shutil.which(tool) is None:
            raise DataError(f"make paper-pdf: {tool} not found; install Debian's texlive-latex-base texlive-latex-recommended "
                            "texlive-latex-extra latexmk (.ci/run does)")
    paper = Path(paper_dir)
    if not (paper / "main.tex").is_file(): raise DataError(f"{paper / 'main.tex'}: not found; run make paper first")
    with tempfile.TemporaryDirectory(prefix="derma-jepa-pdf-") as tmp:
        shutil.copytree(paper, Path(tmp) / "paper", ignore=shutil.ignore_patterns("runs", "main.pdf"))
        env = {**os.environ, "SOURCE_DATE_EPOCH": "0", "FORCE_SOURCE_DATE": "1"}
        p = subprocess.run(["latexmk", "-pdf", "-interaction=nonstopmode", "-halt-on-error", "main.tex"], cwd=Path(tmp) / "paper",
                           capture_output=True, text=True, env=env, timeout=600)
        log = (Path(tmp) / "paper" / "main.log").read_text(errors="replace") if (Path(tmp) / "paper" / "main.log").exists() else ""
        if p.returncode != 0:
            err = next((l for l in log.splitlines() if l.startswith("!")), (p.stdout + p.stderr).strip().splitlines()[-1:] or ["?"])
            raise DataError(f"{paper / 'main.tex'}: LaTeX failed: {err if isinstance(err, str) else err[0]}")
        dest = Path(out) if out else paper / "main.pdf"
        atomic_write_bytes(dest, (Path(tmp) / "paper" / "main.pdf").read_bytes())
    pages = re.search(r"Output written on main\.pdf \((\d+) pages", log)
    small = small_print(dest)
    return {"pdf": str(dest), "pages": int(pages.group(1)) if pages else None,
            "problems": log_problems(log) + ([f"{len(small)} words below {PRINT_FLOOR_PT} pt, e.g. {small[0]}"] if small else [])}


# %%
test_eq(log_problems("LaTeX Warning: Reference `tab:x' on page 3 undefined on input line 5.\n"
                     "Overfull \\hbox (12.5pt too wide) in paragraph at lines 1--2\nOverfull \\hbox (3.0pt too wide) in alignment\n"),
        ["LaTeX Warning: Reference `tab:x' on page 3 undefined on input line 5.", "Overfull \\hbox (12.5pt too wide) in paragraph at lines 1--2"])

# %% [markdown]
# `small_print` reads the sizes back from the built PDF: on a page set in the paper's class with one
# word at LaTeX's `\scriptsize` (8 pt, on the floor), one at `\tiny` (6 pt) and a label set sideways
# (whose short words have short boxes along the page but are 11 pt), only the `\tiny` one is below
# the floor. (Skipped, and said so, where TeX Live is not installed.)

# %%
import shutil, subprocess
if shutil.which("pdflatex") and shutil.which("pdftotext"):
    _d = Path(tempfile.mkdtemp())
    (_d / "t.tex").write_text("\\documentclass[11pt]{article}\\usepackage{graphicx}\\begin{document}Body text {\\scriptsize floor} "
                              "{\\tiny smallword} \\rotatebox{90}{a label set sideways, as on a y axis}\\end{document}\n")
    subprocess.run(["pdflatex", "-interaction=nonstopmode", "t.tex"], cwd=_d, capture_output=True, check=True)
    _small = small_print(_d / "t.pdf")
    test_eq(len(_small), 1); assert "'smallword' at 6." in _small[0], _small
else:
    print("TeX Live not installed here: small_print not exercised (make paper-pdf and tests/test_paper.py need it)")
